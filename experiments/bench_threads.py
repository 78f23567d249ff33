#!/usr/bin/env python
"""The clustering step and a training epoch on an idle and on a busy machine, before and after the library chose
the OpenMP thread settings (issue 26; bayes_dc/runtime/threads.py).

    python experiments/bench_threads.py                 # the table (median of 3 per cell)
    python experiments/bench_threads.py --repeats 1 --tasks dp

Tasks, each timed inside a fresh process (data loading and imports excluded):

- ``dp``: the CAVI fit of the DP-GMM on the 10,000 Fashion-MNIST test images, pixels whitened to PCA-64 + L2
  (T = 100, full covariances, the engine's defaults otherwise; seed 0);
- ``epoch``: one training epoch of the default trunk (vgg-small, width 64) and a 100-way head on
  ``--epoch-images`` Fashion-MNIST training images (batch 256, SGD, fixed random targets).

Settings:

- ``before``: torch imported before bayes_dc with ``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` removed from the
  environment (what a script got before issue 26: libgomp's default waiting, torch's default thread count);
- ``active``: ``OMP_WAIT_POLICY=ACTIVE`` set by the user (spinning waiters; the library leaves a user's value);
- ``after``: bayes_dc imported first with nothing set, so the library sets passive waiting and one thread per CPU
  this process may use (``os.sched_getaffinity``).

Loads: ``idle``, and ``busy``: two other processes spinning on a core each (``while True: pass``) for the whole
measurement. The acceptance of issue 26: under ``busy``, ``after``'s DP fit stays within 2x of its idle time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("before", "active", "after")
LOADS = ("idle", "busy")
TASKS = ("dp", "epoch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=["before", "after"])
    p.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    p.add_argument("--repeats", type=int, default=3, help="runs per cell (the median is shown)")
    p.add_argument("--busy", type=int, default=2, help="spinning processes for the busy load")
    p.add_argument("--n", type=int, default=10_000, help="points of the DP fit")
    p.add_argument("--epoch-images", type=int, default=10_000, help="training images of the epoch")
    p.add_argument("--timeout", type=float, default=600, help="seconds one timed run may take")
    p.add_argument("--data-root", default=None, help="where fashion-mnist is (default: the library's search path)")
    p.add_argument("--json", type=Path, default=None, help="also write every time to this file")
    p.add_argument("--worker", nargs=2, metavar=("TASK", "SETTING"), help=argparse.SUPPRESS)
    p.add_argument("--points", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- the timed work, in a fresh process --------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    task, setting = args.worker
    if setting == "before":
        import torch  # noqa: F401  first, with the variables removed by the parent: the OpenMP defaults
    import bayes_dc  # noqa: F401  after: sets passive waiting and the thread count here (unless set)
    import torch

    if task == "dp":
        from bayes_dc.clustering.dpgmm import DPGMM
        x = torch.load(args.points, weights_only=True)
        model = DPGMM(truncation=100, covariance="full")
        start = time.perf_counter()
        model.fit(x, seed=0)
        seconds = time.perf_counter() - start
        extra = {"k_active": int((model.counts_ > 1).sum())}
    else:
        from bayes_dc.data import load_dataset
        from bayes_dc.models.nets import build_model
        data = load_dataset("fashion-mnist", "train", root=args.data_root, subset=args.epoch_images, seed=0,
                            progress=False)
        images = data.images.float() / 255.0
        torch.manual_seed(0)
        model = build_model("vgg-small", images.shape[1], width=64, num_outputs=100)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        targets = torch.randint(0, 100, (len(images),))
        start = time.perf_counter()
        for s in range(0, len(images), 256):
            loss = torch.nn.functional.cross_entropy(model(images[s:s + 256]), targets[s:s + 256])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        seconds = time.perf_counter() - start
        extra = {}
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(),
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY"), **extra}))


def whitened_points(args: argparse.Namespace, path: Path) -> None:
    import bayes_dc  # noqa: F401
    import torch

    from bayes_dc.data import load_dataset
    from bayes_dc.spaces.whiten import Whitener
    data = load_dataset("fashion-mnist", "test", root=args.data_root, subset=args.n, seed=0, progress=False)
    pixels = data.images.reshape(len(data), -1).float() / 255.0
    torch.save(Whitener(dim=64, whiten=True, l2=True).fit_transform(pixels).contiguous(), path)


def environment(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if setting == "active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    return env


def timed(args: argparse.Namespace, task: str, setting: str, points: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", task, setting, "--points", str(points),
           "--n", str(args.n), "--epoch-images", str(args.epoch_images)] + (["--data-root", args.data_root] if args.data_root else [])
    try:
        proc = subprocess.run(cmd, env=environment(setting), capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": float("inf"), "error": f"stopped after {args.timeout:.0f} s"}
    if proc.returncode:
        return {"seconds": float("nan"), "error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seconds(value: float, timeout: float) -> str:
    """A time for the table; a run stopped at the timeout shows as "> timeout"."""
    return f"> {timeout:.0f}" if math.isinf(value) else f"{value:.1f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        points = Path(tmp) / "points.pt"
        if "dp" in args.tasks:
            whitened_points(args, points)
        results: dict = {}
        for load in args.loads:
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(
                args.busy if load == "busy" else 0)]
            try:
                for task in args.tasks:
                    for setting in args.settings:
                        runs = [timed(args, task, setting, points) for _ in range(args.repeats)]
                        results[(task, setting, load)] = runs
                        each = ", ".join(f"{r['seconds']:.1f}" + (f" [{r['error']}]" if "error" in r else "")
                                         for r in runs)
                        print(f"{task} {setting} {load}: {each}", file=sys.stderr, flush=True)
            finally:
                for proc in spinners:
                    proc.kill()
                    proc.wait()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPUs usable: {cpus}; busy = {args.busy} spinning processes; median of {args.repeats} (seconds, each "
          f"run: ...)")
    print(f"| task | setting | threads | {' | '.join(args.loads)} | busy / idle |")
    print("|---|---|---|" + "---|" * (len(args.loads) + 1))
    for task in args.tasks:
        for setting in args.settings:
            medians, cells, threads = {}, [], "?"
            for load in args.loads:
                runs = results[(task, setting, load)]
                medians[load] = statistics.median(r["seconds"] for r in runs)
                threads = runs[0].get("threads", threads)
                each = ", ".join(seconds(r["seconds"], args.timeout) for r in runs)
                cells.append(f"{seconds(medians[load], args.timeout)} ({each})")
            ratio = (f"{medians['busy'] / medians['idle']:.1f}x" if {"busy", "idle"} <= set(medians)
                     and all(math.isfinite(v) for v in medians.values()) else "")
            print(f"| {task} | {setting} | {threads} | {' | '.join(cells)} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({" ".join(k): v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
