"""Optional TensorBoard logging (``--tensorboard``): scalars per epoch and image grids of the largest clusters.

Logs go to ``<run dir>/tensorboard``; view with ``tensorboard --logdir runs``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bayes_dc.data import ImageSource

SCALARS = ("nmi", "ari", "acc", "purity", "nmi_prev", "k_active", "k_used", "k_eff", "objective", "n_iter", "loss",
           "agreement", "knn", "cluster_seconds", "epoch_seconds", "cluster_share")


def cluster_grid(images: torch.Tensor | ImageSource, labels: np.ndarray, weights: np.ndarray, n_clusters: int = 8,
                 per_cluster: int = 8, seed: int = 0) -> torch.Tensor:
    """One row per largest cluster (by weight), ``per_cluster`` random members each.

    images: (N, C, H, W) uint8, or a dataset (in memory or streamed: only the picked images are read, through
    its ``train_batches``); returns a (C', H', W') uint8 grid (torchvision.utils.make_grid layout).
    Rows of clusters with fewer members are padded with blank tiles.
    """
    from torchvision.utils import make_grid

    rng = np.random.default_rng(seed)
    picks = []
    for k in np.argsort(weights)[::-1][:n_clusters]:
        members = np.flatnonzero(labels == k)
        picks.append(rng.choice(members, size=min(per_cluster, members.size), replace=False) if members.size
                     else np.zeros(0, dtype=np.int64))
    chosen = np.concatenate(picks).astype(np.int64)
    if isinstance(images, torch.Tensor):
        read = images[torch.from_numpy(chosen).to(images.device)].cpu()
    else:
        read = next(iter(images.train_batches(chosen, max(len(chosen), 1), torch.Generator())), None)
    blank = torch.zeros_like(read[0]) if len(chosen) else None
    tiles, used = [], 0
    for pick in picks:
        tiles += [read[used + i] for i in range(len(pick))] + [blank] * (per_cluster - len(pick))
        used += len(pick)
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

    def log_clusters(self, epoch: int, images: torch.Tensor | ImageSource, labels: np.ndarray,
                     weights: np.ndarray) -> None:
        self.writer.add_image("clusters/largest", cluster_grid(images, labels, weights, seed=epoch), epoch)

    def close(self) -> None:
        self.writer.close()
