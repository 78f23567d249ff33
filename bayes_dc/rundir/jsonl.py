"""JSON-lines files (one JSON object per line: ``metrics.jsonl``, ``lineage.jsonl``): the one reader and writer.

Files only, no training code, so run directories copied elsewhere can be read with nothing else installed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bayes_dc.rundir.atomic import writing


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of ``path`` in order (blank lines skipped); ``[]`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a line and fsync, so a crash loses at most the line being written (a failed write
    raises :class:`bayes_dc.rundir.atomic.WriteError` naming the file).

    One ``write`` call of the whole line (a buffered file splits lines over 8 KiB into several): a process
    killed mid-append (SIGKILL) then leaves the line whole or absent, never half of it for the next reader.
    """
    data = (json.dumps(record) + "\n").encode()
    with writing(path):   # a full disk: WriteError naming the file
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            while data:   # a regular file takes it in one go; the loop only guards against a short write
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
