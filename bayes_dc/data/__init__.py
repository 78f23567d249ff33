"""Datasets behind one explicit registry: in memory as uint8 tensors, or streamed from disk when too large.

``load_dataset(name, split)`` returns an :class:`ImageDataset` whose ``images`` are a ``(N, C, H, W)``
uint8 tensor and whose ``labels`` (``(N,)`` int64, or None) are used only for evaluation; for an image
folder larger than the memory budget it returns a :class:`StreamingImageFolder` instead. Both offer the
interface :class:`ImageSource` (``len``, ``labels``, ``num_channels``, ``image_size``, ``mean_std()``,
``eval_batches``, ``train_batches``), so the pipeline can use either.

Registry (``DATASETS``):

=================  ==========================================================================  ===========
name               source                                                                      native size
=================  ==========================================================================  ===========
``fashion-mnist``  IDX files: ``root``, ``$BAYES_DC_DATA``, Debian package, torchvision download  1 x 28 x 28
``mnist``          IDX files: same search, torchvision ``MNIST`` download                        1 x 28 x 28
``cifar10``        torchvision ``CIFAR10`` (its own download)                                    3 x 32 x 32
``stl10``          torchvision ``STL10``; splits train (5k labelled), test, unlabeled (100k)     3 x 96 x 96
``imagefolder``    a user's folder of images (class sub-folders, or flat = unlabelled); the only  C x 32 x 32
                   one that can stream (ImageNet layout: ``root/train/<class>``, ``root/val/<class>``)
``digits``         scikit-learn's bundled 8x8 digits, upsampled; fixed 1,500 / 297 split      1 x 28 x 28
``synthetic``      generated grey images with 10 known clusters (tests, demos)                 1 x 28 x 28
=================  ==========================================================================  ===========

Modules: ``base`` (the container, errors, subset / resize), ``idx`` (MNIST-style IDX files and their search
path), ``torchvision_sets`` (CIFAR-10, STL-10), ``imagefolder`` (listing and decoding files), ``streaming``
(the streamed folder and the in-memory / streaming choice), ``generated`` (digits, synthetic),
``transforms`` (crops and resizes on uint8 tensors).

torchvision is imported lazily, only by the steps that need it (cifar10, stl10, downloads; image decoding
falls back to PIL), so the IDX, imagefolder, digits and synthetic paths work without it.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from bayes_dc.data.base import (CorruptDataError, DatasetNotFoundError, ImageDataset, ImageSource, SearchPaths, UnreadableImagesError, _check_image_size, resize_images)
from bayes_dc.data.generated import _load_digits, _load_synthetic
from bayes_dc.data.idx import FASHION_MNIST, MNIST, IdxSpec, download_idx, load_idx, read_idx
from bayes_dc.data.imagefolder import (DEFAULT_IMAGE_SIZE, IMAGE_EXTENSIONS, decode_image_file, list_imagefolder, listing_in_memory, load_imagefolder, read_image)
from bayes_dc.data.streaming import (DEFAULT_MEMORY_BUDGET, STREAMING_CHOICES, StreamingImageFolder, check_streaming, in_memory_nbytes, use_streaming)

__all__ = [
    "ImageDataset",
    "ImageSource",
    "StreamingImageFolder",
    "load_dataset",
    "DATASETS",
    "SPLITS",
    "STREAMABLE",
    "STREAMING_CHOICES",
    "DEFAULT_MEMORY_BUDGET",
    "DatasetNotFoundError",
    "UnreadableImagesError",
    "CorruptDataError",
    "read_idx",
    "read_image",
    "decode_image_file",
    "resize_images",
    "in_memory_nbytes",
    "use_streaming",
    "SYSTEM_DATA_DIRS",
    "DATA_ENV_VAR",
    "CACHE_DIR",
    "IMAGE_EXTENSIONS",
]

# Search locations. Module-level so tests (and unusual installs) can monkeypatch them: every load reads
# them anew (``_search_paths``), and so is ``download_idx``.
DATA_ENV_VAR = "BAYES_DC_DATA"
SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)
CACHE_DIR = Path(os.path.expanduser("~/.cache/bayes_dc"))   # torchvision downloads land here when root is None


def _search_paths() -> SearchPaths:
    return SearchPaths(DATA_ENV_VAR, tuple(SYSTEM_DATA_DIRS), Path(CACHE_DIR))


def _idx_loader(spec: IdxSpec, split: str, **kwargs) -> ImageDataset:
    # download_idx is looked up here, at call time, so that patching bayes_dc.data.download_idx works.
    return load_idx(spec, split, paths=_search_paths(), download_fn=download_idx, **kwargs)


def _torchvision_loader(name: str, split: str, **kwargs) -> ImageDataset:
    from bayes_dc.data.torchvision_sets import load_torchvision_set

    return load_torchvision_set(name, split, paths=_search_paths(), **kwargs)


# Every loader: (split, *, root, subset, seed, image_size, download) -> ImageDataset (in memory).
DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "fashion-mnist": partial(_idx_loader, FASHION_MNIST),
    "mnist": partial(_idx_loader, MNIST),
    "cifar10": partial(_torchvision_loader, "cifar10"),
    "stl10": partial(_torchvision_loader, "stl10"),
    "imagefolder": load_imagefolder,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}

SPLITS: dict[str, tuple[str, ...]] = {name: ("train", "test") for name in DATASETS}
SPLITS["stl10"] = ("train", "test", "unlabeled")

STREAMABLE = ("imagefolder",)   # datasets read file by file, which can therefore be streamed


def load_dataset(name: str, split: str = "train", *, root: str | None = None, subset: int | None = None,
                 seed: int = 0, image_size: int | None = None, download: bool = True, streaming: str = "auto",
                 memory_budget: int | None = None, num_workers: int = 0,
                 progress: bool = True) -> ImageDataset | StreamingImageFolder:
    """Load a registered dataset into memory, or open it for streaming when it is too large.

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
        streaming: ``"auto"`` (stream an image folder whose uint8 size, N x 3 x S x S bytes, exceeds
            ``memory_budget``), ``"always"`` or ``"never"``. Only ``STREAMABLE`` datasets can stream; the
            others are always in memory (``"always"`` is an error for them).
        memory_budget: bytes for ``"auto"``; None = ``DEFAULT_MEMORY_BUDGET`` (8 GiB).
        num_workers: DataLoader worker processes that decode image files (imagefolder, both paths).
        progress: a progress bar while a large image folder is decoded into memory (``--no-progress``: none).

    Returns:
        ImageDataset with ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64 or None; or a
        StreamingImageFolder with the same interface minus ``images``.

    Raises:
        ValueError: unknown name, split or streaming choice (the message lists the choices), bad subset /
            image_size / memory_budget, or streaming="always" for a dataset that cannot stream.
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
    check_streaming(streaming, memory_budget)
    if key not in STREAMABLE:
        if streaming == "always":
            raise ValueError(f"dataset {key!r} cannot stream (--streaming always): only {', '.join(STREAMABLE)} "
                             f"reads files one by one; {key!r} is small enough to load, use --streaming auto")
        return DATASETS[key](split, root=root, subset=subset, seed=seed, image_size=image_size, download=download)
    listing = list_imagefolder(split, root, subset, seed)
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if use_streaming(streaming, in_memory_nbytes(len(listing), size), memory_budget):
        return StreamingImageFolder(listing, image_size=size, num_workers=num_workers)
    return listing_in_memory(listing, size, num_workers, progress)
