"""What stays fixed for a whole run, in one object the round loop's stages take (``pipeline``, ``train``).

A new stage (a sampler, a data loader, a distributed rank, a feature reducer) is one more field here, built
once in :func:`bayes_dc.pipeline.setup`, instead of one more argument threaded through every helper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # type names only: this module must stay importable without the stages it describes
    from .augment import Augmenter
    from .clustering.base import ClusterBackend
    from .config import Config
    from .data import ImageDataset
    from .models import DeepClusterNet
    from .reduce import Reducer
    from .runlog import RunDir
    from .tblog import TensorBoardLogger


@dataclass
class RunContext:
    """A run's configuration, data, model, optimisers, device, clustering backend and run directory.

    Attributes:
        cfg: the run's Config.
        device: where the model and the image tensors live.
        train_set: the training images (and their labels, for evaluation only).
        eval_set: the split scored by kNN accuracy, or None (``--eval-split none`` / no labels).
        images: (N, C, H, W) uint8, ``train_set.images`` on ``device``.
        eval_images: (N_eval, C, H, W) uint8 on ``device``, or None.
        mean, std: (C,) per-channel normalisation of the training images (also applied to the eval images).
        model: trunk + head; the head is replaced at each relabel (:func:`bayes_dc.pipeline.install_head`).
        trunk_opt: the trunk's optimiser (kept for the whole run).
        head_opt: the current head's optimiser (replaced with the head).
        backend: the clustering backend (``--prior``).
        reducer: features -> clustering space (``--reduce``).
        augmenter: training-image augmentation (``--augment``).
        rundir: the run directory (metrics, snapshots, checkpoints).
        tb: TensorBoard logger when ``--tensorboard``, else None.
    """

    cfg: Config
    device: torch.device
    train_set: ImageDataset
    eval_set: ImageDataset | None
    images: torch.Tensor
    eval_images: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor
    model: DeepClusterNet
    trunk_opt: torch.optim.Optimizer
    head_opt: torch.optim.Optimizer
    backend: ClusterBackend
    reducer: Reducer
    augmenter: Augmenter
    rundir: RunDir
    tb: TensorBoardLogger | None = None
