"""The run directory: where a run came from, what it measured, and how to resume it.

Layout of ``runs/<name>/``::

    config.json        the full Config (JSON round-trip of bayes_dc.config.schema.Config)
    environment.json   versions, git revision, device, command line, host, start time
    metrics.jsonl      one JSON object per epoch (clustering metrics on relabel epochs)
    lineage.jsonl      one JSON object per relabel after the first: components kept / split / merged / born / died
    last.pt            the latest checkpoint (model, optimisers, targets, warm state, epoch), and
    last.pt.json       its manifest: sha256 and size, checked before the checkpoint is loaded
    prev.pt, prev.pt.json   the checkpoint before it, kept as the fallback when last.pt is damaged
    clusters/round_XXXX.npz   compact cluster snapshots: labels, top-k responsibilities, weights
    figures/           PNG + PDF figures made at the end of the run

Everything written here goes through a temporary file and ``os.replace`` (:mod:`bayes_dc.rundir.atomic`) so an
interrupted run never leaves a half-written file behind.

One job per module: this one is the directory (:class:`RunDir`: what goes where, the config check on resume,
metrics, snapshots); :mod:`bayes_dc.rundir.atomic` writes files atomically, :mod:`bayes_dc.rundir.checkpoints` writes and
verifies checkpoints, :mod:`bayes_dc.rundir.interrupts` turns Ctrl-C / SIGTERM into a stop at the next checkpoint, and
:mod:`bayes_dc.rundir.environment` records where a run came from. Their public names are importable from here as well.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayes_dc.rundir.atomic import (WriteError, atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_text, remove_stale_temps, writing)
from bayes_dc.rundir.checkpoints import (CHECKPOINT_DATACLASSES, MANIFEST_FORMAT, CheckpointError, CheckpointWarning, RunDirError, decode_checkpoint, encode_checkpoint, file_sha256, load_checkpoint, load_verified, manifest_path, previous_path, save_checkpoint, write_manifest)
from bayes_dc.config.schema import RESUMABLE_CHANGES, Config, diff
from bayes_dc.rundir.environment import environment, git_revision
from bayes_dc.rundir.interrupts import InterruptFlag, graceful_interrupt
from bayes_dc.rundir.jsonl import append_jsonl, read_jsonl


def run_path(cfg: Config) -> Path:
    """``out_dir/name`` of a run (``name`` derived from the config when not given)."""
    return Path(cfg.run.out_dir) / (cfg.run.name or cfg.default_name())


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
        """Create ``out_dir/name`` for a new run, or validate it for ``cfg.run.resume``: :meth:`prepare`, then
        :meth:`start`."""
        run = cls.prepare(cfg)
        run.start(cfg, device)
        return run

    @classmethod
    def prepare(cls, cfg: Config) -> "RunDir":
        """The run directory of ``cfg``, checked and not yet written to.

        Refuses (RunDirError) to overwrite an existing run without ``--resume``, and to resume with a config that
        differs from the saved one in anything but RESUMABLE_CHANGES.
        """
        path = run_path(cfg)
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
            raise _exists(path)
        return cls(path)

    def start(self, cfg: Config, device: torch.device, **environment_extra: Any) -> None:
        """The run's first writes: the directory, config.json and environment.json (plus ``environment_extra``);
        on ``--resume`` the temporary files of writes that a killed process left are deleted first.

        A new run claims its directory atomically (:meth:`_claim`), so that of two runs started at once under the
        same name exactly one goes on; the other gets :meth:`prepare`'s "already exists" error (RunDirError).
        WriteError when the directory cannot be written.
        """
        if cfg.run.resume:
            with writing(self.path):
                self.path.mkdir(parents=True, exist_ok=True)
        else:
            self._claim()
        if cfg.run.resume:
            for folder in (self.path, self.path / "clusters"):
                remove_stale_temps(folder)
        atomic_write_text(self.path / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        env = {**environment(device), **environment_extra}
        atomic_write_text(self.path / "environment.json", json.dumps(env, indent=2) + "\n")

    def _claim(self) -> None:
        """Claim the directory for a new run, atomically: ``os.mkdir`` (never ``exists()`` then ``makedirs``), then
        the exclusive creation of an empty ``config.json``, which decides between runs that both found the
        directory absent or empty (one made it, the other saw it made) before either wrote."""
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.path)
            except FileExistsError:
                pass   # made beforehand, or by a run racing this one: config.json decides
            try:
                os.close(os.open(self.path / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                raise _exists(self.path) from None

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
        """Verified, rotated checkpoint (module :func:`save_checkpoint`)."""
        save_checkpoint(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict | None:
        """The latest good checkpoint, or None for a fresh run (module :func:`load_checkpoint`)."""
        return load_checkpoint(self.checkpoint_path)

    def snapshot_path(self, round_idx: int) -> Path:
        return self.path / "clusters" / f"round_{round_idx:04d}.npz"

    def save_snapshot(self, round_idx: int, labels: np.ndarray, resp_values: np.ndarray, resp_index: np.ndarray,
                      weights: np.ndarray) -> Path:
        """Compact per-round clustering: int32 labels / indices, float16 responsibilities."""
        path = self.snapshot_path(round_idx)
        atomic_write(path, lambda f: np.savez_compressed(
            f, labels=labels.astype(np.int32), resp_values=resp_values.astype(np.float16),
            resp_index=resp_index.astype(np.int32), weights=weights.astype(np.float32)))
        return path


class ReadOnlyRunDir(RunDir):
    """The run directory as the other ranks of a multi-process run see it: they read it (checkpoints, metrics)
    and leave every write to rank 0. :meth:`log` still returns the record as it would be written."""

    def start(self, cfg: Config, device: torch.device, **environment_extra: Any) -> None:
        pass

    def log(self, record: dict, path: Path | None = None) -> dict:
        return _jsonable(record)

    def truncate_metrics(self, before_epoch: int) -> None:
        pass

    def save_checkpoint(self, state: dict) -> None:
        pass

    def save_snapshot(self, round_idx: int, labels: np.ndarray, resp_values: np.ndarray, resp_index: np.ndarray,
                      weights: np.ndarray) -> Path:
        return self.snapshot_path(round_idx)


def _exists(path: Path) -> RunDirError:
    return RunDirError(f"run directory {path} already exists; pass --resume to continue it, or choose another --name "
                       "(or delete the directory)")


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


__all__ = ["CHECKPOINT_DATACLASSES", "MANIFEST_FORMAT", "CheckpointError", "CheckpointWarning", "InterruptFlag",
           "WriteError", "load_verified", "writing",
           "ReadOnlyRunDir", "RunDir", "RunDirError", "atomic_torch_save", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "decode_checkpoint", "encode_checkpoint", "environment", "file_sha256", "git_revision",
           "graceful_interrupt", "load_checkpoint", "manifest_path", "previous_path", "remove_stale_temps", "run_path",
           "save_checkpoint", "write_manifest"]
