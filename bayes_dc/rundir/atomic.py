"""Atomic file writes: a file holds either its old or its complete new content, whatever kills the process.

Everything is written to a temporary file next to the target (``.<name>.<random>.tmp``), fsynced, and moved into
place with ``os.replace``; files get the permissions a plain ``open()`` gives (0666 minus the umask), so a run
directory can be shared like any other output. A process killed mid-write leaves its temporary file behind;
:func:`remove_stale_temps` clears them when the run resumes.
"""
from __future__ import annotations

import errno
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

# What to do about the usual reasons a write fails, by errno (the caller adds what happens next, e.g. --resume).
_ADVICE = {
    errno.ENOSPC: "free space on that filesystem or write elsewhere",
    errno.EDQUOT: "free space within your disk quota or write elsewhere",
    errno.EROFS: "the filesystem is mounted read-only; write elsewhere",
    errno.EACCES: "no permission to write there; fix the permissions or write elsewhere",
    errno.EPERM: "no permission to write there; fix the permissions or write elsewhere",
    errno.EFBIG: "the file is larger than this filesystem allows; write elsewhere",
}


class WriteError(OSError):
    """A file could not be written. ``str()`` is one line: the file, the cause (strerror) and what to do; ``errno``
    and ``filename`` are the failed call's, ``__cause__`` the original :class:`OSError`."""

    def __init__(self, path: str | Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        advice = _ADVICE.get(cause.errno, "check the disk and the folder's permissions")
        self.message = f"cannot write {path}: {cause.strerror or cause}; {advice}"

    def __str__(self) -> str:
        return self.message


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an :class:`OSError` raised inside into a :class:`WriteError` naming ``path`` (an existing WriteError
    passes through): for writes that do not go through :func:`atomic_write` (an appended log, a streamed CSV)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(path, err) from err


class _RecordingFile:
    """A binary file whose ``write`` keeps the OSError it raised: torch.save reports a failed write (a full disk)
    as a RuntimeError from its zip writer ("unexpected pos ..."), which names neither the file nor the cause."""

    def __init__(self, file: IO[bytes]):
        self._file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str):
        return getattr(self._file, name)

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
    """Write a complete, fsynced temporary file next to ``path`` with ``write(file)``; return its path.

    Raises:
        WriteError: the folder or the file could not be written (a full disk, a read-only filesystem, no
            permission), naming ``path``; the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(path)
    recording = None
    try:
        with os.fdopen(fd, "wb") as f:
            recording = _RecordingFile(f)
            write(recording)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err) from err
        if recording is not None and recording.error is not None:   # a writer that hid the OSError (torch.save)
            raise WriteError(path, recording.error) from err
        raise
    return tmp


def replace_into(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``, a failure raised as a :class:`WriteError` naming ``path`` (``tmp`` removed)."""
    try:
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise WriteError(path, err) from err
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` with ``write(binary file)`` so that it holds either its old or its complete new content.

    Raises :class:`WriteError` (one line: the file, the cause, what to do) when it cannot be written; ``path``
    then keeps its old content."""
    path = Path(path)
    tmp = write_temp(path, write)
    replace_into(tmp, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch   # here, so that the JSON-lines reader/writer (which imports this module) needs no torch
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that writes killed midway left in ``directory``;
    return them. Only for a directory no other process is writing to (a run being resumed)."""
    stale = [p for p in Path(directory).glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


__all__ = ["WriteError", "atomic_torch_save", "replace_into", "writing", "atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temps"]
