"""Datasets as in-memory uint8 tensors, behind one explicit registry.

``load_dataset(name, split)`` returns an :class:`ImageDataset` whose ``images`` are a ``(N, C, H, W)``
uint8 tensor and whose ``labels`` (``(N,)`` int64, or None) are used only for evaluation. Everything fits in
memory for the datasets this project uses (Fashion-MNIST train is 47 MB), so there are no loader workers and
no per-item transforms: augmentation happens on batches of tensors in ``train.py``.

Registry (``DATASETS``):

=================  ==========================================================================  ===========
name               source                                                                      native size
=================  ==========================================================================  ===========
``fashion-mnist``  IDX files: ``root``, ``$BAYES_DC_DATA``, Debian package, torchvision download  1 x 28 x 28
``mnist``          IDX files: same search, torchvision ``MNIST`` download                        1 x 28 x 28
``cifar10``        torchvision ``CIFAR10`` (its own download)                                    3 x 32 x 32
``stl10``          torchvision ``STL10``; splits train (5k labelled), test, unlabeled (100k)     3 x 96 x 96
``imagefolder``    a user's folder of images (class sub-folders, or flat = unlabelled)          C x 32 x 32
``digits``         scikit-learn's bundled 8x8 digits, upsampled; fixed 1,500 / 297 split      1 x 28 x 28
``synthetic``      generated grey images with 10 known clusters (tests, demos)                 1 x 28 x 28
=================  ==========================================================================  ===========

torchvision is imported lazily, only by the steps that need it (cifar10, stl10, downloads), so the IDX,
imagefolder, digits and synthetic paths work without it.
"""
from __future__ import annotations

import gzip
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ImageDataset",
    "load_dataset",
    "DATASETS",
    "SPLITS",
    "DatasetNotFoundError",
    "UnreadableImagesError",
    "CorruptDataError",
    "read_idx",
    "SYSTEM_DATA_DIRS",
    "DATA_ENV_VAR",
    "IMAGE_EXTENSIONS",
]

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class DatasetNotFoundError(FileNotFoundError):
    """No copy of a dataset was found anywhere it was looked for (the message lists each place and the fixes)."""


class UnreadableImagesError(ValueError):
    """Some image files could not be decoded. ``paths`` holds all of them; the message lists the first 20."""

    def __init__(self, message: str, paths: list[str]):
        super().__init__(message)
        self.paths = paths


class CorruptDataError(ValueError):
    """A data file exists but is not what it should be (bad magic number, wrong dimensions, truncated)."""


# --------------------------------------------------------------------------------------------------
# The dataset container
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageDataset:
    """Images in memory plus (evaluation-only) labels.

    Attributes:
        images: ``(N, C, H, W)`` uint8 tensor, H == W.
        labels: ``(N,)`` int64 array of class ids, or None when the classes are unknown. Never used to train.
        name: registry name of the dataset (e.g. ``"fashion-mnist"``).
        classes: class names, ``classes[labels[i]]`` is image i's class; None when unknown.
        source: where the pixels came from (a directory, ``"generated"``, ...), for the run record.
    """

    images: torch.Tensor
    labels: np.ndarray | None
    name: str
    classes: list[str] | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        # Catch a malformed dataset here, where the cause is known, not as a shape error deep in training.
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ImageDataset {self.name!r}: images must be a (N, C, H, W) uint8 tensor, got "
                f"{type(self.images).__name__} {getattr(self.images, 'dtype', '')} "
                f"{tuple(getattr(self.images, 'shape', ()))}"
            )
        if self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"ImageDataset {self.name!r}: images must be square, got H x W = "
                             f"{self.images.shape[2]} x {self.images.shape[3]}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"ImageDataset {self.name!r}: labels shape {self.labels.shape} does not match "
                                 f"{len(self.images)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_channels(self) -> int:
        """C: 1 for grey, 3 for colour."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """H (= W)."""
        return int(self.images.shape[2])

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation of ``images / 255``, each a ``(C,)`` float32 tensor.

        Population std (ddof=0), over all images and pixels. Accumulated in float64 over chunks so that a
        large dataset needs neither a float copy of itself nor suffers float32 round-off.
        """
        channels = self.num_channels
        total = torch.zeros(channels, dtype=torch.float64)
        total_sq = torch.zeros(channels, dtype=torch.float64)
        for start in range(0, len(self), _CHUNK):
            x = self.images[start:start + _CHUNK].to(torch.float64) / 255.0   # (n, C, H, W)
            total += x.sum(dim=(0, 2, 3))
            total_sq += (x * x).sum(dim=(0, 2, 3))
        count = max(len(self), 1) * self.image_size ** 2
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)   # clamp: round-off can go a hair below 0
        return mean.float(), var.sqrt().float()


