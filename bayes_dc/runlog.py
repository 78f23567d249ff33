"""The run directory: where a run came from, what it measured, and how to resume it.

Layout of ``runs/<name>/``::

    config.json        the full Config (JSON round-trip of bayes_dc.config.Config)
    environment.json   versions, git revision, device, command line, host, start time
    metrics.jsonl      one JSON object per epoch (clustering metrics on relabel epochs)
    lineage.jsonl      one JSON object per relabel after the first: components kept / split / merged / born / died
    last.pt            the latest checkpoint (model, optimisers, targets, warm state, epoch), and
    last.pt.json       its manifest: sha256 and size, checked before the checkpoint is loaded
    prev.pt, prev.pt.json   the checkpoint before it, kept as the fallback when last.pt is damaged
    clusters/round_XXXX.npz   compact cluster snapshots: labels, top-k responsibilities, weights
    figures/           PNG + PDF figures made at the end of the run

Everything written here goes through a temporary file and ``os.replace`` so an interrupted run never
leaves a half-written file behind; files get the permissions a plain ``open()`` gives (0666 minus the
umask), so a run directory can be shared like any other output.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np
import torch

from .config import RESUMABLE_CHANGES, Config, diff
from .jsonl import append_jsonl, read_jsonl
from .targets import Targets


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume, config mismatch, ...)."""


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create a new temporary file next to ``path``; return (descriptor, its path).

    ``os.open(..., 0o666)`` rather than ``tempfile.mkstemp``: mkstemp creates mode 0600 whatever the umask,
    which made every run file unreadable to the group; here the umask applies, as with ``open()``.
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:   # a 48-bit name collision: draw another
            continue


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a complete, fsynced temporary file next to ``path`` with ``write(file)``; return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` with ``write(binary file)`` so that it holds either its old or its complete new content."""
    path = Path(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


# --------------------------------------------------------------------------------------------------
# Checkpoints: content that loads with weights_only=True
# --------------------------------------------------------------------------------------------------

# The only dataclasses a checkpoint may hold, by a stable name (not the module path, which may move).
CHECKPOINT_DATACLASSES: dict[str, type] = {"Targets": Targets}
_TYPE_KEY = "__bayes_dc_type__"   # marks a dict that encodes a numpy array or an allowed dataclass
_PLAIN = (bool, int, float, str, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


class CheckpointError(RunDirError):
    """No checkpoint can be used: damaged, unverifiable or unsafe. The message names each file and why."""


class CheckpointWarning(UserWarning):
    """The latest checkpoint was unusable and an older good one is used instead (the message names both)."""


def encode_checkpoint(obj: Any, where: str = "checkpoint") -> Any:
    """Rewrite ``obj`` into types that ``torch.load(weights_only=True)`` accepts; inverse: :func:`decode_checkpoint`.

    Why convert rather than ``torch.serialization.add_safe_globals``: allowing numpy's array
    reconstruction and our dataclasses globally would change what *every* ``weights_only`` load in the
    process accepts, and numpy's pickling path differs between numpy 1 and 2; plain dicts and tensors do
    not. Kept as they are: None, bool, int, float, str, tensors, torch dtypes / devices / sizes, and
    dicts (plain or ``OrderedDict``, with a state dict's ``_metadata``), lists and tuples of them.
    Converted: numpy arrays and scalars -> ``{_TYPE_KEY: "ndarray", dtype, shape, raw bytes as a uint8
    tensor}`` (exact for every dtype but object); dataclasses named in ``CHECKPOINT_DATACLASSES`` ->
    ``{_TYPE_KEY: "dataclass", class, fields}``.

    Raises:
        TypeError: anything else (a lambda, an open file, an unlisted class), naming where it sits, so the
            mistake shows at save time and not as an unloadable checkpoint at resume.
    """
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, (np.ndarray, np.generic)):
        array = np.asarray(obj)
        if array.dtype.hasobject:
            raise TypeError(f"{where}: numpy arrays of Python objects cannot be checkpointed safely; store a "
                            f"numeric array")
        raw = torch.frombuffer(bytearray(array.tobytes()), dtype=torch.uint8) if array.size else \
            torch.zeros(0, dtype=torch.uint8)
        return {_TYPE_KEY: "ndarray", "dtype": array.dtype.str, "shape": list(array.shape), "data": raw,
                "scalar": isinstance(obj, np.generic)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = next((k for k, cls in CHECKPOINT_DATACLASSES.items() if type(obj) is cls), None)
        if name is None:
            raise TypeError(f"{where}: {type(obj).__qualname__} is not in runlog.CHECKPOINT_DATACLASSES; add it "
                            f"there (only listed dataclasses are rebuilt on load)")
        return {_TYPE_KEY: "dataclass", "class": name,
                "fields": {f.name: encode_checkpoint(getattr(obj, f.name), f"{where}.{f.name}")
                           for f in dataclasses.fields(obj)}}
    if type(obj) in (dict, OrderedDict):
        if _TYPE_KEY in obj:
            raise TypeError(f"{where}: the key {_TYPE_KEY!r} is reserved for the checkpoint encoding")
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise TypeError(f"{where}: dict key {key!r} of type {type(key).__name__}; use str or int keys")
            out[key] = encode_checkpoint(value, f"{where}[{key!r}]")
        if hasattr(obj, "_metadata"):   # module state dicts carry per-module versions here
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(encode_checkpoint(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: cannot checkpoint a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints "
                    f"hold tensors, numbers, strings, None, numpy arrays, dicts/lists/tuples of them and the "
                    f"dataclasses in runlog.CHECKPOINT_DATACLASSES")


def decode_checkpoint(obj: Any) -> Any:
    """Undo :func:`encode_checkpoint` on what ``torch.load(weights_only=True)`` returned."""
    if isinstance(obj, dict):
        kind = obj.get(_TYPE_KEY)
        if kind == "ndarray":
            dtype = np.dtype(obj["dtype"])
            if dtype.hasobject:
                raise CheckpointError(f"checkpoint holds an object array (dtype {dtype}); refusing to load it")
            array = np.frombuffer(obj["data"].numpy().tobytes(), dtype=dtype).reshape(obj["shape"])
            return array[()] if obj["scalar"] else array.copy()   # copy: writable, owns its memory
        if kind == "dataclass":
            cls = CHECKPOINT_DATACLASSES.get(obj["class"])
            if cls is None:
                raise CheckpointError(f"checkpoint holds a dataclass {obj['class']!r} that is not in "
                                      f"runlog.CHECKPOINT_DATACLASSES ({sorted(CHECKPOINT_DATACLASSES)})")
            return cls(**{k: decode_checkpoint(v) for k, v in obj["fields"].items()})
        if kind is not None:
            raise CheckpointError(f"checkpoint holds an unknown encoded type {kind!r}")
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            out[key] = decode_checkpoint(value)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(decode_checkpoint(v) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------------
# Checkpoints: verified files, rotation, fallback
# --------------------------------------------------------------------------------------------------

MANIFEST_FORMAT = "bayes_dc-checkpoint-manifest/1"
_HASH_BLOCK = 1 << 20


def manifest_path(checkpoint: Path) -> Path:
    """``last.pt`` -> ``last.pt.json``."""
    return checkpoint.with_name(checkpoint.name + ".json")


def previous_path(checkpoint: Path) -> Path:
    """``last.pt`` -> ``prev.pt``: where :func:`save_checkpoint` keeps the checkpoint before the latest."""
    return checkpoint.with_name("prev" + checkpoint.suffix)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_for(path: Path) -> dict:
    return {"format": MANIFEST_FORMAT, "sha256": file_sha256(path), "bytes": path.stat().st_size,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_manifest(checkpoint: Path) -> None:
    """Record ``checkpoint``'s sha256 and size in its manifest (what :func:`save_checkpoint` does)."""
    atomic_write_text(manifest_path(checkpoint), json.dumps(_manifest_for(checkpoint), indent=2) + "\n")


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
    return manifest if ok and isinstance(manifest.get("sha256"), str) else None


def _verify(path: Path, manifests: list[dict]) -> str | None:
    """None if ``path`` matches one of ``manifests`` (sha256 and size), else why not.

    Any manifest of the pair, not only the file's own: :func:`save_checkpoint` renames the checkpoint and
    its manifest one after the other, and a crash between the two renames must not orphan a good file.
    """
    if not manifests:
        return "no checksum manifest next to it (written before checkpoints were verified, or its manifest was lost)"
    size = path.stat().st_size
    if not any(m.get("bytes") == size for m in manifests):
        return f"{size} bytes, but the manifest says {manifests[0].get('bytes')}: truncated or overwritten"
    digest = file_sha256(path)
    if not any(m["sha256"] == digest and m.get("bytes") == size for m in manifests):
        return "sha256 does not match its manifest: the file is damaged"
    return None


def save_checkpoint(obj: dict, path: Path, *, keep_previous: bool = True) -> None:
    """Write a verified checkpoint to ``path`` (``last.pt``), keeping the previous good one as ``prev.pt``.

    ``obj`` is encoded by :func:`encode_checkpoint` (so it loads under ``weights_only=True``) and written to
    a temporary file; then, in this order, the current ``last.pt`` (if it verifies) and its manifest are
    renamed to ``prev.pt``/``prev.pt.json``, the new manifest and the new file are renamed into place.
    Every rename is atomic, and at each step at least one file matches a manifest, so a crash at any
    point leaves a checkpoint that :func:`load_checkpoint` accepts. A ``last.pt`` that does not verify is
    overwritten rather than rotated: it must not push the good ``prev.pt`` out.
    """
    path = Path(path)
    encoded = encode_checkpoint(obj)
    tmp = _write_temp(path, lambda f: torch.save(encoded, f))
    tmp_manifest = None
    try:
        tmp_manifest = _write_temp(manifest_path(path),
                                   lambda f: f.write((json.dumps(_manifest_for(tmp), indent=2) + "\n").encode()))
        current = [m for m in (_read_manifest(manifest_path(path)),) if m is not None]
        if keep_previous and path.exists() and _verify(path, current) is None:
            os.replace(path, previous_path(path))
            os.replace(manifest_path(path), manifest_path(previous_path(path)))
        os.replace(tmp_manifest, manifest_path(path))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp_manifest):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: Path, *, allow_unverified: bool = False) -> dict | None:
    """Load the checkpoint at ``path`` (``last.pt``), verified and safely; fall back to ``prev.pt``.

    A file is used only if its sha256 and size match a manifest (``last.pt.json`` or ``prev.pt.json``) and
    it unpickles under ``torch.load(weights_only=True)``, which refuses any pickle that would import or
    call code. ``last.pt`` first; if it fails, ``prev.pt`` with a :class:`CheckpointWarning` naming what was
    wrong with ``last.pt``.

    Args:
        allow_unverified: also accept a file without any manifest (checkpoints written before manifests
            existed), with a warning; still only under ``weights_only=True``.

    Returns:
        The decoded checkpoint (:func:`decode_checkpoint`), or None when there is none at all.

    Raises:
        CheckpointError: checkpoint files exist but none is usable; the message names each file and why.
    """
    path = Path(path)
    candidates = [path, previous_path(path)]
    manifests = [m for m in (_read_manifest(manifest_path(p)) for p in candidates) if m is not None]
    if not any(p.exists() for p in candidates):
        if manifests:
            raise CheckpointError(f"{manifest_path(path)} describes a checkpoint but neither {path} nor "
                                  f"{previous_path(path)} exists; the files were moved or deleted. Restore them, "
                                  f"or start the run again under another --name")
        return None
    problems: list[str] = []
    for candidate in candidates:
        if not candidate.exists():
            problems.append(f"{candidate}: missing")
            continue
        why = _verify(candidate, manifests)
        if why is not None and not (allow_unverified and not manifests):
            problems.append(f"{candidate}: {why}")
            continue
        try:
            obj = decode_checkpoint(torch.load(candidate, map_location="cpu", weights_only=True))
        except Exception as exc:   # UnpicklingError for unsafe content, RuntimeError for a broken zip, ...
            problems.append(f"{candidate}: cannot be loaded with weights_only=True ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        if why is not None:
            warnings.warn(f"loading the unverified checkpoint {candidate}: {why}", CheckpointWarning, stacklevel=2)
        if problems:
            warnings.warn(f"checkpoint {path} is unusable ({'; '.join(problems)}); resuming from the previous "
                          f"good checkpoint {candidate} instead", CheckpointWarning, stacklevel=2)
        return obj
    hint = (" For a checkpoint written before manifests existed, pass allow_unverified=True "
            "(experiments/linear_probe.py --allow-unverified)." if not manifests else "")
    raise CheckpointError(f"no usable checkpoint in {path.parent}: " + "; ".join(problems) +
                          ". Nothing was loaded. Restore a good copy, or start the run again under another --name "
                          "(or delete the run directory)." + hint)


# --------------------------------------------------------------------------------------------------
# Ctrl-C: stop at a safe point
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class InterruptFlag:
    """Set by :func:`graceful_interrupt` when a stop was asked for; the loop reads ``requested``."""

    requested: bool = False
    signal_name: str | None = None
    at: float | None = None     # time.monotonic() of the first signal


@contextmanager
def graceful_interrupt(signals: tuple[int, ...] = (signal.SIGINT,), debounce: float = 0.0) -> Iterator[InterruptFlag]:
    """Turn the first SIGINT (Ctrl-C) into a flag; a second one raises KeyboardInterrupt at once.

    Usage (the loop checks the flag where stopping is safe, after its checkpoint)::

        with graceful_interrupt() as stop:
            for epoch in ...:
                ...; rundir.save_checkpoint(...)
                if stop.requested:
                    break

    Pass ``signals=(signal.SIGINT, signal.SIGTERM)`` to treat a scheduler's SIGTERM the same way. A second signal
    within ``debounce`` seconds of the first counts as the same request: torchrun forwards the Ctrl-C it receives
    to its workers, which the terminal has already sent the same Ctrl-C. The previous
    handlers are restored on exit. Python installs signal handlers only in the main thread; elsewhere the
    flag never trips and signals keep their behaviour. DataLoader workers started through
    ``bayes_dc.data`` ignore SIGINT, so Ctrl-C in a terminal (which signals the whole process group) does
    not kill them mid-epoch.
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if flag.requested:
            if now - flag.at < debounce:
                return
            raise KeyboardInterrupt
        flag.requested, flag.signal_name, flag.at = True, signal.Signals(signum).name, now
        print(f"\n{flag.signal_name} received: stopping after the next checkpoint; send it again to stop now",
              file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


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
            raise RunDirError(f"run directory {path} already exists; pass --resume to continue it, or choose "
                              "another --name (or delete the directory)")
        return cls(path)

    def start(self, cfg: Config, device: torch.device, **environment_extra: Any) -> None:
        """The run's first writes: the directory, config.json and environment.json (plus ``environment_extra``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        env = {**environment(device), **environment_extra}
        atomic_write_text(self.path / "environment.json", json.dumps(env, indent=2) + "\n")

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
