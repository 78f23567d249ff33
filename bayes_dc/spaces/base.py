"""The interface of a clustering space (``reduce`` option): a :class:`Reducer` maps a round's trunk features to the
points a clustering backend sees. Each space is a module of this package (identity, pca, umap, parametric); the
registry that names them is :mod:`bayes_dc.spaces.registry`.

What the round loop and the trainer may ask of any space, without knowing which one it is:

- :meth:`Reducer.reduce`: fit on a round's features -> a :class:`Reduction` (the points and a checkpointable state);
- :meth:`Reducer.transform`: map new features into a fitted round's space, given that round's state;
- :attr:`Reducer.shardable`: whether each process of a multi-process run may fit on its own rows;
- :attr:`Reducer.maps_novel_points_apart`: whether :meth:`~Reducer.transform` can place a new point away from every
  training point (what novelty scores need);
- :meth:`Reducer.pair_loss`: an optional loss on two views of the same images in the fitted space, which the trainer
  adds to its own (``space_weight``); None for a space that has none.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class Reduction:
    """What a reducer produced for one round.

    Attributes:
        points: (N, d) float32 tensor on the features' device, the backend's input.
        state: what maps new points into this round's space (:meth:`Reducer.transform`) and warm-starts the next
            round: plain tensors / numbers (checkpointable), or None.
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
        """Fit the space on a round's ``features`` (N, F) float32 and map them to (N, d) float32; ``warm_state`` is
        the previous round's :attr:`Reduction.state` (or None for a cold start). See :class:`Reduction`."""

    def transform(self, features: torch.Tensor, state: dict | None) -> torch.Tensor:
        """Map new features (B, F) into the space of the round whose :class:`Reduction` had ``state`` (for
        targets computed on the fly, two views, and the trained-run API)."""
        raise ValueError(f"the {self.name!r} space cannot map new points into a fitted space; use the 'pca' or "
                         "'none' space")

    def pair_loss(self, view_a: torch.Tensor, view_b: torch.Tensor, state: dict | None,
                  generator: torch.Generator) -> torch.Tensor | None:
        """A loss (scalar tensor, differentiable in the views) that pulls two views of each image together in the
        space of the round with ``state``, from the trunk embeddings of the two views (B, F) each; ``generator``
        draws any randomness (negatives). None (the default): this space has no pair loss."""
        return None


__all__ = ["Reducer", "Reduction"]
