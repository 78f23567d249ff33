"""Checkpoints that cannot corrupt a run: safe content, verified files, rotation and fallback.

- Content: :func:`encode_checkpoint` turns numpy arrays and the listed dataclasses into plain dicts and tensors, so
  a checkpoint loads under ``torch.load(weights_only=True)`` (no pickle that imports or calls code);
  :func:`decode_checkpoint` undoes it.
- Files: :func:`save_checkpoint` writes ``last.pt`` with a manifest ``last.pt.json`` (sha256 and size) and keeps the
  previous good checkpoint as ``prev.pt``; :func:`load_checkpoint` uses a file only when it matches a manifest, and
  falls back to ``prev.pt`` with a :class:`CheckpointWarning` naming what was wrong with ``last.pt``.

How is a checkpoint verified, and what survives a crash in the middle of a save: :func:`save_checkpoint`,
:func:`load_checkpoint`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayes_dc.rundir.atomic import WriteError, atomic_write_text, fsync_dir, write_temp


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume, config mismatch, no usable checkpoint,
    ...). Defined here, below :mod:`bayes_dc.rundir.runlog`, because checkpoint errors are run-directory errors too."""


# The only dataclasses a checkpoint may hold, by a stable name (not the module path, which may move). Filled by
# :func:`checkpointable` where each class is defined, so this layer imports nothing from the loop above it.
CHECKPOINT_DATACLASSES: dict[str, type] = {}


def checkpointable(cls: type) -> type:
    """Class decorator: let checkpoints hold instances of dataclass ``cls`` (stored by its class name)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} is not a dataclass; only dataclasses can be checkpointed")
    if CHECKPOINT_DATACLASSES.setdefault(cls.__name__, cls) is not cls:
        raise TypeError(f"two checkpointable dataclasses are named {cls.__name__!r}; rename one")
    return cls
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
            raise TypeError(f"{where}: {type(obj).__qualname__} is not in checkpoints.CHECKPOINT_DATACLASSES; add it "
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
                    f"dataclasses in checkpoints.CHECKPOINT_DATACLASSES")


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
                                      f"checkpoints.CHECKPOINT_DATACLASSES ({sorted(CHECKPOINT_DATACLASSES)})")
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


def _foreign_manifest(path: Path) -> str | None:
    """The format of ``path``'s manifest when it is readable JSON of another format (a newer bayes_dc), else None."""
    try:
        manifest = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError):
        return None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    return str(found) if found != MANIFEST_FORMAT else None


def _verify(path: Path, manifests: list[dict], data: bytes | None = None) -> str | None:
    """None if ``path`` matches one of ``manifests`` (sha256 and size), else why not.

    Any manifest of the pair, not only the file's own: :func:`save_checkpoint` renames the checkpoint and
    its manifest one after the other, and a crash between the two renames must not orphan a good file.
    ``data``: the file's bytes, already read (then the file is not read again).
    """
    if not manifests:
        foreign = _foreign_manifest(path)
        if foreign is not None:
            return (f"its manifest has format {foreign!r} but this version of bayes_dc reads {MANIFEST_FORMAT!r} "
                    f"(written by another version: use that one)")
        return "no checksum manifest next to it (written before checkpoints were verified, or its manifest was lost)"
    size = path.stat().st_size if data is None else len(data)
    if not any(m.get("bytes") == size for m in manifests):
        return f"{size} bytes, but the manifest says {manifests[0].get('bytes')}: truncated or overwritten"
    digest = file_sha256(path) if data is None else hashlib.sha256(data).hexdigest()
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
    tmp = write_temp(path, lambda f: torch.save(encoded, f))
    tmp_manifest = None
    try:
        tmp_manifest = write_temp(manifest_path(path),
                                   lambda f: f.write((json.dumps(_manifest_for(tmp), indent=2) + "\n").encode()))
        current = [m for m in (_read_manifest(manifest_path(path)),) if m is not None]
        target = path
        if keep_previous and path.exists() and _verify(path, current) is None:
            target = previous_path(path)
            os.replace(path, target)
            target = manifest_path(previous_path(path))
            os.replace(manifest_path(path), target)
        target = manifest_path(path)
        os.replace(tmp_manifest, target)
        target = path
        os.replace(tmp, path)
    except BaseException as err:
        for leftover in (tmp, tmp_manifest):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):   # each step leaves a verified file
            raise WriteError(target, err) from err
        raise
    fsync_dir(path.parent)


def _load_verified(candidate: Path, manifests: list[dict], allow_unverified: bool) -> tuple[Any, str | None]:
    """(decoded content, why it is unverified or None) of ``candidate``; raises CheckpointError (the message: the
    file and why it cannot be used) when it does not match ``manifests`` or does not load under weights_only."""
    try:   # read once: the bytes verified are the bytes loaded, whatever replaces the file meanwhile
        data = candidate.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{candidate}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{candidate}: cannot be read ({exc.strerror or exc})") from None
    why = _verify(candidate, manifests, data)
    if why is not None and not (allow_unverified and not manifests):
        raise CheckpointError(f"{candidate}: {why}")
    try:
        obj = decode_checkpoint(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except CheckpointError as exc:
        raise CheckpointError(f"{candidate}: {exc}") from None
    except Exception as exc:   # UnpicklingError for unsafe content, RuntimeError for a broken zip, ...
        raise CheckpointError(f"{candidate}: cannot be loaded with weights_only=True ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return obj, why


def load_verified(path: Path) -> Any:
    """The one checkpoint file ``path``, checked against its own manifest (``<path>.json``) and loaded under
    ``weights_only=True``, with no fallback to any other file (``final.pt``: a training checkpoint is not a
    substitute for it).

    Raises:
        CheckpointError: one line naming ``path`` and why it cannot be used (missing, no or foreign manifest,
            truncated, damaged, unsafe).
    """
    path = Path(path)
    manifests = [m for m in (_read_manifest(manifest_path(path)),) if m is not None]
    return _load_verified(path, manifests, allow_unverified=False)[0]


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
        try:
            obj, why = _load_verified(candidate, manifests, allow_unverified)
        except CheckpointError as exc:
            problems.append(str(exc))
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


__all__ = ["CHECKPOINT_DATACLASSES", "checkpointable", "MANIFEST_FORMAT", "CheckpointError", "CheckpointWarning", "RunDirError",
           "decode_checkpoint", "encode_checkpoint", "file_sha256", "load_checkpoint", "load_verified", "manifest_path",
           "previous_path", "save_checkpoint", "write_manifest"]
