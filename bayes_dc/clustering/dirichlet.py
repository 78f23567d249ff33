"""A finite Bayesian Gaussian mixture: a symmetric Dirichlet prior on T weights (``--prior dirichlet``).

Model (truncation T plays the role of the number of components):
    pi ~ Dirichlet(alpha / T, ..., alpha / T);  (mu_k, Sigma_k) as the DP-GMM's families;  z_n ~ Categorical(pi)
q(pi) = Dirichlet(gamma) with gamma_k = alpha / T + N_k (Bishop 2006, eq. 10.58), E[log pi_k] = psi(gamma_k) -
psi(sum_j gamma_j) (eq. 10.66). This is scikit-learn's ``BayesianGaussianMixture(weight_concentration_prior_type=
"dirichlet_distribution")``; everything but the weights (component families, moves, CAVI, warm starts, sharding) is
the DP-GMM's engine, through its weight-prior seam (:mod:`bayes_dc.clustering.dpgmm.weights`).

Why alpha / T per component: the symmetric Dirichlet(alpha / T) mixture tends to the DP(alpha) mixture as T grows
(Ishwaran & Zarepour 2002, Neal 2000), so ``alpha`` means the same total concentration for both priors, and the
default alpha = 1 is scikit-learn's default ``weight_concentration_prior`` = 1 / n_components. A per-component
concentration below 1 pushes q(pi) of components with few points towards 0, so a small alpha prunes the
components the data do not need. Unlike stick-breaking, the prior is exchangeable: the component order does not
change the ELBO, so the engine does not try reorderings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import Dirichlet, kl_divergence
from torch.special import digamma

from bayes_dc.clustering.dpgmm.backend import DPGMMBackend
from bayes_dc.clustering.dpgmm.weights import WeightPrior
from bayes_dc.config.rules import OptionError
from bayes_dc.config.schema import BACKEND_TRAITS


@dataclass(frozen=True)
class SymmetricDirichlet(WeightPrior):
    """pi ~ Dirichlet(alpha / T, ..., alpha / T) on T weights; q(pi) = Dirichlet(gamma), gamma (T,) float64."""

    alpha: float
    truncation: int

    ordered = False

    @classmethod
    def from_options(cls, *, alpha: float, alpha_prior: tuple[float, float] | None,
                     truncation: int) -> "SymmetricDirichlet":
        if alpha_prior is not None:
            raise OptionError("alpha_prior", "a Gamma prior on alpha is the DP's (stick-breaking); the dirichlet prior "
                                             "takes a fixed alpha: set alpha_prior=None, or use prior='dp'")
        return cls(float(alpha), int(truncation))

    @property
    def per_component(self) -> float:
        """alpha / T: the concentration of each component."""
        return self.alpha / self.truncation

    def update(self, counts: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
        """gamma_k = alpha / T + N_k (T,)."""
        return counts + self.per_component

    def expected_log_weights(self, gamma: torch.Tensor) -> torch.Tensor:
        return digamma(gamma) - digamma(gamma.sum())

    def expected_weights(self, gamma: torch.Tensor) -> torch.Tensor:
        return gamma / gamma.sum()

    def elbo(self, counts: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """sum_k N_k E[log pi_k] - KL(Dirichlet(gamma) || Dirichlet(alpha / T))."""
        prior = Dirichlet(torch.full_like(gamma, self.per_component))
        return (counts * self.expected_log_weights(gamma)).sum() - kl_divergence(Dirichlet(gamma), prior)

    def concentration(self, gamma: torch.Tensor | None) -> float:
        return self.alpha


class DirichletGMMBackend(DPGMMBackend):
    """The finite Bayesian GMM behind the clustering seam: the DP-GMM backend with a symmetric Dirichlet weight prior.
    CAVI only (the Pyro model is the DP's)."""

    name = "dirichlet"
    traits = BACKEND_TRAITS["dirichlet"]

    def __init__(self, truncation: int = 300, *, inference: str = "cavi", **options):
        if inference != "cavi":
            raise OptionError("inference", f"the dirichlet prior is fitted by closed-form CAVI only, got "
                                           f"inference={inference!r}; use inference='cavi', or prior='dp' for SVI")
        super().__init__(truncation, inference=inference, weights=SymmetricDirichlet.from_options, **options)


__all__ = ["DirichletGMMBackend", "SymmetricDirichlet"]
