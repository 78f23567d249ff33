"""The ``pca`` space: DeepCluster's PCA whitening + L2 (:class:`bayes_dc.spaces.whiten.Whitener`), refitted every
round. The k-means baseline's space (256 dimensions, as DeepCluster)."""
from __future__ import annotations

import time
from typing import Callable

import torch

from bayes_dc.spaces.base import Reducer, Reduction
from bayes_dc.spaces.whiten import Whitener


class PCAReducer(Reducer):
    """PCA (whitening) + L2 of :class:`~bayes_dc.spaces.whiten.Whitener`, refitted each round.

    State: the fitted projection ``{"mean": (F,), "projection": (F, d)}`` (float32, whitening folded in), so new
    points can be mapped into the round's space; nothing is carried over to the next fit.
    """

    name = "pca"
    shardable = True   # mean and scatter are sums (Whitener's allreduce)

    def __init__(self, dim: int, whiten: bool = True, l2: bool = True, *,
                 allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None, device: torch.device | None = None):
        """``allreduce``: see :class:`~bayes_dc.spaces.whiten.Whitener`; ``device``: where the sums and the points are
        computed (default: the features' device)."""
        self.whitener = Whitener(dim=dim, whiten=whiten, l2=l2, allreduce=allreduce)
        self.device = device

    def reduce(self, features: torch.Tensor, *, seed: int, warm_state: dict | None = None) -> Reduction:
        start = time.perf_counter()
        points = self.whitener.fit_transform(features, self.device)
        mean, projection = self.whitener.folded_projection(points.device)
        state = {"mean": mean.cpu(), "projection": projection.cpu()}
        return Reduction(points, state, time.perf_counter() - start, {"reduce_dim": int(points.shape[1])})

    def transform(self, features: torch.Tensor, state: dict | None) -> torch.Tensor:
        points = (features.float() - state["mean"].to(features.device)) @ state["projection"].to(features.device)
        return torch.nn.functional.normalize(points, dim=1, eps=1e-12) if self.whitener.l2 else points


__all__ = ["PCAReducer"]
