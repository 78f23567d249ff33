"""What stays fixed for a whole run, in one object the round loop's stages take (``pipeline``, ``train``).

A new stage (a sampler, a data loader, a distributed rank, a feature reducer) is one more field here, built
once in :func:`bayes_dc.loop.pipeline.setup`, instead of one more argument threaded through every helper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # type names only: this module must stay importable without the stages it describes
    from bayes_dc.data.augment import Augmenter
    from bayes_dc.loop.batches import BatchSource
    from bayes_dc.clustering.base import ClusterBackend
    from bayes_dc.config.schema import Config
    from bayes_dc.data import ImageDataset, StreamingImageFolder
    from bayes_dc.runtime.distributed import Distributed
    from bayes_dc.models.nets import DeepClusterNet
    from bayes_dc.spaces.base import Reducer
    from bayes_dc.rundir.runlog import RunDir
    from bayes_dc.rundir.tblog import TensorBoardLogger


@dataclass
class RunContext:
    """A run's configuration, data, model, optimisers, device, clustering backend and run directory.

    Attributes:
        cfg: the run's Config.
        device: where the model (and in-memory image tensors) live.
        train_set: the training images (and their labels, for evaluation only), in memory or streamed.
        eval_set: the split scored by kNN accuracy, or None (``--eval-split none`` / no labels).
        train_source: the training images as the loop reads them (batches, features; ``bayes_dc.loop.batches``).
        eval_source: the same for ``eval_set``, or None.
        mean, std: (C,) per-channel normalisation of the training images (also applied to the eval images).
        model: trunk + head; the head is replaced at each relabel (:func:`bayes_dc.loop.pipeline.install_head`).
        trunk_opt: the trunk's optimiser (kept for the whole run).
        head_opt: the current head's optimiser (replaced with the head).
        backend: the clustering backend (``--prior``).
        reducer: features -> clustering space (``--reduce``).
        augmenter: training-image augmentation (``--augment``).
        rundir: the run directory (metrics, snapshots, checkpoints).
        dist: this process's rank and the collectives (``bayes_dc.runtime.distributed``; rank 0 of 1 without torchrun).
        ddp: the model wrapped in DistributedDataParallel under torchrun (re-wrapped with each new head), else None.
        start: the checkpoint ``--resume`` continues from, loaded and verified before anything was written
            (handed to the loop once, then None).
        tb: TensorBoard logger when ``--tensorboard`` (rank 0), else None.
    """

    cfg: Config
    device: torch.device
    train_set: ImageDataset | StreamingImageFolder
    eval_set: ImageDataset | StreamingImageFolder | None
    train_source: BatchSource
    eval_source: BatchSource | None
    mean: torch.Tensor
    std: torch.Tensor
    model: DeepClusterNet
    trunk_opt: torch.optim.Optimizer
    head_opt: torch.optim.Optimizer
    backend: ClusterBackend
    reducer: Reducer
    augmenter: Augmenter
    rundir: RunDir
    dist: Distributed
    ddp: torch.nn.Module | None = None
    start: dict | None = None
    tb: TensorBoardLogger | None = None

    @property
    def trained_model(self) -> torch.nn.Module:
        """What a training step calls: the DDP wrapper when there is one (it reduces the gradients), else the model."""
        return self.ddp if self.ddp is not None else self.model
