"""Where a run came from: package versions, git revision, device, command line, host and start time
(``environment.json`` of a run directory)."""
from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
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


__all__ = ["environment", "git_revision"]
