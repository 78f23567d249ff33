"""CIFAR-10 and STL-10 through torchvision (imported lazily: only these loaders need it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bayes_dc.data.base import DatasetNotFoundError, ImageDataset, SearchPaths, _finish

def _load_torchvision(name: str, split: str, root: str | None, download: bool, paths: SearchPaths) -> ImageDataset:
    """Load CIFAR-10 / STL-10 through torchvision; existing copies first, then (if allowed) its download."""
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(f"dataset {name!r} needs torchvision (pip install torchvision)") from exc

    if name == "cifar10":
        def make(directory: Path, dl: bool):
            return torchvision.datasets.CIFAR10(str(directory), train=(split == "train"), download=dl)
        folder = "cifar-10-batches-py"
    else:
        def make(directory: Path, dl: bool):
            return torchvision.datasets.STL10(str(directory), split=split, download=dl)
        folder = "stl10_binary"

    candidates = ([Path(root).expanduser()] if root is not None else []) + paths.env_dirs() + [paths.cache_dir]
    tried = []
    ds = None
    for directory in candidates:
        try:
            ds = make(directory, False)
            break
        except (RuntimeError, OSError) as exc:   # torchvision: "Dataset not found or corrupted"
            tried.append(f"{directory / folder} ({str(exc)[:120]})")
    if ds is None and download:
        dest = Path(root).expanduser() if root is not None else paths.cache_dir
        try:
            ds = make(dest, True)
        except Exception as exc:   # network, disk: report with the rest
            tried.append(f"torchvision download into {dest}: failed ({type(exc).__name__}: {str(exc)[:200]})")
    elif ds is None:
        tried.append("torchvision download: skipped (download=False)")
    if ds is None:
        raise DatasetNotFoundError("\n".join(
            [f"{name} ({split} split) not found. Places searched, in order:"]
            + [f"  - {t}" for t in tried]
            + ["Fix, any one of:",
               "  - allow the download (download=True) on a machine with network access",
               f"  - or copy torchvision's {folder}/ folder into DIR and pass --data-root DIR "
               f"(load_dataset(..., root=DIR)) or set {paths.env_var}=DIR"]))

    if name == "cifar10":
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        labels = np.asarray(ds.targets, dtype=np.int64)
    else:
        images = torch.from_numpy(np.ascontiguousarray(ds.data))   # already (N, 3, 96, 96) uint8
        # STL-10's unlabeled split marks every label -1: there are no classes to evaluate against.
        labels = None if split == "unlabeled" else np.asarray(ds.labels, dtype=np.int64)
    return ImageDataset(images, labels, name, list(ds.classes), source=str(Path(ds.root) / folder))


def load_torchvision_set(name: str, split: str, *, root: str | None, subset: int | None, seed: int,
                         image_size: int | None, download: bool, paths: SearchPaths) -> ImageDataset:
    """``"cifar10"``: 50,000 train / 10,000 test, (N, 3, 32, 32), 10 classes.
    ``"stl10"``: train = 5,000 labelled, test = 8,000, unlabeled = 100,000 (labels None); (N, 3, 96, 96).
    """
    return _finish(_load_torchvision(name, split, root, download, paths), subset, seed, image_size)
