"""MNIST and Fashion-MNIST from IDX files: the file format, the search order, the loaders.

Search order for a split's two files (``<prefix>-images-idx3-ubyte[.gz]``, ``<prefix>-labels-idx1-ubyte[.gz]``):
``root`` (``--data-root``), ``$BAYES_DC_DATA``, the system dirs (Debian's ``dataset-fashion-mnist`` package),
the download cache, then torchvision's download. Each place may hold the files directly, in torchvision's
``<Class>/raw/`` layout, or in a folder named after the dataset.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bayes_dc.data.base import CorruptDataError, DatasetNotFoundError, ImageDataset, SearchPaths, _finish

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw; detected from the content, not the name).

    Format: 2 zero bytes, a type code, the number of dimensions, then each dimension as a big-endian uint32,
    then the data. MNIST images are ``(N, 28, 28)`` uint8 (ndim 3), labels ``(N,)`` uint8 (ndim 1).

    Raises:
        CorruptDataError: bad magic number, unexpected number of dimensions, or a truncated file;
            the message names the file.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"   # gzip magic
    try:
        if compressed:
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:   # truncated or damaged gzip stream
        raise CorruptDataError(f"{path}: cannot decompress ({type(exc).__name__}: {exc}); the file is truncated "
                               f"or damaged. Delete it and get a fresh copy.") from exc
    fix = "Delete it and get a fresh copy (re-download, or reinstall the package it came from)."
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CorruptDataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}, expected "
                               f"00 00 <type> <ndim>). {fix}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise CorruptDataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim} "
                               f"(images have 3, labels 1). Is it the right file? {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header}). {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected_bytes:
        raise CorruptDataError(f"{path}: IDX header says shape {dims} ({expected_bytes} data bytes) but the file "
                               f"holds {len(raw) - header}; it is truncated or corrupt. {fix}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


@dataclass(frozen=True)
class IdxSpec:
    name: str                     # registry name
    torchvision_class: str        # torchvision.datasets class; its raw files live in root/<class>/raw
    system_dir_name: str          # /usr/share/datasets/<this>
    classes: tuple[str, ...]
    apt_package: str | None       # Debian package that installs the files, if there is one


FASHION_MNIST = IdxSpec(
    "fashion-mnist", "FashionMNIST", "fashion-mnist",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "dataset-fashion-mnist",
)
MNIST = IdxSpec("mnist", "MNIST", "mnist", tuple(str(d) for d in range(10)), None)


_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _idx_layouts(base: Path, spec: IdxSpec) -> list[Path]:
    """Directories under ``base`` that may hold the IDX files: base itself, torchvision's layout, a named folder."""
    return [base, base / spec.torchvision_class / "raw", base / spec.name]


