#!/usr/bin/env python
"""Benchmark: does a run killed anywhere, then resumed, end as the same run left alone? And does the same command
give the same numbers twice?

One uninterrupted reference run of the given options (the default configuration unless ``--extra`` changes it),
then for each scenario a fresh run of the same options that is killed (SIGKILL) and resumed with ``--resume`` until
it ends, each a separate ``experiments/run.py`` process; every record of its ``metrics.jsonl`` (wall-clock fields
aside) and its final weights are compared with the reference's.

Scenarios (``--scenarios``): ``again`` (the same command once more, not killed); ``timed`` (killed ``--kill-after``
seconds after the record of epoch 0 appears: the reproduction of issue 18); and the kill points of
``tests/_kill_at.py`` as ``POINT@EPOCH``: ``train-step@1`` (inside a non-relabel epoch), ``checkpoint@1`` (inside the
checkpoint write after epoch 1, between its renames), ``after-checkpoint@1`` (between epochs), ``cluster@2``
(inside the relabel of epoch 2, when the features go into UMAP) and ``snapshot@2`` (after that relabel's snapshot
and lineage were written, before its epoch's checkpoint).

    python experiments/bench_resume.py --subset 1500 --eval-subset 500 --width 8 --epochs 3 --threads 1
    python experiments/bench_resume.py ... --repo /path/to/other/checkout   # the same scenarios on another commit
    python experiments/bench_resume.py ... --scenarios again --no-threads   # twice with the libraries' thread counts

Prints one Markdown table: per scenario whether it was killed where asked, the epoch its resume started from, whether
metrics.jsonl and the final weights are identical, the first epoch that differs, the largest loss difference, and the
final NMI and K against the reference's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
KILL_AT = ROOT / "tests" / "_kill_at.py"
TIMING = ("seconds", "share")
SCENARIOS = ("again", "timed", "train-step@1", "checkpoint@1", "after-checkpoint@1", "cluster@2", "snapshot@2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=1500)
    p.add_argument("--eval-subset", type=int, default=500)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="--threads of every run")
    p.add_argument("--no-threads", action="store_true", help="pass no --threads (the libraries' defaults)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), help=f"any of {SCENARIOS}")
    p.add_argument("--kill-after", type=float, default=2.0, help="seconds after epoch 0's record (scenario timed)")
    p.add_argument("--repo", default=str(ROOT), help="the checkout whose bayes_dc and run.py run (default: this one)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further run.py options for every run")
    p.add_argument("--out-dir", default="runs/bench_resume", help="emptied first")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {SCENARIOS}")
    return args


def run_options(args) -> list[str]:
    opts = ["--dataset", args.dataset, "--subset", str(args.subset), "--eval-subset", str(args.eval_subset),
            "--width", str(args.width), "--epochs", str(args.epochs), "--no-progress", "--no-figures",
            "--out-dir", str(args.out_dir), *args.extra]
    return opts if args.no_threads else opts + ["--threads", str(args.threads)]


def env_for(repo: str) -> dict:
    import os
    return {**os.environ, "PYTHONPATH": repo}


def run_py(args, name: str, *extra: str) -> int:
    cmd = [sys.executable, str(Path(args.repo) / "experiments" / "run.py"), *run_options(args), "--name", name, *extra]
    return subprocess.run(cmd, env=env_for(args.repo), capture_output=True, text=True).returncode


def killed_run(args, name: str, scenario: str) -> int:
    """A fresh run of ``name`` killed as ``scenario`` says; returns its exit code (-9 when killed)."""
    if scenario == "timed":
        cmd = [sys.executable, str(Path(args.repo) / "experiments" / "run.py"), *run_options(args), "--name", name]
        proc = subprocess.Popen(cmd, env=env_for(args.repo), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = Path(args.out_dir) / name / "metrics.jsonl"
        while proc.poll() is None and not (metrics.exists() and metrics.read_text().strip()):
            time.sleep(0.05)
        time.sleep(args.kill_after)
        proc.send_signal(signal.SIGKILL)
        return proc.wait()
    point, epoch = scenario.split("@")
    cmd = [sys.executable, str(KILL_AT), "--repo", args.repo, point, epoch, *run_options(args), "--name", name]
    return subprocess.run(cmd, env=env_for(args.repo), capture_output=True, text=True).returncode


def without_timings(value):
    """``value`` with every dict entry whose key names a wall-clock quantity removed, at any depth (backend_info's
    ``move_seconds`` too): the rest, move counts and ELBOs included, must repeat exactly."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [without_timings(json.loads(line)) for line in lines if line.strip()]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]


def compare(reference: Path, run_dir: Path) -> dict:
    a, b = records(reference), records(run_dir)
    first = next((ra["epoch"] for ra, rb in zip(a, b) if ra != rb), None if len(a) == len(b) else min(len(a), len(b)))
    losses = [abs(ra["loss"] - rb["loss"]) for ra, rb in zip(a, b) if ra.get("loss") is not None and "loss" in rb]
    wa, wb = weights(reference), weights(run_dir)
    final_a, final_b = a[-1], b[-1]
    return {"identical": a == b, "first_diff": first, "max_dloss": max(losses, default=0.0),
            "weights": wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa),
            "nmi": (final_b.get("nmi"), final_a.get("nmi")), "k": (final_b.get("k_active"), final_a.get("k_active"))}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    if run_py(args, "reference") != 0:
        print(f"the reference run failed: see {out / 'reference'}", file=sys.stderr)
        return 1
    print(f"reference: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for scenario in args.scenarios:
        t0 = time.perf_counter()
        name = scenario.replace("@", "-at-")
        if scenario == "again":
            code, resumed_from = run_py(args, name), None
        else:
            code = killed_run(args, name, scenario)
            ckpt = out / name / "last.pt"
            if not ckpt.exists():
                ckpt = out / name / "prev.pt"
            resumed_from = torch.load(ckpt, map_location="cpu", weights_only=True)["state"]["epoch"]
            if run_py(args, name, "--resume") != 0:
                rows.append((scenario, code, resumed_from, None))
                continue
        rows.append((scenario, code, resumed_from, compare(out / "reference", out / name)))
        print(f"{scenario}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    yes = lambda flag: "yes" if flag else "**no**"   # noqa: E731
    print("| scenario | exit of the killed run | resumed at epoch | metrics.jsonl identical | first differing epoch "
          "| max abs Δ loss | final NMI (reference) | final K (reference) | final weights identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scenario, code, resumed_from, c in rows:
        if c is None:
            print(f"| {scenario} | {code} | {resumed_from} | resume failed | | | | | |")
            continue
        nmi = f"{c['nmi'][0]:.4f} ({c['nmi'][1]:.4f})" if c["nmi"][0] is not None else "–"
        print(f"| {scenario} | {code} | {'–' if resumed_from is None else resumed_from} | {yes(c['identical'])} | "
              f"{'–' if c['first_diff'] is None else c['first_diff']} | {c['max_dloss']:.2e} | {nmi} | "
              f"{c['k'][0]} ({c['k'][1]}) | {yes(c['weights'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
