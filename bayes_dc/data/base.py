"""The dataset container, its errors, and the subset / resize helpers every loader shares.

Two kinds of dataset offer the same small interface (:class:`ImageSource`), so the pipeline can use either:

* :class:`ImageDataset`: every image in memory as one ``(N, C, S, S)`` uint8 tensor (the default for the
  small sets this project trains on; Fashion-MNIST train is 47 MB);
* ``bayes_dc.data.streaming.StreamingImageFolder``: images decoded from disk batch by batch, through a
  DataLoader with workers, for folders larger than memory (ImageNet).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from bayes_dc.data.transforms import (DEFAULT_CROP_RATIO, DEFAULT_CROP_SCALE, batch_seeds, random_resized_crop_flip, resize_float_to_uint8)

_CHUNK = 4096  # images per chunk for float work (mean/std, resizing): bounds peak memory

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
# The common interface
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class ImageSource(Protocol):
    """What the pipeline needs from a dataset, in memory or streamed.

    ``eval_batches`` gives every image once, in order, with the evaluation transform (for feature
    extraction); ``train_batches`` gives the images of ``indices`` in that order, ``batch_size`` at a time
    (the last batch may be smaller), optionally augmented (random-resized crop + flip) with randomness taken
    from ``generator`` only. Both yield ``(B, C, S, S)`` uint8 tensors; normalisation is the caller's
    (``bayes_dc.models.features.normalize``).
    """

    name: str
    labels: np.ndarray | None
    classes: list[str] | None

    def __len__(self) -> int: ...

    @property
    def num_channels(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...

    def train_batches(self, indices: torch.Tensor | np.ndarray, batch_size: int, generator: torch.Generator,
                      augment: bool = False) -> Iterator[torch.Tensor]: ...


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def check_indices(indices: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    """``(S,)`` integer indices into a dataset of ``n`` images, as int64 numpy; a clear error otherwise."""
    idx = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D integer array of image positions, got dtype {idx.dtype} "
                         f"shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"indices must lie in 0..{n - 1} (the dataset has {n} images), got "
                         f"{idx.min()}..{idx.max()}")
    return idx.astype(np.int64, copy=False)


def channel_moments(batches: Iterable[torch.Tensor], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std (ddof=0) of ``images / 255`` over uint8 ``(n, C, H, W)`` batches.

    Returns two ``(C,)`` float32 tensors. Accumulated in float64 so neither a float copy of the data nor
    float32 round-off is needed, however many images there are.
    """
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for batch in batches:
        x = batch.to("cpu", torch.float64) / 255.0                          # (n, C, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    count = max(count, 1)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)   # clamp: round-off can go a hair below 0
    return mean.float(), var.sqrt().float()


# --------------------------------------------------------------------------------------------------
# The in-memory dataset
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

        Population std (ddof=0), over all images and pixels (see :func:`channel_moments`).
        """
        return channel_moments(self.eval_batches(_CHUNK), self.num_channels)

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """All images in order, ``(B, C, S, S)`` uint8 views of ``images`` (on its device)."""
        check_batch_size(batch_size)   # here, not inside a generator: a bad value fails at the call
        return (self.images[start:start + batch_size] for start in range(0, len(self), batch_size))

    def train_batches(self, indices: torch.Tensor | np.ndarray, batch_size: int, generator: torch.Generator,
                      augment: bool = False, *, crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                      crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO) -> Iterator[torch.Tensor]:
        """Images ``indices[b * batch_size:(b + 1) * batch_size]`` for b = 0, 1, ..., as ``(B, C, S, S)`` uint8.

        ``augment``: each image gets a random-resized crop back to S x S and a flip with p = 1/2, drawn from a
        per-batch seed (see ``transforms.batch_seeds``), exactly as the streaming dataset does, so a folder
        of S x S images gives the same batches either way. It runs image by image on the images' device;
        the pipeline's on-device pad-crop + flip for small images (``train.random_crop_flip``) stays the
        cheaper choice when images already live on a GPU.
        """
        check_batch_size(batch_size)
        idx = torch.from_numpy(check_indices(indices, len(self)))
        n_batches = -(-len(idx) // batch_size)
        seeds = batch_seeds(generator, n_batches) if augment else None
        for b in range(n_batches):
            batch = self.images[idx[b * batch_size:(b + 1) * batch_size].to(self.images.device)]
            if seeds is not None:
                gen = torch.Generator().manual_seed(seeds[b])
                batch = torch.stack([random_resized_crop_flip(image, self.image_size, gen, crop_scale, crop_ratio)
                                     for image in batch])
            yield batch


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

    Non-square inputs are stretched; loaders that can see the originals centre-crop first.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), _CHUNK):
        out[start:start + _CHUNK] = resize_float_to_uint8(images[start:start + _CHUNK].float(), size)
    return out


def _finish(ds: ImageDataset, subset: int | None, seed: int, image_size: int | None) -> ImageDataset:
    """Subset first (so only the kept images are resized), then resize."""
    ds = _apply_subset(ds, subset, seed)
    if image_size is not None:
        ds.images = resize_images(ds.images, image_size)
    return ds


# --------------------------------------------------------------------------------------------------
# Where loaders look for data on disk
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPaths:
    """Places searched for a dataset after ``root``: the environment variable, system dirs, download cache.

    ``bayes_dc.data.load_dataset`` builds one from its module-level ``DATA_ENV_VAR``, ``SYSTEM_DATA_DIRS``
    and ``CACHE_DIR`` at every call, so monkeypatching those (tests, unusual installs) takes effect.
    """

    env_var: str
    system_dirs: tuple[str, ...]
    cache_dir: Path

    def env_dirs(self) -> list[Path]:
        value = os.environ.get(self.env_var, "")
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
