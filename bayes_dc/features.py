"""Batched, no-grad feature extraction and the uint8 -> normalised float conversion shared with training."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm


def normalize(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32 standardised per channel with ``mean``/``std`` of shape (C,)."""
    x = images_uint8.float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1).to(x.device)) / std.view(1, -1, 1, 1).to(x.device)


@torch.no_grad()
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
    device = torch.device(device)
    was_training = trunk.training
    trunk.eval()
    out = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False,
                      unit="batch"):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        out.append(trunk(normalize(batch, mean, std)).float())
    trunk.train(was_training)
    return torch.cat(out)
