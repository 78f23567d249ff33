"""Where a run's images come from, batch by batch: one uint8 tensor on the device, or decoded from disk.

:class:`BatchSource` is what the round loop reads (``pipeline``, ``train``), for the two kinds of dataset
(``bayes_dc.data.ImageSource``):

* in memory (``ImageDataset``): the whole ``(N, C, S, S)`` uint8 tensor is moved to the device once and
  indexed there, exactly as the loop always did (same batches, same features, bit for bit);
* streamed (``StreamingImageFolder``): batches are decoded by the dataset's DataLoader workers and moved to the
  device as they come; features go to a ``.npy`` file on disk (``features.extract_features_to_memmap``) and
  come back memory-mapped, so neither the images nor the N x F features need to fit in memory.

Either way a training batch is the *evaluation view* of its images (no dataset-side augmentation): the run's
``Augmenter`` then crops and flips it on the device from the epoch's generator, so a folder trains the same
whether it is streamed or loaded (same draws, same pixels).

Both take an optional row range (``rows``): the shard of the images one process of a multi-process run extracts
(``bayes_dc.runtime.distributed``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from bayes_dc.data import ImageDataset, StreamingImageFolder
from bayes_dc.models.features import extract_features, extract_features_to_memmap


class BatchSource:
    """The images of one split as the loop reads them (see the module docstring).

    Args:
        dataset: an ``ImageDataset`` (in memory) or a ``StreamingImageFolder``.
        device: where batches go (and, in memory, where the whole image tensor lives).
        scratch: folder for the on-disk features of a streamed set (created on first use).
        memmap_dtype: ``"float32"`` or ``"float16"`` for those features.
        tag: file-name prefix of those features (split, rank), so several sources can share ``scratch``.
    """

    def __init__(self, dataset: ImageDataset | StreamingImageFolder, device: torch.device, *,
                 scratch: Path | None = None, memmap_dtype: str = "float32", tag: str = "train"):
        self.dataset, self.device = dataset, device
        self.streamed = isinstance(dataset, StreamingImageFolder)
        self.scratch, self.memmap_dtype, self.tag = scratch, memmap_dtype, tag
        # The in-memory path keeps its images on the device, as before streaming existed.
        self.images = None if self.streamed else dataset.images.to(device)
        if self.streamed and device.type == "cuda":
            dataset.pin_memory = True   # page-locked batches: the copy to the GPU overlaps the next batch's decoding

    def __len__(self) -> int:
        return len(self.dataset)

    def train_batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(idx, images)`` for consecutive chunks ``idx = indices[b * batch_size:(b + 1) * batch_size]`` (the last
        may be shorter): ``images`` (len(idx), C, S, S) uint8 on the device, the evaluation view."""
        chunks = indices.split(batch_size)
        if not self.streamed:
            for idx in chunks:
                yield idx, self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
            return
        # The generator is unused without dataset-side augmentation; the run's Augmenter draws from its own.
        decoded = self.dataset.train_batches(indices, batch_size, torch.Generator(), augment=False)
        for idx, batch in zip(chunks, decoded):
            yield idx, batch.to(self.device, non_blocking=True)

    def features(self, trunk: nn.Module, mean: torch.Tensor, std: torch.Tensor, *, batch_size: int,
                 rows: tuple[int, int] | None = None, progress: bool = False, desc: str = "extract") -> torch.Tensor:
        """Trunk features (n, F) float32 of images ``rows = (start, stop)`` (default: all), in order.

        In memory: one tensor on the device. Streamed: a tensor over the memory-mapped file
        ``scratch/<tag>_features.npy`` (rewritten at every call), on the CPU; float16 files are widened chunk by
        chunk by the consumers that need float32 (``preprocess.Whitener`` does).
        """
        start, stop = rows if rows is not None else (0, len(self))
        if not self.streamed:
            return extract_features(trunk, self.images[start:stop], mean, std, batch_size=batch_size,
                                    device=self.device, progress=progress, desc=desc)
        if self.scratch is None:
            raise ValueError("a streamed dataset needs a scratch folder for its features (--scratch-dir)")
        order = np.arange(start, stop)
        batches = self.dataset.train_batches(order, batch_size, torch.Generator(), augment=False)
        path = self.feature_path
        feats = extract_features_to_memmap(trunk, batches, stop - start, _feature_dim(trunk), path, mean, std,
                                           dtype=self.memmap_dtype, device=self.device, progress=progress,
                                           desc=desc)
        return torch.from_numpy(feats)


    @property
    def feature_path(self) -> Path | None:
        """The file a streamed source writes its features to (None in memory)."""
        return Path(self.scratch) / f"{self.tag}_features.npy" if self.streamed and self.scratch else None

    def remove_features(self) -> None:
        """Delete the on-disk features (N x F floats: 21 GB for ImageNet at F = 4,096); a mapping still open keeps
        its pages until it is dropped."""
        if self.feature_path is not None:
            self.feature_path.unlink(missing_ok=True)


def _feature_dim(trunk: nn.Module) -> int:
    dim = getattr(trunk, "feature_dim", None)
    if dim is None:
        raise ValueError(f"{type(trunk).__name__} has no feature_dim: streamed feature extraction needs the trunk's "
                         f"output width to size the file")
    return int(dim)


__all__ = ["BatchSource"]
