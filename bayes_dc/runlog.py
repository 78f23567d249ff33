"""The run directory: where a run came from, what it measured, and how to resume it.

Layout of ``runs/<name>/``::

    config.json        the full Config (JSON round-trip of bayes_dc.config.Config)
    environment.json   versions, git revision, device, command line, host, start time
    metrics.jsonl      one JSON object per epoch (clustering metrics on relabel epochs)
    lineage.jsonl      one JSON object per relabel after the first: components kept / split / merged / born / died
    last.pt            atomic checkpoint (model, optimisers, targets, warm state, epoch)
    clusters/round_XXXX.npz   compact cluster snapshots: labels, top-k responsibilities, weights
    figures/           PNG + PDF figures made at the end of the run

Everything written here goes through a temporary file and ``os.replace`` so an interrupted run never
leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, diff
from .jsonl import append_jsonl, read_jsonl

# Fields that may differ when resuming: growing the schedule or changing cosmetics does not change the past.
RESUMABLE_CHANGES = {"train.epochs", "run.resume", "run.progress", "run.figures", "run.threads", "run.knn_every",
                     "run.tensorboard", "run.device", "run.out_dir"}


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume, config mismatch, ...)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where a run came from: versions, git revision, device, command line."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchvision", "pyro-ppl", "faiss-cpu", "numpy", "scipy", "scikit-learn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
        "versions": versions, "git_revision": git_revision(), "device": str(device),
        "cpu_threads": torch.get_num_threads(), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


class RunDir:
    """A run directory. Use :meth:`open` to create one or reopen it for ``--resume``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @classmethod
    def open(cls, cfg: Config, device: torch.device) -> "RunDir":
        """Create ``out_dir/name`` for a new run, or validate it for ``cfg.run.resume``.

        Refuses (RunDirError, nothing written) to overwrite an existing run without ``--resume``, and to
        resume with a config that differs from the saved one in anything but RESUMABLE_CHANGES.
        """
        path = Path(cfg.run.out_dir) / (cfg.run.name or cfg.default_name())
        run = cls(path)
        saved = path / "config.json"
        if cfg.run.resume:
            if not saved.exists():
                raise RunDirError(f"--resume: no run to resume at {path} (no config.json); drop --resume to start it")
            changed = {k: v for k, v in diff(Config.from_json(saved), cfg).items() if k not in RESUMABLE_CHANGES}
            if changed:
                lines = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(changed.items()))
                raise RunDirError(f"--resume: the config differs from the saved run at {path}: {lines}. "
                                  "Use the saved settings, or start a new run with another --name")
        elif path.exists() and any(path.iterdir()):
            raise RunDirError(f"run directory {path} already exists; pass --resume to continue it, or choose "
                              "another --name (or delete the directory)")
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        atomic_write_text(path / "environment.json", json.dumps(environment(device), indent=2) + "\n")
        return run

    # ---- metrics -------------------------------------------------------------------------------
    @property
    def lineage_path(self) -> Path:
        return self.path / "lineage.jsonl"

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def log(self, record: dict, path: Path | None = None) -> dict:
        """Append one record (one epoch) to metrics.jsonl (or ``path``); return it as written (JSON types)."""
        record = _jsonable(record)
        append_jsonl(path or self.metrics_path, record)
        return record

    def truncate_metrics(self, before_epoch: int) -> None:
        """Keep only records of epochs < ``before_epoch`` (those logged after the last checkpoint are redone)."""
        for path in (self.metrics_path, self.lineage_path):
            if path.exists():
                kept = [r for r in read_jsonl(path) if r.get("epoch", -1) < before_epoch]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- checkpoints and snapshots ---------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def snapshot_path(self, round_idx: int) -> Path:
        return self.path / "clusters" / f"round_{round_idx:04d}.npz"

    def save_snapshot(self, round_idx: int, labels: np.ndarray, resp_values: np.ndarray, resp_index: np.ndarray,
                      weights: np.ndarray) -> Path:
        """Compact per-round clustering: int32 labels / indices, float16 responsibilities."""
        path = self.snapshot_path(round_idx)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez_compressed(tmp, labels=labels.astype(np.int32), resp_values=resp_values.astype(np.float16),
                            resp_index=resp_index.astype(np.int32), weights=weights.astype(np.float32))
        os.replace(tmp, path)
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
