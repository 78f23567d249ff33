"""Image transforms on uint8 tensors, shared by the in-memory and the streaming datasets.

All of them take and return uint8 tensors; resizing goes through float32 and rounds back. Randomness comes
only from a ``torch.Generator`` passed in, so the same generator state gives the same crops on any machine
and in any DataLoader worker.

The random-resized crop follows torchvision's ``RandomResizedCrop.get_params`` (the ImageNet recipe that
DeepCluster trains with): up to 10 tries at an area fraction in ``scale`` and a log-uniform aspect ratio in
``ratio``, else a centre crop with the ratio clamped into ``ratio``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# torchvision's RandomResizedCrop defaults, used by DeepCluster on ImageNet.
DEFAULT_CROP_SCALE = (0.08, 1.0)
DEFAULT_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_TRIES = 10


def resize_float_to_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, C, H, W)`` float in [0, 255] -> ``(n, C, size, size)`` uint8: bilinear, antialiased, rounded.

    Antialiasing matters when shrinking (e.g. 96 px to 32 px); without it bilinear aliases.
    """
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def centre_square(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred square of an ``height x width`` image, as (top, left, side, side)."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def crop_resize(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop ``box`` = (top, left, h, w) from a ``(C, H, W)`` uint8 image and resize it to ``(C, size, size)``."""
    top, left, h, w = box
    crop = image[:, top:top + h, left:left + w]
    if crop.shape[-2:] == (size, size):   # nothing to resample: skip the float round trip
        return crop.contiguous()
    return resize_float_to_uint8(crop.unsqueeze(0).float(), size)[0]


def centre_crop_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, H, W)`` uint8 -> ``(C, size, size)``: the centred square, resized (the evaluation transform)."""
    return crop_resize(image, centre_square(image.shape[-2], image.shape[-1]), size)


def sample_resized_crop(height: int, width: int, generator: torch.Generator,
                        scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                        ratio: tuple[float, float] = DEFAULT_CROP_RATIO) -> tuple[int, int, int, int]:
    """A random crop box (top, left, h, w) inside an ``height x width`` image (torchvision's algorithm).

    Area fraction ~ U(scale), aspect ratio w/h ~ log-U(ratio); the first of 10 draws that fits is used,
    else the whole image centre-cropped to the nearest ratio in ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_CROP_TRIES):
        u_area, u_ratio = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(image: torch.Tensor, size: int, generator: torch.Generator,
                             scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                             ratio: tuple[float, float] = DEFAULT_CROP_RATIO) -> torch.Tensor:
    """``(C, H, W)`` uint8 -> ``(C, size, size)``: random-resized crop, then a horizontal flip with p = 1/2."""
    out = crop_resize(image, sample_resized_crop(image.shape[-2], image.shape[-1], generator, scale, ratio), size)
    if bool(torch.rand(1, generator=generator) < 0.5):
        out = out.flip(-1)
    return out


def batch_seeds(generator: torch.Generator, n_batches: int) -> list[int]:
    """One 64-bit seed per batch, all derived from a single draw of ``generator``.

    Seeding per batch (not per DataLoader worker) is what makes the crops independent of the number of
    workers: batch b always gets the same seed, whichever process decodes it. One draw, whatever the
    number of batches, so the caller's generator advances the same way for any epoch length.
    """
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    return [int(np.random.SeedSequence([base, b]).generate_state(1, np.uint64)[0]) for b in range(n_batches)]


__all__ = ["DEFAULT_CROP_SCALE", "DEFAULT_CROP_RATIO", "resize_float_to_uint8", "centre_square", "crop_resize",
           "centre_crop_resize", "sample_resized_crop", "random_resized_crop_flip", "batch_seeds"]
