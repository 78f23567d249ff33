"""The ``umap`` space: PCA to ``pca_dim`` (~50, not whitened), then UMAP (McInnes et al. 2018, umap-learn) to ``dim``
(~10) dimensions. Gaussians fit such an embedding far better than a whitened PCA of the same features (measured in
BENCHMARKS.md section 6, "The DP-GMM as a model: what decides K"). N2D (McConville et al. 2020) and DeepDPM (Ronen
et al. 2022) cluster in such embeddings.

Warm start: the features change between rounds (the trunk trains), so the previous embedding is only a good
starting layout when the neighbourhoods changed little. The state keeps the k nearest neighbours (in the PCA space)
of a fixed random sample of points; the next round recomputes them and, if on average at least
``UMAP_WARM_OVERLAP`` of them are the same, initialises UMAP from the previous embedding with ``UMAP_WARM_EPOCHS``
optimisation epochs instead of a spectral layout with umap-learn's default number of epochs. Randomness comes from
the seed passed in, so a resumed run repeats the uninterrupted one (umap-learn runs single-threaded when seeded).
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from bayes_dc.config.rules import OptionError
from bayes_dc.runtime.threads import torch_threads_kept
from bayes_dc.spaces.base import Reducer, Reduction
from bayes_dc.spaces.knn import nearest_neighbors
from bayes_dc.spaces.whiten import Whitener, principal_axes

# Share of sampled neighbours that must survive between rounds for UMAP to start from the previous layout.
UMAP_WARM_OVERLAP = 0.5
# Optimisation epochs of a warm-started layout (it only has to follow the change, not unfold a new graph).
UMAP_WARM_EPOCHS = 100
# Points whose neighbourhoods are compared between rounds (exact search against all N: cheap).
UMAP_PROBE_POINTS = 1000
#: A layout direction whose variance is below this share of the largest is dropped (:func:`drop_flat_directions`).
FLAT_DIRECTION_SHARE = 1e-4


def check_umap_options(dim: int, pca_dim: int, n_neighbors: int, min_dist: float) -> None:
    """:class:`~bayes_dc.config.rules.OptionError` naming the parameter when UMAP's settings (shared by the ``umap``
    and ``pumap`` spaces) are out of range."""
    for name, value in (("dim", dim), ("pca_dim", pca_dim)):
        if value < 1:
            raise OptionError(name, f"{name} must be >= 1, got {value}")
    if n_neighbors < 2:
        raise OptionError("n_neighbors", f"n_neighbors must be >= 2, got {n_neighbors}")
    if min_dist < 0:
        raise OptionError("min_dist", f"min_dist must be >= 0, got {min_dist}")


class UMAPReducer(Reducer):
    """PCA to ``pca_dim`` (not whitened, so UMAP's Euclidean neighbourhoods follow the feature geometry), then
    UMAP to ``dim`` dimensions with ``n_neighbors`` neighbours and ``min_dist`` (0: pack clusters tightly, the
    setting N2D uses for clustering).

    Warm state: ``{"embedding": (N, dim) float32, "probe": (P,) int64, "probe_neighbors": (P, k) int64}``, and
    what :meth:`transform` maps new points with: ``"pca_mean"`` (F,), ``"pca_projection"`` (F, p) and the training
    points' PCs ``"pcs"`` (N, p), all float32.
    """

    name = "umap"
    #: :meth:`transform` interpolates between training points' embeddings, so a new point lands among or between
    #: them, never away from them: novelty in this space misses images unlike the training images (BENCHMARKS.md
    #: section 9, "Using a trained run: assignment throughput and novelty")
    maps_novel_points_apart = False

    def __init__(self, dim: int = 10, pca_dim: int = 50, n_neighbors: int = 20, min_dist: float = 0.0):
        check_umap_options(dim, pca_dim, n_neighbors, min_dist)
        self.dim, self.pca_dim, self.n_neighbors, self.min_dist = int(dim), int(pca_dim), int(n_neighbors), min_dist

    def reduce(self, features: torch.Tensor, *, seed: int, warm_state: dict | None = None) -> Reduction:
        with warnings.catch_warnings():
            # numba/umap import-time deprecation chatter is not actionable for users of this toolkit
            warnings.simplefilter("ignore")
            import umap

        start = time.perf_counter()
        n = features.shape[0]
        if n <= self.n_neighbors + 1:
            raise OptionError("n_neighbors", f"UMAP with n_neighbors={self.n_neighbors} needs more than "
                              f"{self.n_neighbors + 1} points, got N={n}; lower n_neighbors or use the 'pca' space")
        if self.dim >= n - 1:
            raise OptionError("dim", f"dim={self.dim} must be below N - 1 = {n - 1}")
        pca = Whitener(dim=self.pca_dim, whiten=False, l2=False)
        pcs = pca.fit_transform(features).cpu().numpy()                                           # (N, p)
        generator = np.random.default_rng(seed)
        probe = (torch.as_tensor(warm_state["probe"]).numpy() if warm_state is not None
                 else np.sort(generator.choice(n, size=min(UMAP_PROBE_POINTS, n), replace=False)))
        probe_neighbors = other_neighbors(pcs, probe, self.n_neighbors)                          # (P, k)
        init, n_epochs, overlap = "spectral", None, None
        if warm_state is not None:
            overlap = neighbor_overlap(torch.as_tensor(warm_state["probe_neighbors"]).numpy(), probe_neighbors)
            previous = torch.as_tensor(warm_state["embedding"]).numpy()
            if overlap >= UMAP_WARM_OVERLAP and previous.shape == (n, self.dim):
                init, n_epochs = previous.astype(np.float32), UMAP_WARM_EPOCHS
        model = umap.UMAP(n_components=self.dim, n_neighbors=self.n_neighbors, min_dist=self.min_dist,
                          init=init, n_epochs=n_epochs, random_state=int(seed) % (2**31 - 1), n_jobs=1,
                          verbose=False)
        # umap-learn's numba resets torch's thread count when it ends (bayes_dc.runtime.threads); give it back
        with warnings.catch_warnings(), torch_threads_kept():
            warnings.filterwarnings("ignore", message=".*n_jobs.*")
            embedding = model.fit_transform(pcs).astype(np.float32)                                   # (N, dim)
        if not np.isfinite(embedding).all():
            raise ValueError("UMAP returned non-finite coordinates; check the features (duplicate or constant rows) "
                             "or use the 'pca' space")
        pca_mean, pca_projection = pca.folded_projection(torch.device("cpu"))
        state = {"embedding": torch.from_numpy(embedding), "probe": torch.from_numpy(probe.astype(np.int64)),
                 "probe_neighbors": torch.from_numpy(probe_neighbors.astype(np.int64)), "pca_mean": pca_mean,
                 "pca_projection": pca_projection, "pcs": torch.from_numpy(np.ascontiguousarray(pcs, dtype=np.float32))}
        points, flat = drop_flat_directions(torch.from_numpy(embedding))
        if flat is not None:
            state.update(flat)
        points = points.to(features.device)
        info = {"reduce_dim": int(points.shape[1]), "umap_warm": not isinstance(init, str),
                "umap_neighbor_overlap": overlap}
        return Reduction(points, state, time.perf_counter() - start, info)

    def transform(self, features: torch.Tensor, state: dict | None) -> torch.Tensor:
        """Out-of-sample map of new features (B, F) into the round's layout (B, dim): the round's PCA, then the
        inverse-distance weighted mean of the embeddings of the ``n_neighbors`` nearest training points in that
        PCA space (:func:`knn_interpolate`). Cheaper than umap-learn's ``transform`` (no optimisation), and a
        training point lands (nearly) on its own embedding. It interpolates the layout, so a point unlike every
        training point still lands among them: novelty is better judged in a PCA or parametric space."""
        if state is None or "pcs" not in state:
            raise ValueError("this UMAP layout was fitted before layouts kept what maps new points (its PCA and the "
                             "training PCs); refit it (a new run), or use the 'pca' space")
        pcs = (features.float() - state["pca_mean"].to(features.device)) @ state["pca_projection"].to(features.device)
        embedding = knn_interpolate(state["pcs"], state["embedding"], pcs.cpu(), self.n_neighbors)
        if "flat_basis" in state:
            embedding = (embedding - state["flat_mean"]) @ state["flat_basis"]
        return embedding.to(features.device)


def drop_flat_directions(points: torch.Tensor, share: float = FLAT_DIRECTION_SHARE
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """A layout (N, d) as it is, or, when some of its principal directions have a variance below ``share`` of the
    largest, its coordinates (N, d') on the other principal axes (centred; a rotation, so distances within the kept
    span are unchanged) and the map ``{"flat_mean": (d,), "flat_basis": (d, d')}`` that gives them.

    umap-learn's 10-d layout of CIFAR-10 pixels lay on only half its directions (the others at a variance ~1e-6 of
    the largest); float32 rounding then makes its covariance indefinite and the DP's prior, scaled from it, cannot
    be built. A full-rank layout is passed on untouched (the same bits).
    """
    mean, _, axes = principal_axes(points, share)
    if axes.shape[1] == points.shape[1]:
        return points, None
    flat = {"flat_mean": mean.float(), "flat_basis": axes.float()}
    return (points.float() - flat["flat_mean"]) @ flat["flat_basis"], flat                   # as transform maps


def knn_interpolate(reference: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Shepard interpolation: for each query (B, p), the mean of ``values`` (N, dim) at its k nearest ``reference``
    points (N, p) (:func:`~bayes_dc.spaces.knn.nearest_neighbors`), weighted by 1 / (distance + a floor of 1e-3 x
    the k-th distance), so a query equal to a reference point gets ~its value and the others a smooth blend.
    float32 (B, dim)."""
    reference = torch.as_tensor(reference)
    dist, ids = nearest_neighbors(reference, min(int(k), reference.shape[0]), queries=queries)  # (B, k) each
    weights = 1.0 / (dist + 1e-3 * dist[:, -1:] + 1e-12)                                           # (B, k)
    neighbours = torch.as_tensor(values, dtype=torch.float32)[ids]                                 # (B, k, dim)
    return (weights[:, :, None] * neighbours).sum(1) / weights.sum(1, keepdim=True)


def other_neighbors(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(rows), k) int64 of the k nearest other points of each ``x[rows]`` among all of x (N, p)."""
    return nearest_neighbors(x, k + 1, rows=rows)[1][:, 1:].numpy()


def neighbor_overlap(before: np.ndarray, after: np.ndarray) -> float:
    """Mean share of each row's neighbour ids (P, k) found again in the same row of ``after`` (P, k)."""
    if before.shape != after.shape:
        return 0.0
    shared = [np.intersect1d(a, b, assume_unique=True).size for a, b in zip(before, after)]
    return float(np.mean(shared) / before.shape[1])


__all__ = ["FLAT_DIRECTION_SHARE", "UMAPReducer", "UMAP_PROBE_POINTS", "UMAP_WARM_EPOCHS", "UMAP_WARM_OVERLAP",
           "check_umap_options", "drop_flat_directions", "knn_interpolate", "neighbor_overlap", "other_neighbors"]
