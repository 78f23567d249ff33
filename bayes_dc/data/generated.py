"""Generated datasets: scikit-learn's bundled 8x8 digits, and synthetic grey images with known clusters."""
from __future__ import annotations

import numpy as np
import torch

from bayes_dc.data.base import _CHUNK, ImageDataset, _finish

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
