"""Batched image augmentations on tensors (CPU or GPU), seeded from a CPU generator.

DeepCluster (Caron et al. 2018) trains with a random crop and a horizontal flip; DeepCluster-v2 and SwAV
(Caron et al. 2020) with random *resized* crops of a scale range, flips, colour jitter and random grayscale.
Both are here as one :class:`Augmenter` per run (``--augment``):

- ``none``: the images as they are.
- ``crop-flip``: zero-pad by ``crop_padding`` and crop back to the input size at a random offset, then flip
  (DeepCluster's recipe for small images).
- ``resized-crop``: a random crop covering a share of the image area drawn from ``crop_scale`` with aspect ratio
  in [3/4, 4/3], resized back to the input size (bilinear), then flip; for colour images also colour jitter
  (brightness / contrast / saturation 0.4, with probability 0.8) and grayscale (probability 0.2) as SwAV's
  ``get_color_distortion``. Hue jitter is left out (it needs an RGB <-> HSV round trip per pixel).

Every random number is drawn on the CPU from the generator passed in and then moved to the images' device, so
CPU and GPU runs see the same augmentations for the same seed, and a resumed run repeats the uninterrupted one.
Input: (B, C, H, W) uint8; output: (B, C, H, W) float32 in [0, 1] (``features.normalize`` is applied after).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

AUGMENTATIONS = ("none", "crop-flip", "resized-crop")
# SwAV's colour distortion strength s = 1: jitter 0.8 s for brightness / contrast / saturation, applied with p = 0.8.
JITTER_STRENGTH, JITTER_PROB, GRAYSCALE_PROB = 0.4, 0.8, 0.2
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def standardize(images01: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] -> standardised per channel with ``mean`` / ``std`` (C,) (the trunk's input)."""
    return (images01 - mean.view(1, -1, 1, 1).to(images01.device)) / std.view(1, -1, 1, 1).to(images01.device)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _rows(b: int, share: tuple[int, int] | None) -> tuple[int, slice]:
    """(how many images to draw random numbers for, which of them are this batch's).

    ``share = (offset, total)``: the batch is rows ``offset .. offset + b`` of a global batch of ``total`` images
    split over processes (``bayes_dc.runtime.distributed``); drawing for all ``total`` and keeping the batch's rows gives
    every image the numbers it gets when one process augments the whole batch.
    """
    if share is None:
        return b, slice(0, b)
    offset, total = share
    return total, slice(offset, offset + b)


def crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator,
              share: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding by ``padding``, and a horizontal flip with probability 1/2.

    (B, C, H, W) any dtype -> same shape and dtype, on the input's device. ``share``: see :func:`_rows`.
    """
    b, c, h, w = images.shape
    device = images.device
    n, mine = _rows(b, share)
    if padding > 0:
        padded = nn.functional.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)[mine].to(device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)[mine].to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # (B, 1, 1, W)
        batch_idx = torch.arange(b, device=device)[:, None, None, None]
        chan_idx = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch_idx, chan_idx, rows, cols]
    flip = (torch.rand(n, generator=generator)[mine] < 0.5).to(device)[:, None, None, None]
    return torch.where(flip, images.flip(-1), images)


def resized_crop_boxes(n: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Crop boxes (n, 4) float64 as (centre x, centre y, width, height) in units of the image side.

    The area share is uniform in ``scale`` and the log aspect ratio uniform in [log 3/4, log 4/3] (as
    torchvision's RandomResizedCrop); sides are clipped to the image, centres uniform where the box fits.
    """
    area = _uniform(n, scale[0], scale[1], generator)
    ratio = torch.exp(_uniform(n, *LOG_RATIO, generator))
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = width / 2 + (1 - width) * torch.rand(n, generator=generator, dtype=torch.float64)
    cy = height / 2 + (1 - height) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.stack([cx, cy, width, height], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop ``boxes`` (B, 4) (see :func:`resized_crop_boxes`) out of float images (B, C, H, W) and resize each
    back to H x W with bilinear sampling; ``flip`` (B,) bool mirrors the crop horizontally. One batched
    ``grid_sample`` for the whole batch."""
    b = images.shape[0]
    boxes = boxes.to(images.device, torch.float32)
    sign = 1.0 - 2.0 * flip.to(images.device, torch.float32)                        # -1 mirrors x
    theta = torch.zeros(b, 2, 3, device=images.device)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates: x_in = w * x_out + (2 cx - 1)
    theta[:, 0, 0] = boxes[:, 2] * sign
    theta[:, 0, 2] = 2 * boxes[:, 0] - 1
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 1, 2] = 2 * boxes[:, 1] - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_distortion(images: torch.Tensor, generator: torch.Generator,
                     share: tuple[int, int] | None = None) -> torch.Tensor:
    """SwAV-style colour distortion of float RGB images (B, 3, H, W) in [0, 1]: with probability 0.8 scale
    brightness, contrast (around the image's mean grey) and saturation (around the pixel's grey) by factors
    uniform in [0.6, 1.4] each, in that fixed order; then with probability 0.2 convert to grey. Output in [0, 1].
    ``share``: see :func:`_rows`."""
    n, mine = _rows(images.shape[0], share)
    device = images.device
    jitter = (torch.rand(n, generator=generator)[mine] < JITTER_PROB).to(device)[:, None, None, None]
    brightness, contrast, saturation = (
        _uniform(n, 1 - JITTER_STRENGTH, 1 + JITTER_STRENGTH, generator)[mine].float().to(device)[:, None, None, None]
        for _ in range(3))
    to_grey = (torch.rand(n, generator=generator)[mine] < GRAYSCALE_PROB).to(device)[:, None, None, None]
    weights = torch.tensor([0.299, 0.587, 0.114], device=device)[None, :, None, None]   # ITU-R 601 luma
    x = (images * brightness).clamp(0, 1)
    grey_mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - grey_mean) * contrast + grey_mean).clamp(0, 1)
    grey = (x * weights).sum(1, keepdim=True)
    x = ((x - grey) * saturation + grey).clamp(0, 1)
    x = torch.where(jitter, x, images)              # SwAV: the whole jitter is applied with probability 0.8
    grey = (x * weights).sum(1, keepdim=True).expand_as(x)
    return torch.where(to_grey, grey, x)


@dataclass
class Augmenter:
    """One augmentation policy (see the module docstring). ``__call__(images uint8 (B, C, H, W), generator)``
    returns float32 (B, C, H, W) in [0, 1] on the images' device."""

    kind: str = "crop-flip"
    padding: int = 4
    scale: tuple[float, float] = (0.3, 1.0)

    def __post_init__(self) -> None:
        if self.kind not in AUGMENTATIONS:
            raise ValueError(f"unknown --augment {self.kind!r}; choose one of {list(AUGMENTATIONS)}")
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"--crop-scale must satisfy 0 < min <= max <= 1 (shares of the image area), got "
                             f"{tuple(self.scale)}")
        if self.padding < 0:
            raise ValueError(f"--crop-padding must be >= 0, got {self.padding}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 share: tuple[int, int] | None = None) -> torch.Tensor:
        """``share = (offset, total)``: ``images`` are rows offset.. of a global batch of ``total`` split over
        processes; each image gets the augmentation it gets when one process augments the whole batch."""
        if self.kind == "crop-flip":
            images = crop_flip(images, self.padding, generator, share)
        x = images.float().div_(255.0)
        if self.kind != "resized-crop":
            return x
        n, mine = _rows(x.shape[0], share)
        boxes = resized_crop_boxes(n, self.scale, generator)[mine]
        flip = (torch.rand(n, generator=generator) < 0.5)[mine]
        x = resized_crop(x, boxes, flip)
        if x.shape[1] == 3:
            x = color_distortion(x, generator, share)
        return x


__all__ = ["AUGMENTATIONS", "Augmenter", "color_distortion", "crop_flip", "resized_crop", "resized_crop_boxes",
           "standardize"]
