"""The mean-field posterior q of the DP-GMM, its global coordinate updates and the closed-form ELBO.

Model (truncation T, x_n in R^d; design.md "The DP-GMM"):
    v_k ~ Beta(1, alpha), k < T-1;  pi = mix_weights(v)  (the last component takes the remaining stick)
    alpha fixed, or alpha ~ Gamma(s1, s2)
    (mu_k, Sigma_k) ~ Normal-Wishart (full) or Normal-Gamma (diag / spherical), see ``families``
    z_n ~ Categorical(pi);  x_n | z_n = k ~ Normal(mu_k, Sigma_k)
q = prod_k Beta(v_k; g1_k, g2_k) * prod_k q(mu_k, Sigma_k) * prod_n Categorical(z_n; r_n) [* Gamma(alpha; w1, w2)].
Updates: Blei & Jordan (2006) for the sticks and alpha; Bishop (2006) §10.2 for the components.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bayes_dc.clustering import stick
from bayes_dc.clustering.dpgmm.families import Components, CovarianceFamily, SuffStats
from bayes_dc.clustering.dpgmm.prior import DPGMMPrior


@dataclass
class DPGMMParams:
    """Variational parameters of q (float64): ``components`` (T rows, see :class:`.families.Components`); sticks
    g1, g2 (T-1,); q(alpha) = Gamma(alpha_shape, alpha_rate) as 0-d tensors, or None when alpha is fixed."""

    components: Components
    g1: torch.Tensor
    g2: torch.Tensor
    alpha_shape: torch.Tensor | None = None
    alpha_rate: torch.Tensor | None = None


def expected_alpha(prior: DPGMMPrior, q: DPGMMParams | None) -> tuple[torch.Tensor, torch.Tensor]:
    """E[alpha] and E[log alpha] (0-d float64); the prior's alpha when alpha is fixed or q has no q(alpha) yet."""
    device = prior.components.m.device
    if q is None or q.alpha_shape is None:
        if prior.alpha_prior is None:
            alpha = torch.tensor(prior.alpha, dtype=torch.float64, device=device)
            return alpha, torch.log(alpha)
        shape, rate = (torch.tensor(float(v), dtype=torch.float64, device=device) for v in prior.alpha_prior)
    else:
        shape, rate = q.alpha_shape, q.alpha_rate
    return shape / rate, torch.special.digamma(shape) - torch.log(rate)


def m_step(family: CovarianceFamily, stats: SuffStats, prior: DPGMMPrior, q_old: DPGMMParams | None = None
           ) -> DPGMMParams:
    """All global coordinate updates given the statistics: components, then sticks, then alpha.

    Each update is the exact conditional optimum of the ELBO, so the ELBO does not decrease. The sticks use
    E[alpha] of ``q_old`` (or of the prior on the first step).
    """
    components = family.posterior(stats, prior.components, None if q_old is None else q_old.components)
    e_alpha, _ = expected_alpha(prior, q_old)
    g1, g2 = stick.update_sticks(stats.counts, e_alpha)
    q = DPGMMParams(components, g1, g2)
    if prior.alpha_prior is not None:
        q.alpha_shape, q.alpha_rate = stick.update_alpha(g1, g2, prior.alpha_prior)
    return q


def global_terms(stats: SuffStats, q: DPGMMParams, prior: DPGMMPrior) -> torch.Tensor:
    """The stick-breaking and alpha part of the ELBO (0-d): E[log p(z|v)] + E[log p(v|alpha)] - E[log q(v)] - KL(alpha)."""
    e_alpha, e_log_alpha = expected_alpha(prior, q)
    total = stick.stick_elbo(stats.counts, q.g1, q.g2, e_alpha, e_log_alpha)
    if q.alpha_shape is not None:
        total = total - stick.alpha_kl(q.alpha_shape, q.alpha_rate, prior.alpha_prior)
    return total


def elbo(family: CovarianceFamily, stats: SuffStats, q: DPGMMParams, prior: DPGMMPrior) -> float:
    """The full ELBO (every log-normaliser included) from sufficient statistics, in closed form (float64).

    ELBO = sum_k (E[log p(x | z, mu_k, Sigma_k)] - KL(q(mu_k, Sigma_k) || p)) + E[log p(z | v)] + E[log p(v | alpha)]
           - E[log q(v)] - KL(q(alpha) || p(alpha)) + H[q(z)].
    """
    components = family.component_terms(stats, q.components, prior.components).sum()
    return float(components + global_terms(stats, q, prior)) + float(stats.entropy)

