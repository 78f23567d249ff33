"""Image folders larger than memory: decoded from disk batch by batch, and the in-memory / streaming choice.

:class:`StreamingImageFolder` offers the same interface as the in-memory ``ImageDataset``
(``base.ImageSource``) without ever holding more than a few batches of pixels: ``len``, ``labels``,
``num_channels``, ``image_size``, ``mean_std()``, ``eval_batches(batch_size)`` and
``train_batches(indices, batch_size, generator, augment)``. Files are decoded in ``num_workers`` DataLoader
worker processes, one whole batch per worker task, with the same decoder and transforms as the in-memory
loader (``imagefolder``), so both give the same pixels.

The choice (:func:`use_streaming`): ``"never"`` loads into memory, ``"always"`` streams, ``"auto"`` streams when
the split's uint8 size, counted as RGB (N x 3 x S x S bytes, an upper bound known without decoding
anything), exceeds ``memory_budget`` (default :data:`DEFAULT_MEMORY_BUDGET`, 8 GiB: fixed rather than a share
of this machine's RAM, so the same command makes the same choice, and the same results, everywhere).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from bayes_dc.data.base import DatasetNotFoundError, _CHUNK, channel_moments, check_batch_size, check_indices
from bayes_dc.data.imagefolder import (DecodedBatches, FolderListing, folder_channels, iterate_decoded, unreadable_error)
from bayes_dc.data.transforms import DEFAULT_CROP_RATIO, DEFAULT_CROP_SCALE, batch_seeds

STREAMING_CHOICES = ("auto", "always", "never")
DEFAULT_MEMORY_BUDGET = 8 * 2**30   # bytes of uint8 pixels above which "auto" streams
STATS_SAMPLE = 2000                 # images decoded to estimate mean/std and the channel count
STATS_SEED = 0                      # fixed, not the run seed: normalisation must not change with the seed
_STATS_BATCH = 256


def in_memory_nbytes(n_images: int, image_size: int, channels: int = 3) -> int:
    """Bytes of a ``(N, C, S, S)`` uint8 tensor."""
    return int(n_images) * int(channels) * int(image_size) ** 2


def check_streaming(streaming: str, memory_budget: int | None) -> None:
    if streaming not in STREAMING_CHOICES:
        raise ValueError(f"unknown streaming={streaming!r} (--streaming); choose one of: {', '.join(STREAMING_CHOICES)}")
    if memory_budget is not None and (not isinstance(memory_budget, (int, np.integer)) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes or None (default "
                         f"{DEFAULT_MEMORY_BUDGET}), got {memory_budget!r}")


def use_streaming(streaming: str, nbytes: int, memory_budget: int | None = None) -> bool:
    """Whether to stream a split whose in-memory uint8 size is ``nbytes`` (see the module docstring)."""
    check_streaming(streaming, memory_budget)
    if streaming != "auto":
        return streaming == "always"
    return nbytes > (DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)


class StreamingImageFolder:
    """An image folder read from disk batch by batch (see the module docstring).

    Args:
        listing: the split's files and labels (``imagefolder.list_imagefolder``).
        image_size: side S of every output image.
        channels: 1 or 3; None infers it from the headers of the statistics sample: 1 when every sampled image
            is grey, else 3. A folder with rare colour images that the sample misses is then read as grey
            (torchvision's grey conversion); pass ``channels=3`` to be sure.
        num_workers: DataLoader worker processes decoding batches (0: in this process).
        pin_memory: page-lock batches (set it when they go on to a CUDA device).
        stats_sample: images in the seeded sample (``STATS_SEED``) used by :meth:`mean_std` and for
            ``channels=None``; all of them when the folder has no more.
        crop_scale, crop_ratio: random-resized-crop parameters for ``train_batches(augment=True)``.

    Attributes: ``name`` ("imagefolder"), ``labels`` ((N,) int64 or None), ``classes``, ``source`` (the folder).
    """

    def __init__(self, listing: FolderListing, *, image_size: int, channels: int | None = None,
                 num_workers: int = 0, pin_memory: bool = False, stats_sample: int = STATS_SAMPLE,
                 crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                 crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO, name: str = "imagefolder"):
        if not len(listing):
            raise DatasetNotFoundError(f"{name}: no images under {listing.directory}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None (infer), got {channels!r}")
        if not isinstance(stats_sample, (int, np.integer)) or stats_sample < 1:
            raise ValueError(f"stats_sample must be a positive number of images, got {stats_sample!r}")
        self.listing = listing
        self.name, self.labels, self.classes = name, listing.labels, listing.classes
        self.source = str(listing.directory)
        self._size, self.num_workers, self.pin_memory = int(image_size), num_workers, pin_memory
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        n = len(listing)
        sample = np.random.default_rng(STATS_SEED).permutation(n)[:stats_sample] if stats_sample < n else np.arange(n)
        self._stats_positions = np.sort(sample)   # sorted: reads the files in directory order
        self._channels = folder_channels(listing, self._stats_positions) if channels is None else channels
        self._mean_std: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.listing)

    def __repr__(self) -> str:
        return (f"StreamingImageFolder({self.source!r}, N={len(self)}, C={self._channels}, S={self._size}, "
                f"num_workers={self.num_workers})")

    @property
    def num_channels(self) -> int:
        return self._channels

    @property
    def image_size(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes the split would take in memory as uint8 (what it does not take here)."""
        return in_memory_nbytes(len(self), self._size, self._channels)

    @property
    def images(self) -> torch.Tensor:
        raise AttributeError(
            f"{self!r} holds no in-memory images tensor (it would take {self.nbytes / 2**30:.1f} GiB); iterate "
            f"eval_batches(batch_size) / train_batches(indices, batch_size, generator, augment), or load it "
            f"with streaming='never' (--streaming never) if it fits in memory")

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of ``images / 255``, each ``(C,)`` float32, over the statistics sample.

        Estimated from ``stats_sample`` images (2,000 by default: the standard error of a channel mean is
        then about 1e-3 of its std for independent images), evaluation view, seeded with ``STATS_SEED``; exact
        (equal to ``ImageDataset.mean_std``) when the folder has no more images than that. Computed once.
        """
        if self._mean_std is None:
            self._mean_std = channel_moments(self._batches(self._stats_positions, _STATS_BATCH, None),
                                             self._channels)
        return self._mean_std

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """All images in order, evaluation view (centred square, resized), ``(B, C, S, S)`` uint8 on the CPU."""
        check_batch_size(batch_size)
        return self._batches(np.arange(len(self)), batch_size, None)

    def train_batches(self, indices: torch.Tensor | np.ndarray, batch_size: int, generator: torch.Generator,
                      augment: bool = False) -> Iterator[torch.Tensor]:
        """Images ``indices[b * batch_size:(b + 1) * batch_size]`` for b = 0, 1, ..., ``(B, C, S, S)`` uint8.

        ``augment``: random-resized crop of the decoded original (``crop_scale``, ``crop_ratio``) to S x S and a
        flip with p = 1/2, from per-batch seeds drawn from ``generator`` (one draw), so the crops depend on
        the generator only, not on ``num_workers``. Without, the evaluation view.
        """
        check_batch_size(batch_size)
        idx = check_indices(indices, len(self))
        seeds = batch_seeds(generator, -(-len(idx) // batch_size)) if augment else None
        return self._batches(idx, batch_size, seeds)

    def find_unreadable(self, batch_size: int = _CHUNK) -> list[str]:
        """Decode every file once and return the paths that fail (the batch iterators stop at the first)."""
        decoded = DecodedBatches(self.listing, np.arange(len(self)), batch_size, self._size, self._channels)
        return [path for _, bad in iterate_decoded(decoded, self.num_workers, progress="checking") for path, _ in bad]

    def _batches(self, order: np.ndarray, batch_size: int, seeds: list[int] | None) -> Iterator[torch.Tensor]:
        decoded = DecodedBatches(self.listing, order, batch_size, self._size, self._channels, seeds,
                                 self.crop_scale, self.crop_ratio)
        for batch, failures in iterate_decoded(decoded, self.num_workers, self.pin_memory):
            if failures:   # never hand on a batch with blank images: it would train and cluster silently on them
                raise unreadable_error(failures, len(order), self.listing.directory,
                                       note=" This batch's failures only; find_unreadable() lists them all.")
            yield batch


__all__ = ["StreamingImageFolder", "STREAMING_CHOICES", "DEFAULT_MEMORY_BUDGET", "STATS_SAMPLE", "in_memory_nbytes",
           "use_streaming", "check_streaming"]
