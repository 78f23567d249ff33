"""Clustering backends behind one seam (see ``base.py``). The registry is explicit: add a backend here."""
from __future__ import annotations

from typing import Callable

import torch

from bayes_dc.clustering.base import (ACTIVE_WEIGHT, ClusterBackend, ClusterResult, active_mask, active_threshold, check_features)


def _kmeans(cfg, device: torch.device) -> ClusterBackend:
    from bayes_dc.clustering.kmeans import KMeansBackend
    return KMeansBackend.from_config(cfg, device)


def _dp(cfg, device: torch.device) -> ClusterBackend:
    from bayes_dc.clustering.dpgmm import DPGMMBackend
    return DPGMMBackend.from_config(cfg, device)


BACKENDS: dict[str, Callable[..., ClusterBackend]] = {"kmeans": _kmeans, "dp": _dp}


def make_backend(cfg, device: torch.device | str = "cpu") -> ClusterBackend:
    """Build the backend named by ``cfg.prior`` (a :class:`bayes_dc.config.schema.ClusterConfig`)."""
    if cfg.prior not in BACKENDS:
        raise ValueError(f"unknown clustering prior {cfg.prior!r}; choose one of {sorted(BACKENDS)} (--prior)")
    return BACKENDS[cfg.prior](cfg, torch.device(device))


__all__ = ["ACTIVE_WEIGHT", "BACKENDS", "active_mask", "active_threshold", "ClusterBackend", "ClusterResult", "check_features", "make_backend"]