def _find_idx_pair(directory: Path, split: str) -> tuple[tuple[Path, Path] | None, str]:
    """Find (images, labels) files for ``split`` in ``directory``; else (None, why not)."""
    if not directory.is_dir():
        return None, "no such directory"
    found = []
    for stem in (f"{_IDX_PREFIX[split]}-images-idx3-ubyte", f"{_IDX_PREFIX[split]}-labels-idx1-ubyte"):
        # Prefer the raw file when both exist: torchvision keeps both and raw reads faster.
        candidates = [directory / stem, directory / (stem + ".gz")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            return None, f"no {stem}[.gz]"
        found.append(hit)
    return (found[0], found[1]), "found"


def download_idx(spec_name: str, dest: Path) -> Path:
    """Download an IDX dataset with torchvision into ``dest``; return the directory holding the raw files.

    Re-exported as ``bayes_dc.data.download_idx``, which ``load_dataset`` calls, so tests can monkeypatch it
    there (tests never touch the network).
    """
    import torchvision   # lazy: only needed for downloads

    cls = {"fashion-mnist": torchvision.datasets.FashionMNIST, "mnist": torchvision.datasets.MNIST}[spec_name]
    cls(str(dest), train=True, download=True)   # fetches all four files (train and test)
    return Path(dest) / cls.__name__ / "raw"


def _load_idx_dataset(spec: IdxSpec, split: str, root: str | None, download: bool, paths: SearchPaths,
                      download_fn: Callable[[str, Path], Path]) -> ImageDataset:
    """Search every place in order; the first complete pair of IDX files wins."""
    tried: list[str] = []   # one line per place looked at, for the error message

    def try_dirs(label: str, dirs: list[Path]) -> tuple[Path, Path] | None:
        for d in dirs:
            pair, why = _find_idx_pair(d, split)
            if pair is not None:
                return pair
            tried.append(f"{label}: {d} ({why})")
        return None

    searches: list[tuple[str, list[Path]]] = []
    if root is not None:
        searches.append(("root (--data-root)", _idx_layouts(Path(root).expanduser(), spec)))
    env = paths.env_dirs()
    searches.append((f"${paths.env_var}", [d for base in env for d in _idx_layouts(base, spec)]))
    searches.append(("system", [Path(s) / spec.system_dir_name for s in paths.system_dirs]))
    download_dest = Path(root).expanduser() if root is not None else paths.cache_dir
    if root is None:   # with a root, downloads go under root, whose layouts were searched above
        searches.append(("download cache", [paths.cache_dir / spec.torchvision_class / "raw"]))

    pair = None
    for label, dirs in searches:
        if not dirs:   # e.g. the environment variable is unset: say so, the user may think it is set
            tried.append(f"{label}: not set" if label.startswith("$") else f"{label}: no directories configured")
            continue
        pair = try_dirs(label, dirs)
        if pair is not None:
            break
    if pair is None:
        if download:
            try:
                pair, why = _find_idx_pair(download_fn(spec.name, download_dest), split)
                if pair is None:
                    tried.append(f"torchvision download into {download_dest}: finished but {why}")
            except Exception as exc:   # network down, proxy, disk full...: report it with the rest
                tried.append(f"torchvision download into {download_dest}: failed "
                             f"({type(exc).__name__}: {str(exc)[:200]})")
        else:
            tried.append("torchvision download: skipped (download=False)")
    if pair is None:
        raise DatasetNotFoundError(_idx_not_found_message(spec, split, tried, paths))

    images_path, labels_path = pair
    images = read_idx(images_path, expected_ndim=3)     # (N, H, W) uint8
    labels = read_idx(labels_path, expected_ndim=1)     # (N,) uint8
    if len(images) != len(labels):
        raise CorruptDataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
                               f"one of them is truncated or they come from different datasets.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise CorruptDataError(f"{labels_path}: labels must lie in 0..{len(spec.classes) - 1}, found "
                               f"{labels.min()}..{labels.max()}. Is it the right file?")
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1),    # (N, 1, H, W)
        labels=labels.astype(np.int64),
        name=spec.name,
        classes=list(spec.classes),
        source=str(images_path.parent),
    )


def _idx_not_found_message(spec: IdxSpec, split: str, tried: list[str], paths: SearchPaths) -> str:
    files = f"{_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] and {_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz]"
    lines = [f"{spec.name} ({split} split) not found: no directory holds {files}.", "Places searched, in order:"]
    lines += [f"  - {t}" for t in tried]
    lines.append("Fix, any one of:")
    if spec.apt_package:
        lines.append(f"  - install the Debian package: apt-get install -y {spec.apt_package} "
                     f"(files go to {paths.system_dirs[0] if paths.system_dirs else '/usr/share/datasets'}/"
                     f"{spec.system_dir_name})")
    lines += [
        f"  - point at a directory with the IDX files (directly, or torchvision's {spec.torchvision_class}/raw/ "
        f"layout): --data-root DIR, i.e. load_dataset(..., root=DIR)",
        f"  - or set the environment variable {paths.env_var}=DIR",
        "  - or allow the torchvision download (download=True) on a machine with network access",
    ]
    return "\n".join(lines)


def load_idx(spec: IdxSpec, split: str, *, root: str | None, subset: int | None, seed: int,
             image_size: int | None, download: bool, paths: SearchPaths,
             download_fn: Callable[[str, Path], Path] = download_idx) -> ImageDataset:
    """MNIST-style dataset ``spec``: (N, 1, 28, 28) uint8 (resized if ``image_size``), labels (N,) int64.

    Fashion-MNIST and MNIST: 60,000 train / 10,000 test, 10 classes.
    """
    return _finish(_load_idx_dataset(spec, split, root, download, paths, download_fn), subset, seed, image_size)
