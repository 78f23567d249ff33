"""Shared by the bench_* scripts: launch ``experiments/run.py`` runs (optionally in parallel) and resume them."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "experiments" / "run.py"


def run_argv(name: str, args: list[str], out_dir: str | Path) -> list[str]:
    """run.py arguments for run NAME under OUT_DIR: ARGS, where it goes, no progress bars, and ``--resume`` when
    its directory already has a config.json (an interrupted run continues, a finished one costs only the check)."""
    argv = [*args, "--out-dir", str(out_dir), "--name", name, "--no-progress"]
    if (Path(out_dir) / name / "config.json").exists():
        argv.append("--resume")
    return argv


def run_command(name: str, args: list[str], out_dir: str | Path, processes: int = 1) -> list[str]:
    """The command line of run NAME (:func:`run_argv`): ``python run.py ...``, or under ``torchrun --standalone``
    with ``processes`` processes when more than one."""
    argv = [str(RUN_PY), *run_argv(name, args, out_dir)]
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                *argv]
    return [sys.executable, *argv]


def launch(runs: list[tuple[str, list[str]]], out_dir: str | Path, parallel: int = 1) -> dict[str, int]:
    """Run each (name, run.py arguments) into ``out_dir/name``; returns {name: exit code}.

    A run whose directory already has a config is resumed (:func:`run_argv`), so an interrupted benchmark
    restarts where it stopped. Each run's output goes to ``out_dir/name.log``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending, running, codes = list(runs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            name, args = pending.pop(0)
            cmd = run_command(name, args, out_dir)
            log = open(out_dir / f"{name}.log", "a")
            print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(1)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                codes[name] = proc.returncode
                note = "" if proc.returncode == 0 else f" -- see {out_dir / (name + '.log')}"
                print(f"[{time.strftime('%H:%M:%S')}] done  {name} (exit {proc.returncode}){note}", flush=True)
    return codes


def fmnist_trunk_features(*, subset: int | None = None, width: int = 64, device: str = "cpu", seed: int = 0,
                          data_root: str | None = None, trunk_state: dict | None = None):
    """Trunk features of Fashion-MNIST train, for the clustering benchmarks.

    A vgg-small trunk initialised with ``seed`` (the random-init trunk), or with ``trunk_state`` loaded.
    Returns (features (N, F) float32 on ``device``, the ImageDataset).
    """
    import torch

    from bayes_dc.data import load_dataset
    from bayes_dc.models.features import extract_features
    from bayes_dc.models.nets import build_model

    data = load_dataset("fashion-mnist", "train", root=data_root, subset=subset, seed=seed)
    torch.manual_seed(seed)
    model = build_model("vgg-small", data.num_channels, width=width).to(device)
    if trunk_state is not None:
        model.trunk.load_state_dict(trunk_state)
    mean, std = data.mean_std()
    return extract_features(model.trunk, data.images, mean, std, device=device), data
