"""The ``none`` space: the features as they are (e.g. a low-dimensional projection head's output, clustered with
``cluster_on="projection"``)."""
from __future__ import annotations

import torch

from bayes_dc.spaces.base import Reducer, Reduction


class IdentityReducer(Reducer):
    """The features themselves, as float32; no state."""

    name = "none"
    shardable = True   # row by row

    def reduce(self, features: torch.Tensor, *, seed: int, warm_state: dict | None = None) -> Reduction:
        return Reduction(features.float(), None, 0.0, {"reduce_dim": int(features.shape[1])})

    def transform(self, features: torch.Tensor, state: dict | None) -> torch.Tensor:
        return features.float()


__all__ = ["IdentityReducer"]
