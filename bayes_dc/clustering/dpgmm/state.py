"""The mutable state of one DP-GMM fit and a proposed replacement for it (shared by the engine and the moves)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bayes_dc.clustering.dpgmm.families import SuffStats
from bayes_dc.clustering.dpgmm.variational import DPGMMParams


@dataclass
class FitState:
    """Everything that changes during a fit. ``stats`` are on the full-data scale; ``terms`` (T,) caches the per-
    component ELBO terms of (stats, q); ``value`` is the ELBO of this state; values/index (N, k) the top-k
    responsibilities; log_norm (N,) each point's log normaliser from its last E-step (how well the model fits it);
    ``origin`` (T,) the initial id each slot descends from (-1: born or emptied during the fit)."""

    stats: SuffStats
    q: DPGMMParams
    terms: torch.Tensor
    value: float
    values: torch.Tensor
    index: torch.Tensor
    log_norm: torch.Tensor | None
    origin: torch.Tensor


@dataclass
class Candidate:
    """A proposed global state: statistics, q and ELBO, and the slot order (new -> old) that was applied, if any."""

    stats: SuffStats
    q: DPGMMParams
    terms: torch.Tensor
    value: float
    order: torch.Tensor | None
