"""Batched, no-grad feature extraction and the uint8 -> normalised float conversion shared with training.

Two destinations: :func:`extract_features` returns one ``(N, F)`` tensor (small N), and
:func:`extract_features_to_memmap` writes the rows into a ``.npy`` file on the host and returns it
memory-mapped, so that N x F features (1.28M x 4096 float32 = 21 GB for ImageNet) never sit in RAM at once.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

MEMMAP_DTYPES = ("float32", "float16")


def normalize(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32 standardised per channel with ``mean``/``std`` of shape (C,)."""
    x = images_uint8.float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1).to(x.device)) / std.view(1, -1, 1, 1).to(x.device)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Batch-norm running statistics, no dropout; the previous mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _batch_features(trunk: nn.Module, batches: Iterable[torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
                    device: torch.device) -> Iterator[torch.Tensor]:
    """(B, F) float32 features on ``device`` of each uint8 (B, C, H, W) batch, in eval mode, without grad."""
    with torch.no_grad(), _eval_mode(trunk):
        for batch in batches:
            yield trunk(normalize(batch.to(device, non_blocking=True), mean, std)).float()


def extract_features(trunk: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *,
                     batch_size: int = 1024, device: torch.device | str = "cpu", progress: bool = False,
                     desc: str = "features") -> torch.Tensor:
    """Trunk features of every image, in order.

    Args:
        images: (N, C, H, W) uint8, on any device (moved batch by batch).
    Returns:
        (N, F) float32 on ``device``.
    The trunk is put in eval mode (batch-norm running statistics, no dropout) and restored afterwards.
    """
    starts = tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False, unit="batch")
    return torch.cat(list(_batch_features(trunk, (images[s:s + batch_size] for s in starts), mean, std,
                                          torch.device(device))))


def extract_features_to_memmap(trunk: nn.Module, batches: Iterable[torch.Tensor], n: int, dim: int,
                               path: str | Path, mean: torch.Tensor, std: torch.Tensor, *,
                               dtype: str | np.dtype = "float32", device: torch.device | str = "cpu",
                               progress: bool = False, desc: str = "features") -> np.memmap:
    """Trunk features of ``n`` images, written row block by row block to the ``.npy`` file ``path``.

    Args:
        batches: uint8 (B, C, H, W) batches of the N images in order, e.g. ``dataset.eval_batches(1024)``.
        n, dim: the rows N and feature width F the file is made for; a mismatch raises and deletes the
            incomplete file.
        dtype: ``"float32"`` (exact) or ``"float16"`` (half the disk and page cache; rounding ~5e-4 relative).
    Returns:
        The file memory-mapped copy-on-write, ``(N, F)`` of ``dtype``: ``torch.from_numpy`` of it is a tensor
        (no copy) that ``preprocess.Whitener`` can fit and transform chunk by chunk. Reopen later with
        ``np.load(path, mmap_mode="r")``.

    Rows go to the file with ``os.pwrite`` rather than through a writable mapping: dirty pages of a
    mapping count in the process's RSS until they are unmapped, pages written with ``pwrite`` only in
    the kernel's page cache. Resident memory is thus one batch, whatever N.
    """
    dtype = np.dtype(dtype)
    if dtype.name not in MEMMAP_DTYPES:
        raise ValueError(f"dtype must be one of {MEMMAP_DTYPES} for a feature memmap, got {dtype.name!r}")
    if n < 1 or dim < 1:
        raise ValueError(f"n (rows) and dim (feature width) must be >= 1, got n={n}, dim={dim}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n, dim)}
    row_bytes = dim * dtype.itemsize
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        offset = f.tell()
        f.truncate(offset + n * row_bytes)   # sparse until written: no zero-filling pass over the disk
    fd = os.open(path, os.O_WRONLY)
    written = 0
    try:
        bar = tqdm(total=n, desc=desc, disable=not progress, leave=False, unit="img")
        for feats in _batch_features(trunk, batches, mean, std, torch.device(device)):
            if feats.ndim != 2 or feats.shape[1] != dim:
                raise ValueError(f"trunk gives features of shape {tuple(feats.shape[1:])}, expected ({dim},): pass "
                                 f"dim = the trunk's feature_dim")
            if written + feats.shape[0] > n:
                raise ValueError(f"batches hold more than n={n} images; pass n = the number of images")
            block = memoryview(np.ascontiguousarray(feats.cpu().numpy().astype(dtype, copy=False))).cast("B")
            position = offset + written * row_bytes
            while block:   # pwrite may write less than asked (signals, > 2 GiB)
                done = os.pwrite(fd, block, position)
                block, position = block[done:], position + done
            written += feats.shape[0]
            bar.update(feats.shape[0])
        bar.close()
        if written != n:
            raise ValueError(f"batches held {written} images but n={n}; pass n = the number of images")
    except BaseException:
        path.unlink(missing_ok=True)   # an incomplete feature file must not be mistaken for a complete one
        raise
    finally:
        os.close(fd)
    return np.load(path, mmap_mode="c")


__all__ = ["normalize", "extract_features", "extract_features_to_memmap", "MEMMAP_DTYPES"]
