"""faiss k-means: the DeepCluster baseline (Caron et al. 2018, ``clustering.py::run_kmeans``).

DeepCluster's settings: niter 20, one run (nredo 1), no cap on points per centroid (faiss would
otherwise subsample to 256 * k points), seed passed in. Empty clusters are counted and reported
(faiss splits a large cluster to refill them; the count says how often that happened at the end).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bayes_dc.clustering.base import ClusterBackend, ClusterResult, active_mask, check_features
from bayes_dc.config.rules import OptionError, check_option
from bayes_dc.config.schema import BACKEND_TRAITS


class KMeansBackend(ClusterBackend):
    """faiss k-means with k clusters. Component ids carry no identity across rounds.

    Several processes (``dist``, a ``bayes_dc.runtime.distributed.Distributed`` of more than one rank): each passes its
    own rows to :meth:`fit`; the rows are gathered, rank 0 trains faiss on all of them and sends the centroids to
    the others, each rank assigns its own rows, and every rank returns the result for all N rows in rank order.
    """

    name = "kmeans"
    traits = BACKEND_TRAITS[name]

    def __init__(self, k: int, niter: int = 20, verbose: bool = False, use_gpu: bool = False, dist: Any = None):
        if k < 2:
            raise OptionError("k", f"k-means needs k >= 2 clusters, got k={k}; pass k=2 or more")
        check_option("kmeans_niter", niter)
        self.k, self.niter, self.verbose, self.use_gpu = int(k), int(niter), verbose, use_gpu
        self.dist = dist

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "KMeansBackend":
        return cls(k=cfg.k, niter=cfg.kmeans_niter, use_gpu=(device.type == "cuda"))

    def fit(self, features: torch.Tensor, *, seed: int, warm_state: Any = None) -> ClusterResult:
        x = check_features(features)
        sharded = self.dist is not None and self.dist.active
        points = self.dist.gather_rows(x) if sharded else x        # (N, d): what is clustered
        n, d = points.shape
        if n < self.k:
            raise OptionError("k", f"k-means with k={self.k} needs at least k points, got N={n}; lower `k` or use more "
                                   "data")
        t0 = time.perf_counter()
        if not sharded:
            km = self._train(_host(points), seed)
            dist, assign = km.index.search(_host(points), 1)
            obj, centroids = km.obj, km.centroids
        else:
            trained = None
            if self.dist.is_main:
                km = self._train(_host(points), seed)
                trained = (km.centroids, list(km.obj))
            centroids, obj = self.dist.broadcast_object(trained)
            dist, assign = _nearest(centroids, _host(x))             # this rank's rows only
            dist = self.dist.gather_array(dist)
            assign = self.dist.gather_array(assign)
        seconds = time.perf_counter() - t0
        labels = assign[:, 0].astype(np.int64)
        counts = np.bincount(labels, minlength=self.k)
        weights = counts / counts.sum()
        history = [float(v) / n for v in obj] if len(obj) else [float(dist.mean())]
        return ClusterResult(
            labels=labels,
            resp_values=np.ones((n, 1), dtype=np.float32),
            resp_index=labels[:, None].copy(),
            weights=weights.astype(np.float64),
            active=active_mask(weights),
            objective=float(dist.mean()),
            history=history,
            n_iter=self.niter,
            seconds=seconds,
            permutation=None,
            state=None,
            predictor={"centroids": torch.from_numpy(np.array(centroids, dtype=np.float32))},
            info={"empty_clusters": int((counts == 0).sum())},
        ).validate()

    def responsibilities(self, predictor: dict, x: torch.Tensor,
                         allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest centroid of each new point x (B, d), as top-1 "responsibilities" (B, 1) of value 1."""
        centroids = predictor["centroids"].numpy()
        ids = np.arange(len(centroids)) if allowed is None else np.flatnonzero(allowed.cpu().numpy())
        _, nearest = _nearest(centroids[ids], _host(x))
        index = torch.from_numpy(ids[nearest].astype(np.int64)).to(x.device)
        return torch.ones(index.shape, dtype=torch.float32, device=x.device), index

    def novelty(self, predictor: dict, x: torch.Tensor) -> torch.Tensor:
        """Euclidean distance (B,) of each new point x (B, d) to its nearest centroid: not a probability."""
        sq_dist, _ = _nearest(predictor["centroids"].numpy(), _host(x))
        return torch.from_numpy(np.sqrt(np.maximum(sq_dist[:, 0], 0.0)).astype(np.float64))

    def _train(self, xs: np.ndarray, seed: int):
        """A trained ``faiss.Kmeans`` on xs (N, d) float32 (DeepCluster's settings, see the module docstring)."""
        import faiss  # imported here so that `import bayes_dc` works without faiss for DP-only use

        km = faiss.Kmeans(xs.shape[1], self.k, niter=self.niter, nredo=1, seed=int(seed) % (2**31 - 1),
                          verbose=self.verbose, max_points_per_centroid=10**9, min_points_per_centroid=1,
                          gpu=bool(self.use_gpu and hasattr(faiss, "StandardGpuResources")))
        km.train(xs)
        return km


def _host(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def _nearest(centroids: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(squared distance (n, 1), index (n, 1)) of the nearest of ``centroids`` (k, d) to each row of xs (n, d)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(xs, 1)
