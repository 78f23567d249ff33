"""Atomic file writes: a file holds either its old or its complete new content, whatever kills the process.

Everything is written to a temporary file next to the target (``.<name>.<random>.tmp``), fsynced, and moved into
place with ``os.replace``; files get the permissions a plain ``open()`` gives (0666 minus the umask), so a run
directory can be shared like any other output. A process killed mid-write leaves its temporary file behind;
:func:`remove_stale_temps` clears them when the run resumes.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable

import torch

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


def fsync_dir(directory: Path) -> None:
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


def write_temp(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
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
    tmp = write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that writes killed midway left in ``directory``;
    return them. Only for a directory no other process is writing to (a run being resumed)."""
    stale = [p for p in Path(directory).glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temps"]
