"""The clustering seam: every backend takes features and returns a :class:`ClusterResult`.

Nothing downstream of a backend (targets, training, metrics, run directory) knows which backend made
a result. A backend owns only the clustering math; preprocessing (PCA whitening, L2) happens before it
and target construction after it (design.md, practice 8).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from bayes_dc.config.schema import BackendTraits

# Weight at or above which a component counts as active (eval-protocol: K_active uses 0.5 %) while the
# number of components is small enough for that cut not to cap K_active; see :func:`active_threshold`.
ACTIVE_WEIGHT = 0.005


def active_threshold(n_components: int) -> float:
    """Mixture weight at or above which a component counts as active: ``min(0.5 %, 1 / (2 T))``.

    0.5 % is the eval protocol's cut, but a fixed cut w caps K_active at 1/w (200 for 0.5 %), which means
    nothing at T = 3,000 clusters (ImageNet-sized runs). Halving 1/T keeps the cut below the weight of a
    uniform T-component mixture, so K_active can reach T; for T <= 100 it is the protocol's 0.5 % exactly.
    """
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    return min(ACTIVE_WEIGHT, 0.5 / n_components)


def active_mask(weights: np.ndarray) -> np.ndarray:
    """(T,) weights -> (T,) bool, ``weights >= active_threshold(T)``."""
    weights = np.asarray(weights)
    return weights >= active_threshold(weights.shape[0])


@dataclass
class ClusterResult:
    """What one clustering round produced, for N points and T components.

    Component ids are those *after* the backend's reordering (largest first for the DP-GMM), and
    ``permutation[old_id] == new_id`` maps the ids of the fit's own initial state (for warm starts: the
    previous round's ids) to them, so identities can be tracked across rounds. ``-1`` marks an old id with
    no successor (a component reset to the prior).

    Attributes:
        labels: (N,) int64, argmax component of each point.
        resp_values: (N, k) float32, top-k responsibilities, each row sums to 1 (k-means: k=1, value 1).
        resp_index: (N, k) int64, component ids of ``resp_values``.
        weights: (T,) float64, mixture weights (DP: E[pi]; k-means: cluster fractions), sum to 1.
        active: (T,) bool, ``active_mask(weights)`` (``weights >= active_threshold(T)``).
        objective: final objective (DP: ELBO per point; k-means: mean squared distance).
        history: per-iteration objective.
        n_iter: iterations run.
        seconds: wall-clock seconds of the fit.
        permutation: (T,) int64 old id -> new id, or None when ids carry no identity (k-means).
        state: opaque warm state to hand to the next round's ``fit`` (None if the backend has none).
        predictor: what the backend's :meth:`ClusterBackend.responsibilities` needs to assign new points under
            this fit (plain tensors, checkpointable), or None when the backend cannot.
        info: backend-specific scalars worth logging (e.g. empty clusters, converged).
    """

    labels: np.ndarray
    resp_values: np.ndarray
    resp_index: np.ndarray
    weights: np.ndarray
    active: np.ndarray
    objective: float
    history: list[float]
    n_iter: int
    seconds: float
    permutation: np.ndarray | None = None
    state: Any = None
    info: dict = field(default_factory=dict)
    predictor: dict | None = None

    @property
    def n_points(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def k_active(self) -> int:
        return int(self.active.sum())

    @property
    def k_used(self) -> int:
        return int(np.unique(self.labels).size)

    @property
    def k_eff(self) -> float:
        """exp(entropy of the weights): the 'effective' number of components."""
        w = self.weights[self.weights > 0]
        return float(math.exp(-(w * np.log(w)).sum()))

    def validate(self) -> "ClusterResult":
        """Check the invariants every consumer relies on; raise ValueError naming the broken one."""
        n, t = self.n_points, self.n_components
        if self.resp_values.shape != self.resp_index.shape or self.resp_values.shape[0] != n:
            raise ValueError(f"resp_values {self.resp_values.shape} / resp_index {self.resp_index.shape} "
                             f"must both be (N={n}, k)")
        row_sums = self.resp_values.sum(axis=1)
        if not np.allclose(row_sums, 1.0, atol=1e-3):
            raise ValueError(f"responsibility rows must sum to 1; worst row sums to {row_sums[np.argmax(abs(row_sums - 1))]}")
        if self.resp_index.min() < 0 or self.resp_index.max() >= t:
            raise ValueError(f"resp_index must lie in [0, T={t})")
        if not np.isclose(self.weights.sum(), 1.0, atol=1e-6):
            raise ValueError(f"weights must sum to 1, got {self.weights.sum()}")
        return self


class ClusterBackend(ABC):
    """A clustering algorithm behind the seam.

    Subclasses implement :meth:`fit`. ``seed`` is passed in by the caller (derived from (run seed, round));
    a backend never draws a fresh random seed. ``warm_state`` is the ``state`` of the previous round's
    result (or None); a backend that has no warm start ignores it.
    """

    name: str = "base"
    #: what the round loop needs to know about this backend, torch-free (``bayes_dc.config.schema.BACKEND_TRAITS``
    #: ``[name]``): head outputs, soft or hard targets, identities, new points, processes, default space
    traits: ClassVar[BackendTraits]

    @property
    def has_identities(self) -> bool:
        """Whether component ids persist across rounds (so a classifier head may keep its rows)."""
        return self.traits.identities

    @abstractmethod
    def fit(self, features: torch.Tensor, *, seed: int, warm_state: Any = None) -> ClusterResult:
        """Cluster ``features`` (N, d) float32 (any device); return a validated ClusterResult."""

    def responsibilities(self, predictor: dict, x: torch.Tensor,
                         allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k responsibilities (values, index) (B, k) of new points x (B, d) under the fit that produced
        ``predictor`` (``ClusterResult.predictor``); ``allowed`` (T,) bool limits the components."""
        raise ValueError(f"the {self.name} backend cannot assign new points to a fitted clustering "
                         "(needed by --two-views)")

    #: what :meth:`novelty` returns: "probability" (in [0, 1], flag above ``novelty_threshold``) or "distance"
    #: (>= 0, no probabilistic meaning, no flag)
    novelty_kind: str = "distance"
    novelty_threshold: float | None = None

    def novelty(self, predictor: dict, x: torch.Tensor) -> torch.Tensor:
        """How little the fit that produced ``predictor`` explains each new point x (B, d): (B,) float64, see
        :attr:`novelty_kind`."""
        raise ValueError(f"the {self.name} backend cannot score new points against a fitted clustering")


def check_features(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``features`` as a float32 2-D tensor; clear errors for bad shape and NaN/inf rows."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor or numpy array, got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features are empty: shape {tuple(features.shape)}")
    bad = ~torch.isfinite(features).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad:
        first = torch.nonzero(bad)[:5, 0].tolist()
        raise ValueError(f"features contain NaN or inf in {n_bad} of {features.shape[0]} rows (first rows: {first}); "
                         "check the trunk for a diverged loss or the preprocessing for a zero-variance dimension")
    return features.float()
