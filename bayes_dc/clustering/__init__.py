"""Clustering backends behind one seam (see ``base.py``). The registry is explicit: add a backend here."""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from bayes_dc.clustering.base import (ACTIVE_WEIGHT, ClusterBackend, ClusterResult, active_mask, active_threshold, check_features)
from bayes_dc.config.rules import OptionError


def _lazy(module: str, cls: str) -> Callable[..., ClusterBackend]:
    """A factory ``(cfg, device) -> cls.from_config(cfg, device)`` that imports ``module`` only when a backend is built
    (faiss and the engines are slow to import, and a run needs one backend)."""
    def build(cfg, device: torch.device) -> ClusterBackend:
        return getattr(importlib.import_module(module), cls).from_config(cfg, device)
    return build


# One line per backend; its traits are ``bayes_dc.config.schema.BACKEND_TRAITS[name]``.
BACKENDS: dict[str, Callable[..., ClusterBackend]] = {
    "kmeans": _lazy("bayes_dc.clustering.kmeans", "KMeansBackend"),
    "dp": _lazy("bayes_dc.clustering.dpgmm", "DPGMMBackend"),
    "dirichlet": _lazy("bayes_dc.clustering.dirichlet", "DirichletGMMBackend"),
}


def make_backend(cfg, device: torch.device | str = "cpu") -> ClusterBackend:
    """Build the backend named by ``cfg.prior`` (a :class:`bayes_dc.config.schema.ClusterConfig`)."""
    if cfg.prior not in BACKENDS:
        raise OptionError("prior", f"unknown clustering prior {cfg.prior!r}; choose one of {sorted(BACKENDS)} (`prior`)")
    return BACKENDS[cfg.prior](cfg, torch.device(device))


__all__ = ["ACTIVE_WEIGHT", "BACKENDS", "active_mask", "active_threshold", "ClusterBackend", "ClusterResult", "check_features", "make_backend"]
