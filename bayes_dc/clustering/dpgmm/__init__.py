"""Variational Dirichlet-process Gaussian mixture: closed-form CAVI engine with ELBO-checked moves, and backend.

Modules: ``prior`` (the prior, shared with the Pyro engine), ``math`` (conjugate Normal-Gamma / Normal-Wishart
math), ``families`` (full / diag / spherical covariance), ``mfa`` (factor-analyser components), ``variational`` (q, M-step, ELBO), ``sweep`` (chunked
top-k E-step and statistics), ``engine`` (the CAVI loop, :class:`DPGMM`), ``moves`` (merge / split / birth /
delete), ``sharded`` (:class:`ShardedDPGMM`, the engine on one rank's rows under torchrun), ``backend``
(:class:`DPGMMBackend`).
"""
from bayes_dc.clustering.dpgmm.backend import INFERENCES, DPGMMBackend
from bayes_dc.clustering.dpgmm.engine import (COVARIANCES, DEFAULT_TOL, MOVES, WARM_STARTS, ClusterCountWarning, ConvergenceWarning, DPGMM, VariationalMixture)
from bayes_dc.clustering.dpgmm.families import Components, SuffStats, make_family
from bayes_dc.clustering.dpgmm.prior import (DEFAULT_KAPPA0, DEFAULT_PRIOR_DOF, DEFAULT_PRIOR_SCALE, DPGMMPrior, build_prior)
from bayes_dc.clustering.dpgmm.seeding import kmeanspp_seeds
from bayes_dc.clustering.dpgmm.sharded import ShardedDPGMM
from bayes_dc.clustering.dpgmm.variational import DPGMMParams, elbo, m_step

__all__ = ["COVARIANCES", "Components", "ClusterCountWarning", "ConvergenceWarning", "DEFAULT_KAPPA0",
           "DEFAULT_PRIOR_DOF", "DEFAULT_PRIOR_SCALE", "DEFAULT_TOL", "DPGMM", "DPGMMBackend", "DPGMMParams", "DPGMMPrior",
           "INFERENCES", "MOVES", "ShardedDPGMM", "SuffStats", "VariationalMixture", "WARM_STARTS", "build_prior",
           "elbo", "kmeanspp_seeds", "m_step", "make_family"]
