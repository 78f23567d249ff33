"""Optional TensorBoard logging (``--tensorboard``): scalars per epoch and image grids of the largest clusters.

Logs go to ``<run dir>/tensorboard``; view with ``tensorboard --logdir runs``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SCALARS = ("nmi", "ari", "acc", "purity", "nmi_prev", "k_active", "k_used", "k_eff", "objective", "n_iter", "loss",
           "agreement", "knn", "cluster_seconds", "epoch_seconds", "cluster_share")


def cluster_grid(images: torch.Tensor, labels: np.ndarray, weights: np.ndarray, n_clusters: int = 8,
                 per_cluster: int = 8, seed: int = 0) -> torch.Tensor:
    """One row per largest cluster (by weight), ``per_cluster`` random members each.

    images: (N, C, H, W) uint8; returns a (C', H', W') uint8 grid (torchvision.utils.make_grid layout).
    Rows of clusters with fewer members are padded with blank tiles.
    """
    from torchvision.utils import make_grid

    rng = np.random.default_rng(seed)
    tiles = []
    blank = torch.zeros_like(images[0])
    for k in np.argsort(weights)[::-1][:n_clusters]:
        members = np.flatnonzero(labels == k)
        pick = rng.choice(members, size=min(per_cluster, members.size), replace=False) if members.size else []
        row = [images[i].cpu() for i in pick] + [blank.cpu()] * (per_cluster - len(pick))
        tiles += row
    return make_grid(torch.stack(tiles), nrow=per_cluster, padding=2, pad_value=255)


class TensorBoardLogger:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is an optional dependency
            raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log_record(self, record: dict) -> None:
        for key in SCALARS:
            value = record.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"round/{key}", value, record["epoch"])
        self.writer.flush()

    def log_clusters(self, epoch: int, images: torch.Tensor, labels: np.ndarray, weights: np.ndarray) -> None:
        self.writer.add_image("clusters/largest", cluster_grid(images, labels, weights, seed=epoch), epoch)

    def close(self) -> None:
        self.writer.close()
