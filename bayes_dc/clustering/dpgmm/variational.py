"""The mean-field posterior q of the DP-GMM, its global coordinate updates and the closed-form ELBO.

Model (truncation T, x_n in R^d; design.md "The DP-GMM"):
    v_k ~ Beta(1, alpha), k < T-1;  pi = mix_weights(v)  (the last component takes the remaining stick)
    alpha fixed, or alpha ~ Gamma(s1, s2)
    (mu_k, Sigma_k) ~ Normal-Wishart (full) or Normal-Gamma (diag / spherical), see ``families``
    z_n ~ Categorical(pi);  x_n | z_n = k ~ Normal(mu_k, Sigma_k)
q = prod_k Beta(v_k; g1_k, g2_k) * prod_k q(mu_k, Sigma_k) * prod_n Categorical(z_n; r_n) [* Gamma(alpha; w1, w2)].
Updates: Blei & Jordan (2006) for the sticks and alpha; Bishop (2006) §10.2 for the components.
The weights are read through the prior's :class:`.weights.WeightPrior` (``prior.weight_prior``), so another prior on
pi (a finite symmetric Dirichlet) shares everything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bayes_dc.clustering.dpgmm.families import Components, CovarianceFamily, SuffStats
from bayes_dc.clustering.dpgmm.prior import DPGMMPrior


@dataclass
class DPGMMParams:
    """Variational parameters of q (float64): ``components`` (T rows, see :class:`.families.Components`) and
    ``weights``, q(pi) as the prior's :class:`.weights.WeightPrior` defines it (stick-breaking: :class:`.weights.StickParams`,
    sticks g1, g2 (T-1,) and q(alpha) = Gamma(alpha_shape, alpha_rate) or None when alpha is fixed)."""

    components: Components
    weights: Any

    # the stick-breaking parameters by name (the Pyro model and guide of the DP read and set them)
    @property
    def g1(self) -> torch.Tensor:
        return self.weights.g1

    @property
    def g2(self) -> torch.Tensor:
        return self.weights.g2

    @property
    def alpha_shape(self) -> torch.Tensor | None:
        return self.weights.alpha_shape

    @property
    def alpha_rate(self) -> torch.Tensor | None:
        return self.weights.alpha_rate


def expected_alpha(prior: DPGMMPrior, q: DPGMMParams | None) -> float:
    """The concentration in force (E[alpha]; the prior's when q has no q(alpha) yet)."""
    return prior.weight_prior.concentration(None if q is None else q.weights)


def m_step(family: CovarianceFamily, stats: SuffStats, prior: DPGMMPrior, q_old: DPGMMParams | None = None
           ) -> DPGMMParams:
    """All global coordinate updates given the statistics: components, then the weights (sticks, then alpha).

    Each update is the exact conditional optimum of the ELBO, so the ELBO does not decrease. The weights start from
    ``q_old``'s q(pi) (its E[alpha]; the prior's on the first step).
    """
    components = family.posterior(stats, prior.components, None if q_old is None else q_old.components)
    return DPGMMParams(components, prior.weight_prior.update(stats.counts, None if q_old is None else q_old.weights))


def global_terms(stats: SuffStats, q: DPGMMParams, prior: DPGMMPrior) -> torch.Tensor:
    """The weights' part of the ELBO (0-d): E[log p(z|pi)] + E[log p(pi)] - E[log q(pi)] (stick-breaking: minus
    KL(alpha))."""
    return prior.weight_prior.elbo(stats.counts, q.weights)


def elbo(family: CovarianceFamily, stats: SuffStats, q: DPGMMParams, prior: DPGMMPrior) -> float:
    """The full ELBO (every log-normaliser included) from sufficient statistics, in closed form (float64).

    ELBO = sum_k (E[log p(x | z, mu_k, Sigma_k)] - KL(q(mu_k, Sigma_k) || p)) + E[log p(z | pi)] + E[log p(pi)]
           - E[log q(pi)] + H[q(z)]  (stick-breaking: pi from the sticks v, minus KL(q(alpha) || p(alpha))).
    """
    components = family.component_terms(stats, q.components, prior.components).sum()
    return float(components + global_terms(stats, q, prior)) + float(stats.entropy)
