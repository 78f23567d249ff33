"""The interface of a clustering space (``--reduce``): a :class:`Reducer` maps trunk features to the points a
clustering backend sees and returns a :class:`Reduction`. The registry of reducers is :mod:`bayes_dc.spaces.registry`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class Reduction:
    """What a reducer produced for one round.

    Attributes:
        points: (N, d) float32 tensor on the features' device, the backend's input.
        state: opaque warm state for the next round (plain tensors / numbers, checkpointable), or None.
        seconds: wall-clock seconds of the reduction.
        info: scalars worth logging (e.g. whether UMAP was warm-started and the neighbour overlap).
    """

    points: torch.Tensor
    state: dict | None
    seconds: float
    info: dict


class Reducer(ABC):
    """Features -> clustering space. ``seed`` is passed in (derived from (run seed, round))."""

    name = "base"
    #: whether each process of a multi-process run may reduce its own rows (its sums going through an all-reduce);
    #: otherwise the pipeline gathers every row to every process first (``bayes_dc.runtime.distributed``).
    shardable = False
    #: whether :meth:`transform` can place a new point away from every training point (a function of the features);
    #: False for a layout whose out-of-sample map interpolates between training points, where novelty is blind
    maps_novel_points_apart = True

    @abstractmethod
    def reduce(self, features: torch.Tensor, *, seed: int, warm_state: dict | None = None) -> Reduction:
        """Map ``features`` (N, F) float32 to (N, d) float32; see :class:`Reduction`."""

    def transform(self, features: torch.Tensor, state: dict | None) -> torch.Tensor:
        """Map new features (B, F) into the space of the round whose :class:`Reduction` had ``state`` (for
        targets computed on the fly, ``--two-views``)."""
        raise ValueError(f"--reduce {self.name} cannot map new points into a fitted space; use --reduce pca or none")


def check_umap_options(dim: int, pca_dim: int, n_neighbors: int, min_dist: float, space: str) -> None:
    """ValueError naming the option when UMAP's settings (shared by ``--reduce umap`` and ``pumap``) are out of
    range."""
    if dim < 1 or pca_dim < 1:
        raise ValueError(f"--reduce {space} needs --reduce-dim >= 1 and --pca-dim >= 1, got {dim} and {pca_dim}")
    if n_neighbors < 2:
        raise ValueError(f"--umap-neighbors must be >= 2, got {n_neighbors}")
    if min_dist < 0:
        raise ValueError(f"--umap-min-dist must be >= 0, got {min_dist}")


__all__ = ["Reducer", "Reduction", "check_umap_options"]
