"""The interface of a clustering space (``--reduce``): a :class:`Reducer` maps trunk features to the points a
clustering backend sees and returns a :class:`Reduction`. The registry of reducers is :mod:`bayes_dc.reduce`."""
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
    #: otherwise the pipeline gathers every row to every process first (``bayes_dc.distributed``).
    shardable = False

    @abstractmethod
    def reduce(self, features: torch.Tensor, *, seed: int, warm_state: dict | None = None) -> Reduction:
        """Map ``features`` (N, F) float32 to (N, d) float32; see :class:`Reduction`."""

    def transform(self, features: torch.Tensor, state: dict | None) -> torch.Tensor:
        """Map new features (B, F) into the space of the round whose :class:`Reduction` had ``state`` (for
        targets computed on the fly, ``--two-views``)."""
        raise ValueError(f"--reduce {self.name} cannot map new points into a fitted space; use --reduce pca or none")


__all__ = ["Reducer", "Reduction"]
