"""The registry of clustering spaces (``reduce`` option): trunk features (N, F) -> the points (N, d) a clustering
backend sees. Each space is one module behind the interface of :mod:`bayes_dc.spaces.base`:

- ``none`` (:mod:`bayes_dc.spaces.identity`): the features as they are (e.g. a low-dimensional projection head's
  output).
- ``pca`` (:mod:`bayes_dc.spaces.pca`): DeepCluster's PCA whitening + L2, refitted every round; the k-means
  baseline's space.
- ``umap`` (:mod:`bayes_dc.spaces.umap`): PCA, then a UMAP layout (umap-learn), warm-started across rounds when the
  neighbourhoods changed little.
- ``pumap`` (:mod:`bayes_dc.spaces.parametric`): parametric UMAP, an encoder trained on UMAP's graph loss, warm
  across rounds, mapping new points in one forward pass; it has a pair loss.

A new space is one module with a :class:`~bayes_dc.spaces.base.Reducer` subclass and one line in :data:`REDUCERS`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bayes_dc.config.rules import OptionError
from bayes_dc.spaces.base import Reducer
from bayes_dc.spaces.identity import IdentityReducer
from bayes_dc.spaces.parametric import ParametricUMAPReducer
from bayes_dc.spaces.pca import PCAReducer
from bayes_dc.spaces.umap import UMAPReducer

#: name -> factory(cfg, *, allreduce, device, dist) of a :class:`bayes_dc.config.schema.Config`'s space
REDUCERS: dict[str, Callable[..., Reducer]] = {
    "none": lambda cfg, **_: IdentityReducer(),
    "pca": lambda cfg, allreduce=None, device=None, **_: PCAReducer(
        dim=cfg.pca_dim, whiten=cfg.features.whiten, l2=cfg.features.l2, allreduce=allreduce, device=device),
    "umap": lambda cfg, **_: UMAPReducer(dim=cfg.features.reduce_dim, pca_dim=cfg.pca_dim,
                                         n_neighbors=cfg.features.umap_neighbors,
                                         min_dist=cfg.features.umap_min_dist),
    "pumap": lambda cfg, device=None, dist=None, **_: ParametricUMAPReducer(
        dim=cfg.features.reduce_dim, pca_dim=cfg.pca_dim, n_neighbors=cfg.features.umap_neighbors,
        min_dist=cfg.features.umap_min_dist, hidden=cfg.features.pumap_hidden, epochs=cfg.features.pumap_epochs,
        warm_epochs=cfg.features.pumap_warm_epochs, init=cfg.features.pumap_init, device=device, dist=dist),
}


def make_reducer(cfg: Any, *, allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | None = None, dist: Any = None) -> Reducer:
    """The space named by ``cfg.reduce`` (the prior's default when unset) for a
    :class:`bayes_dc.config.schema.Config` (its ``pca_dim`` property resolves the PCA dimension in force).
    ``allreduce`` and ``device``: see :class:`~bayes_dc.spaces.pca.PCAReducer`; ``dist`` (a
    :class:`~bayes_dc.runtime.distributed.Distributed`): the processes the parametric space is sharded over."""
    name = cfg.reduce
    if name not in REDUCERS:
        raise OptionError("reduce", f"unknown reduce {name!r}; choose one of {sorted(REDUCERS)}")
    return REDUCERS[name](cfg, allreduce=allreduce, device=device, dist=dist)


__all__ = ["REDUCERS", "make_reducer"]