_CHUNK = 4096  # images per chunk for float work (mean/std, resizing): bounds peak memory

# --------------------------------------------------------------------------------------------------
# Shared helpers: subset and resize
# --------------------------------------------------------------------------------------------------


def _subset_indices(size: int, subset: int | None, seed: int, name: str) -> np.ndarray | None:
    """Indices of a deterministic random subset, or None for "all".

    A seeded permutation rather than the first N: files and IDX records are often sorted by class, so the
    first N could be a single class.
    """
    if subset is None:
        return None
    if subset <= 0:
        raise ValueError(f"subset must be a positive number of images, got {subset}")
    if subset > size:
        raise ValueError(f"subset={subset} is larger than the dataset: {name!r} has {size} images in this split; "
                         f"use subset <= {size} or subset=None for all of them")
    return np.random.default_rng(seed).permutation(size)[:subset]


def _apply_subset(ds: ImageDataset, subset: int | None, seed: int) -> ImageDataset:
    idx = _subset_indices(len(ds), subset, seed, ds.name)
    if idx is None:
        return ds
    labels = None if ds.labels is None else ds.labels[idx]
    return ImageDataset(ds.images[torch.from_numpy(idx)].contiguous(), labels, ds.name, ds.classes, ds.source)


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size <= 0):
        raise ValueError(f"image_size must be a positive int (pixels per side) or None, got {image_size!r}")


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` uint8 images to ``(N, C, size, size)`` uint8: bilinear, antialiased.

    Antialiasing matters when shrinking (e.g. STL-10's 96 px to 32 px); without it bilinear aliases.
    Non-square inputs are stretched; loaders that can see the originals centre-crop first.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), _CHUNK):
        x = images[start:start + _CHUNK].float()                                      # (n, C, H, W)
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + _CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _finish(ds: ImageDataset, subset: int | None, seed: int, image_size: int | None) -> ImageDataset:
    """Subset first (so only the kept images are resized), then resize."""
    ds = _apply_subset(ds, subset, seed)
    if image_size is not None:
        ds.images = resize_images(ds.images, image_size)
    return ds


# --------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------------

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
class _IdxSpec:
    name: str                     # registry name
    torchvision_class: str        # torchvision.datasets class; its raw files live in root/<class>/raw
    system_dir_name: str          # /usr/share/datasets/<this>
    classes: tuple[str, ...]
    apt_package: str | None       # Debian package that installs the files, if there is one


_FASHION_MNIST = _IdxSpec(
    "fashion-mnist", "FashionMNIST", "fashion-mnist",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "dataset-fashion-mnist",
)
_MNIST = _IdxSpec("mnist", "MNIST", "mnist", tuple(str(d) for d in range(10)), None)

# Search locations. Module-level so tests (and unusual installs) can monkeypatch them.
DATA_ENV_VAR = "BAYES_DC_DATA"
SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)
CACHE_DIR = Path(os.path.expanduser("~/.cache/bayes_dc"))   # torchvision downloads land here when root is None

_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _idx_layouts(base: Path, spec: _IdxSpec) -> list[Path]:
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

    A module-level function so tests can monkeypatch it (tests never touch the network).
    """
    import torchvision   # lazy: only needed for downloads

    cls = {"fashion-mnist": torchvision.datasets.FashionMNIST, "mnist": torchvision.datasets.MNIST}[spec_name]
    cls(str(dest), train=True, download=True)   # fetches all four files (train and test)
    return Path(dest) / cls.__name__ / "raw"


def _env_dirs() -> list[Path]:
    value = os.environ.get(DATA_ENV_VAR, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def _load_idx_dataset(spec: _IdxSpec, split: str, root: str | None, download: bool) -> ImageDataset:
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
    env = _env_dirs()
    searches.append((f"${DATA_ENV_VAR}", [d for base in env for d in _idx_layouts(base, spec)]))
    searches.append(("system", [Path(s) / spec.system_dir_name for s in SYSTEM_DATA_DIRS]))
    download_dest = Path(root).expanduser() if root is not None else CACHE_DIR
    if root is None:   # with a root, downloads go under root, whose layouts were searched above
        searches.append(("download cache", [CACHE_DIR / spec.torchvision_class / "raw"]))

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
                pair, why = _find_idx_pair(download_idx(spec.name, download_dest), split)
                if pair is None:
                    tried.append(f"torchvision download into {download_dest}: finished but {why}")
            except Exception as exc:   # network down, proxy, disk full...: report it with the rest
                tried.append(f"torchvision download into {download_dest}: failed "
                             f"({type(exc).__name__}: {str(exc)[:200]})")
        else:
            tried.append("torchvision download: skipped (download=False)")
    if pair is None:
        raise DatasetNotFoundError(_idx_not_found_message(spec, split, tried))

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


def _idx_not_found_message(spec: _IdxSpec, split: str, tried: list[str]) -> str:
    files = f"{_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] and {_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz]"
    lines = [f"{spec.name} ({split} split) not found: no directory holds {files}.", "Places searched, in order:"]
    lines += [f"  - {t}" for t in tried]
    lines.append("Fix, any one of:")
    if spec.apt_package:
        lines.append(f"  - install the Debian package: apt-get install -y {spec.apt_package} "
                     f"(files go to {SYSTEM_DATA_DIRS[0] if SYSTEM_DATA_DIRS else '/usr/share/datasets'}/"
                     f"{spec.system_dir_name})")
    lines += [
        f"  - point at a directory with the IDX files (directly, or torchvision's {spec.torchvision_class}/raw/ "
        f"layout): --data-root DIR, i.e. load_dataset(..., root=DIR)",
        f"  - or set the environment variable {DATA_ENV_VAR}=DIR",
        "  - or allow the torchvision download (download=True) on a machine with network access",
    ]
    return "\n".join(lines)


def _load_fashion_mnist(split: str, *, root: str | None, subset: int | None, seed: int,
                        image_size: int | None, download: bool) -> ImageDataset:
    """Fashion-MNIST: 60,000 train / 10,000 test, (N, 1, 28, 28), 10 classes."""
    return _finish(_load_idx_dataset(_FASHION_MNIST, split, root, download), subset, seed, image_size)


def _load_mnist(split: str, *, root: str | None, subset: int | None, seed: int,
                image_size: int | None, download: bool) -> ImageDataset:
    """MNIST: 60,000 train / 10,000 test, (N, 1, 28, 28), digits 0-9."""
    return _finish(_load_idx_dataset(_MNIST, split, root, download), subset, seed, image_size)


# --------------------------------------------------------------------------------------------------
# torchvision datasets (CIFAR-10, STL-10)
# --------------------------------------------------------------------------------------------------


def _load_torchvision(name: str, split: str, root: str | None, download: bool) -> ImageDataset:
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

    candidates = ([Path(root).expanduser()] if root is not None else []) + _env_dirs() + [CACHE_DIR]
    tried = []
    ds = None
    for directory in candidates:
        try:
            ds = make(directory, False)
            break
        except (RuntimeError, OSError) as exc:   # torchvision: "Dataset not found or corrupted"
            tried.append(f"{directory / folder} ({str(exc)[:120]})")
    if ds is None and download:
        dest = Path(root).expanduser() if root is not None else CACHE_DIR
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
               f"(load_dataset(..., root=DIR)) or set {DATA_ENV_VAR}=DIR"]))

    if name == "cifar10":
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        labels = np.asarray(ds.targets, dtype=np.int64)
    else:
        images = torch.from_numpy(np.ascontiguousarray(ds.data))   # already (N, 3, 96, 96) uint8
        # STL-10's unlabeled split marks every label -1: there are no classes to evaluate against.
        labels = None if split == "unlabeled" else np.asarray(ds.labels, dtype=np.int64)
    return ImageDataset(images, labels, name, list(ds.classes), source=str(Path(ds.root) / folder))


def _load_cifar10(split: str, *, root: str | None, subset: int | None, seed: int,
                  image_size: int | None, download: bool) -> ImageDataset:
    """CIFAR-10: 50,000 train / 10,000 test, (N, 3, 32, 32), 10 classes."""
    return _finish(_load_torchvision("cifar10", split, root, download), subset, seed, image_size)


def _load_stl10(split: str, *, root: str | None, subset: int | None, seed: int,
                image_size: int | None, download: bool) -> ImageDataset:
    """STL-10: train = 5,000 labelled, test = 8,000, unlabeled = 100,000 (labels None); (N, 3, 96, 96)."""
    return _finish(_load_torchvision("stl10", split, root, download), subset, seed, image_size)


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_PROGRESS_THRESHOLD = 1000   # files; below this a progress bar is noise


def _is_image_file(path: Path) -> bool:
    # Skip hidden files: macOS "._x.jpg" resource forks carry image extensions but are not images.
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _image_files(directory: Path) -> list[Path]:
    """All image files under ``directory``, recursively, in a sorted (reproducible) order."""
    return sorted(p for p in directory.rglob("*") if _is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts[:-1]))


def _scan_folder(directory: Path, classes: list[str] | None = None
                 ) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """List images and labels. Class sub-folders -> labels from sorted folder names; flat -> labels None.

    ``classes``: a class list to map folder names onto (the test split uses the train split's list, so the
    same id means the same class in both).
    """
    top_images = [p for p in directory.iterdir() if _is_image_file(p)]
    # Listed once (rglob over a large tree is slow); folders without images are not classes.
    files_by_dir = {d.name: _image_files(d) for d in sorted(directory.iterdir())
                    if d.is_dir() and not d.name.startswith(".")}
    files_by_dir = {name: files for name, files in files_by_dir.items() if files}
    class_dirs = list(files_by_dir)
    if not class_dirs or top_images:
        if class_dirs and top_images:
            warnings.warn(f"{directory} holds both images and sub-folders of images; treating it as one flat, "
                          f"unlabelled folder. Move the top-level images into a class folder to get labels.",
                          stacklevel=3)
        return _image_files(directory), None, None
    if classes is None:
        classes = list(class_dirs)
    unknown = [name for name in class_dirs if name not in classes]
    if unknown:
        raise ValueError(f"{directory} has class folders {unknown} that the train split lacks "
                         f"(train classes: {classes}); the splits must share class names.")
    files, labels = [], []
    for name, these in files_by_dir.items():
        files += these
        labels += [classes.index(name)] * len(these)
    return files, np.asarray(labels, dtype=np.int64), classes


def _read_image(path: Path, size: int) -> np.ndarray:
    """Decode one image, centre-crop to square, resize to ``size``; ``(size, size)`` grey or ``(size, size, 3)``."""
    from PIL import Image

    with Image.open(path) as img:
        # draft() lets the JPEG decoder downscale by 2/4/8 while decoding: much faster for large photos.
        img.draft(None, (size, size))
        grey = img.mode in _GREY_MODES
        img = img.convert("L" if grey else "RGB")   # first frame of GIFs; drops alpha
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        # PIL's bilinear resize antialiases when shrinking (its filter support scales with the reduction).
        img = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        return np.asarray(img, dtype=np.uint8)


def _load_imagefolder(split: str, *, root: str | None, subset: int | None, seed: int,
                      image_size: int | None, download: bool) -> ImageDataset:
    """A user's image folder -> (N, C, S, S) uint8 with S = image_size (default 32).

    Layouts: ``root/<class>/**/img`` (labels = index of the class in the sorted folder names), or a flat
    ``root/**/img`` (labels None). If ``root/train`` and ``root/test`` both exist they are the two splits.
    C is 1 when every image is greyscale, else 3 (grey images are replicated to RGB).
    """
    del download   # nothing to download: the folder is the user's
    if root is None:
        raise ValueError("imagefolder needs root=DIR (--data-root DIR): the folder holding your images")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"imagefolder: {base} is not a directory. Pass --data-root DIR with "
                                   f"class sub-folders of images, or a flat folder of images.")
    size = 32 if image_size is None else image_size
    has_split_dirs = (base / "train").is_dir() and (base / "test").is_dir()
    if split == "test" and not has_split_dirs:
        raise ValueError(f"imagefolder: split='test' needs {base}/train and {base}/test folders; {base} has "
                         f"no such pair. Use split='train' for the whole folder, or arrange it as "
                         f"{base}/train/<class>/... and {base}/test/<class>/...")
    classes = None
    if has_split_dirs:
        directory = base / split
        if split == "test":   # map test folders onto the train split's class ids
            _, _, classes = _scan_folder(base / "train")
    else:
        directory = base
    files, labels, classes = _scan_folder(directory, classes)
    if not files:
        raise DatasetNotFoundError(f"imagefolder: no images under {directory} (looked recursively for "
                                   f"{', '.join(IMAGE_EXTENSIONS)}, any case).")

    idx = _subset_indices(len(files), subset, seed, "imagefolder")
    if idx is not None:   # choose before decoding: no point reading images that are thrown away
        files = [files[i] for i in idx]
        labels = None if labels is None else labels[idx]

    from tqdm.auto import tqdm

    arrays: list[np.ndarray | None] = []
    failures: list[str] = []
    for path in tqdm(files, desc=f"loading {directory}", unit="img", disable=len(files) <= _PROGRESS_THRESHOLD):
        try:
            arrays.append(_read_image(path, size))
        except Exception as exc:   # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
            failures.append(f"{path} ({type(exc).__name__}: {exc})")
            arrays.append(None)
    if failures:
        shown = "\n".join(f"  {f}" for f in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise UnreadableImagesError(
            f"imagefolder: {len(failures)} of {len(files)} image files under {directory} could not be read:\n"
            f"{shown}{more}\nRemove (or repair) these files and load again; they are not skipped silently "
            f"because that would change N and the labels without notice.",
            [f.rsplit(" (", 1)[0] for f in failures],
        )
    if all(a.ndim == 2 for a in arrays):
        images = np.stack(arrays)[:, None]                                     # (N, 1, S, S)
    else:   # mixed: grey -> RGB by replication, the same as PIL's convert("RGB")
        images = np.stack([np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
        images = images.transpose(0, 3, 1, 2)                                  # (N, 3, S, S)
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(images)), labels, "imagefolder", classes,
                        source=str(directory))


# --------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------

DIGITS_SPLIT_SEED = 0      # fixed (not the run seed): the train/test split must be the same in every run
DIGITS_TRAIN_SIZE = 1500   # of 1,797; the other 297 are the test split


def _load_digits(split: str, *, root: str | None, subset: int | None, seed: int,
                 image_size: int | None, download: bool) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits: 1,500 train / 297 test, (N, 1, 28, 28) by default, digits 0-9."""
    del root, download   # bundled with scikit-learn
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)          # (1797, 8, 8), 0..16 -> 0..255
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(pixels))
    chosen = order[:DIGITS_TRAIN_SIZE] if split == "train" else order[DIGITS_TRAIN_SIZE:]
    ds = ImageDataset(torch.from_numpy(pixels[chosen]).unsqueeze(1), digits.target[chosen].astype(np.int64),
                      "digits", [str(d) for d in range(10)], source="sklearn.datasets.load_digits")
    return _finish(ds, subset, seed, 28 if image_size is None else image_size)


# --------------------------------------------------------------------------------------------------
# Synthetic clusters
# --------------------------------------------------------------------------------------------------

SYNTHETIC_CLUSTERS = 10
SYNTHETIC_SIZE = 28
SYNTHETIC_DEFAULT_N = {"train": 2000, "test": 500}
SYNTHETIC_PROTOTYPE_SEED = 20180705   # fixed: train and test share the prototypes (the "classes")
_SYNTHETIC_BLOBS = 3                  # Gaussian blobs per prototype
_SYNTHETIC_SHIFT = 2.0                # max |shift| in pixels, per axis
_SYNTHETIC_NOISE = 0.08               # pixel noise std, in units of full intensity


def _synthetic_prototypes() -> dict[str, np.ndarray]:
    """Blob parameters per cluster: centres (K, B, 2) in pixels, widths (K, B), amplitudes (K, B)."""
    rng = np.random.default_rng(SYNTHETIC_PROTOTYPE_SEED)
    k, b = SYNTHETIC_CLUSTERS, _SYNTHETIC_BLOBS
    margin = 5.0   # keep blobs (and their shifts) inside the frame
    return {
        "centres": rng.uniform(margin, SYNTHETIC_SIZE - 1 - margin, size=(k, b, 2)),
        "widths": rng.uniform(2.0, 3.5, size=(k, b)),
        "amplitudes": rng.uniform(0.6, 1.0, size=(k, b)),
    }


def _render_blobs(centres: np.ndarray, widths: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Sum of Gaussian blobs: centres (n, B, 2) as (row, col), widths/amplitudes (n, B) -> images (n, S, S)."""
    grid = np.arange(SYNTHETIC_SIZE, dtype=np.float64)
    d_row = (grid[None, None, :] - centres[:, :, 0:1]) ** 2                   # (n, B, S)
    d_col = (grid[None, None, :] - centres[:, :, 1:2]) ** 2                   # (n, B, S)
    inv = 1.0 / (2.0 * widths ** 2)                                            # (n, B)
    # Separable: exp(-(dr + dc) * inv) = exp(-dr * inv) outer exp(-dc * inv)
    rows = np.exp(-d_row * inv[:, :, None])                                    # (n, B, S)
    cols = np.exp(-d_col * inv[:, :, None])                                    # (n, B, S)
    return np.einsum("nb,nbi,nbj->nij", amplitudes, rows, cols)               # (n, S, S)


def _load_synthetic(split: str, *, root: str | None, subset: int | None, seed: int,
                    image_size: int | None, download: bool) -> ImageDataset:
    """Generated grey images with 10 known clusters: (N, 1, 28, 28), N = subset or 2,000 train / 500 test.

    Each cluster's prototype is a few Gaussian blobs at cluster-specific places (fixed seed, so train and
    test share them). Each image = its prototype shifted by up to +-2 px + Gaussian pixel noise, clipped to
    uint8. Images depend on (split, seed). Labels are the cluster ids, balanced (N // 10 or N // 10 + 1 each).
    """
    del root, download
    n = SYNTHETIC_DEFAULT_N[split] if subset is None else subset
    if n <= 0:
        raise ValueError(f"synthetic: subset (the number of images to generate) must be positive, got {n}")
    proto = _synthetic_prototypes()
    # Separate streams per split, so test images are not a prefix/copy of train images for the same seed.
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split]])
    labels = rng.permutation(np.arange(n) % SYNTHETIC_CLUSTERS).astype(np.int64)
    images = np.empty((n, 1, SYNTHETIC_SIZE, SYNTHETIC_SIZE), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
        m = len(lab)
        shift = rng.uniform(-_SYNTHETIC_SHIFT, _SYNTHETIC_SHIFT, size=(m, 1, 2))   # one shift per image
        clean = _render_blobs(proto["centres"][lab] + shift, proto["widths"][lab], proto["amplitudes"][lab])
        noisy = clean + rng.normal(0.0, _SYNTHETIC_NOISE, size=clean.shape)
        images[start:start + m, 0] = np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
    ds = ImageDataset(torch.from_numpy(images), labels, "synthetic",
                      [f"cluster {i}" for i in range(SYNTHETIC_CLUSTERS)], source="generated")
    return _finish(ds, None, seed, image_size)   # subset already used as N


# --------------------------------------------------------------------------------------------------
# Registry and entry point
# --------------------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "fashion-mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "stl10": _load_stl10,
    "imagefolder": _load_imagefolder,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}

SPLITS: dict[str, tuple[str, ...]] = {name: ("train", "test") for name in DATASETS}
SPLITS["stl10"] = ("train", "test", "unlabeled")


def load_dataset(name: str, split: str = "train", *, root: str | None = None, subset: int | None = None,
                 seed: int = 0, image_size: int | None = None, download: bool = True) -> ImageDataset:
    """Load a registered dataset into memory.

    Args:
        name: a key of ``DATASETS`` (case and ``_``/``-`` are forgiven: ``Fashion_MNIST`` works).
        split: ``"train"`` or ``"test"`` (stl10 also ``"unlabeled"``).
        root: a directory searched first (``--data-root``); for imagefolder, the folder itself.
        subset: keep N images chosen by a permutation seeded with ``seed`` (same seed -> same images, in
            the same order). For ``synthetic`` it is the number of images to generate.
        seed: seed for ``subset`` (and for synthetic images).
        image_size: side of the square output, bilinear + antialias; None = native (imagefolder: 32,
            digits: 28).
        download: allow torchvision's download when no local copy exists.

    Returns:
        ImageDataset with ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64 or None.

    Raises:
        ValueError: unknown name or split (the message lists the choices), bad subset / image_size.
        DatasetNotFoundError: no copy anywhere (the message lists each place searched and the fixes).
        UnreadableImagesError: imagefolder files that cannot be decoded (the message lists them).
        CorruptDataError: a data file is damaged (the message names it).
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if split not in SPLITS[key]:
        raise ValueError(f"unknown split {split!r} for dataset {key!r}; choose one of: {', '.join(SPLITS[key])}")
    _check_image_size(image_size)
    if subset is not None and (not isinstance(subset, (int, np.integer)) or subset <= 0):
        raise ValueError(f"subset must be a positive int (number of images) or None, got {subset!r}")
    return DATASETS[key](split, root=root, subset=subset, seed=seed, image_size=image_size, download=download)
