"""From a :class:`ClusterResult` to training targets, their losses and the cluster-balanced sampler.

Target kinds (``--targets``):
- ``hard``: argmax label, cross-entropy (DeepCluster).
- ``soft``: cross-entropy against the top-k responsibility distribution (renormalised, optionally
  sharpened by a temperature tau: q ∝ r^(1/tau)).
- ``multilabel``: one sigmoid per component, BCE against the responsibilities.

Components that carry no target mass anywhere (empty k-means clusters, inactive DP components) are masked
out of the loss: they are not classes this round, and pushing their logits down forever would only bias the
head against components that may be reborn later.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bayes_dc.clustering.base import ClusterResult
from bayes_dc.rundir.checkpoints import checkpointable

TARGET_KINDS = ("hard", "soft", "multilabel")


@checkpointable
@dataclass
class Targets:
    """Training targets for N points over ``num_outputs`` head outputs (all tensors on CPU).

    Attributes:
        kind: one of TARGET_KINDS.
        labels: (N,) int64 argmax component.
        resp_values: (N, k) float32 target distribution over ``resp_index`` (rows sum to 1).
        resp_index: (N, k) int64.
        used: (num_outputs,) bool, components with any target mass (others are masked out of the loss).
        sample_weights: (N,) float64 cluster-balanced sampling weights, sum to 1.
        coarse: the targets of the coarse head (``--coarse-head``: the groups of components, same kind, their own
            ``used``), or None. An epoch is drawn by the fine targets' ``sample_weights``.
    """

    kind: str
    labels: torch.Tensor
    resp_values: torch.Tensor
    resp_index: torch.Tensor
    used: torch.Tensor
    sample_weights: torch.Tensor
    coarse: "Targets | None" = None

    @property
    def num_outputs(self) -> int:
        return int(self.used.shape[0])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """Targets of points ``idx`` (B,): hard -> (B,) int64; soft/multilabel -> dense (B, num_outputs)."""
        if self.kind == "hard":
            return self.labels[idx].to(device)
        return loss_target(self.kind, self.resp_values[idx], self.resp_index[idx], self.num_outputs).to(device)


def loss_target(kind: str, values: torch.Tensor, index: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Top-k responsibilities (values, index) (B, k), rows sorted descending, -> what :class:`ClusterLoss` takes:
    hard -> the argmax ids (B,) int64; soft / multilabel -> dense (B, num_outputs) float32 (zeros elsewhere)."""
    if kind == "hard":
        return index[:, 0]
    dense = torch.zeros(index.shape[0], num_outputs, device=values.device)
    return dense.scatter_add_(1, index, values.float())


def swapped_targets(kind: str, values_a: torch.Tensor, index_a: torch.Tensor, values_b: torch.Tensor,
                    index_b: torch.Tensor, num_outputs: int, tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Swapped prediction (SwAV, Caron et al. 2020) with DP responsibilities: view a learns the responsibilities
    of view b of the same image and view b those of view a. Inputs: top-k (values, index) (B, k) of each view;
    returns (target for view a, target for view b) as :func:`loss_target` makes them, values sharpened by ``tau``."""
    if tau != 1.0:
        values_a = torch.from_numpy(sharpen(values_a.double().cpu().numpy(), tau)).to(values_a)
        values_b = torch.from_numpy(sharpen(values_b.double().cpu().numpy(), tau)).to(values_b)
    return (loss_target(kind, values_b, index_b, num_outputs), loss_target(kind, values_a, index_a, num_outputs))


def sharpen(values: np.ndarray, tau: float) -> np.ndarray:
    """q ∝ r^(1/tau) row-wise over (N, k) values; tau=1 is the identity, tau -> 0 approaches one-hot."""
    if tau <= 0:
        raise ValueError(f"--sharpen tau must be > 0, got {tau}")
    if tau == 1.0:
        return values
    logq = np.log(np.clip(values, 1e-30, None)) / tau
    logq -= logq.max(axis=1, keepdims=True)
    q = np.exp(logq)
    return q / q.sum(axis=1, keepdims=True)


def balanced_weights(resp_values: np.ndarray, resp_index: np.ndarray, num_outputs: int) -> np.ndarray:
    """Cluster-balanced sampling weight of each point: w_n = sum_k r_nk / N_k with N_k = sum_n r_nk.

    Sampling points with probability ∝ w_n gives every non-empty cluster the same expected share of
    the epoch (1 / number of non-empty clusters), which is DeepCluster's uniform-per-cluster sampler for
    one-hot r and its natural extension for soft r. Returns (N,) float64 summing to 1.
    """
    sizes = np.bincount(resp_index.ravel(), weights=resp_values.ravel().astype(np.float64), minlength=num_outputs)
    inv = np.divide(1.0, sizes, out=np.zeros_like(sizes), where=sizes > 0)  # (T,)
    w = (resp_values * inv[resp_index]).sum(axis=1)  # (N,)
    return w / w.sum()


def build_targets(result: ClusterResult, kind: str = "hard", *, tau: float = 1.0,
                  balanced: bool = True) -> Targets:
    """Targets for the next training epochs from one clustering round."""
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; choose one of {list(TARGET_KINDS)} (--targets)")
    t = result.n_components
    if kind == "hard":
        values = np.ones((result.n_points, 1), dtype=np.float32)
        index = result.labels[:, None]
    else:
        values = sharpen(result.resp_values.astype(np.float64), tau).astype(np.float32)
        index = result.resp_index
    mass = np.bincount(index.ravel(), weights=values.ravel(), minlength=t)
    if balanced:
        weights = balanced_weights(values, index, t)
    else:
        weights = np.full(result.n_points, 1.0 / result.n_points)
    return Targets(kind=kind,
                   labels=torch.from_numpy(result.labels.astype(np.int64)),
                   resp_values=torch.from_numpy(np.ascontiguousarray(values)),
                   resp_index=torch.from_numpy(np.ascontiguousarray(index.astype(np.int64))),
                   used=torch.from_numpy(mass > 0),
                   sample_weights=torch.from_numpy(weights))


def sample_epoch(targets: Targets, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch (n_samples,), drawn with replacement ∝ ``targets.sample_weights``."""
    return torch.multinomial(targets.sample_weights, n_samples, replacement=True, generator=generator)


class ClusterLoss(nn.Module):
    """The loss for a target kind, with unused components masked out.

    ``forward(logits (B, T), target, used (T,) bool) -> scalar``; ``target`` as from :meth:`Targets.batch`.
    """

    def __init__(self, kind: str):
        super().__init__()
        if kind not in TARGET_KINDS:
            raise ValueError(f"unknown target kind {kind!r}; choose one of {list(TARGET_KINDS)} (--targets)")
        self.kind = kind

    def forward(self, logits: torch.Tensor, target: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        used = used.to(logits.device)
        if self.kind == "multilabel":
            bce = F.binary_cross_entropy_with_logits(logits[:, used], target[:, used], reduction="none")
            return bce.mean()
        masked = logits.masked_fill(~used, float("-inf"))
        if self.kind == "hard":
            return F.cross_entropy(masked, target)
        log_q = F.log_softmax(masked, dim=1)[:, used]
        return -(target[:, used] * log_q).sum(dim=1).mean()
