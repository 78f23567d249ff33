"""Stick-breaking and conjugate-exponential-family math for the truncated DP-GMM. Pure torch functions.

Truncation T: there are T-1 sticks v_k ~ Beta(1, alpha), k < T-1 (0-based), and the last component takes the
rest of the stick (v_{T-1} = 1), so the T weights sum to 1 exactly:

    pi_k = v_k prod_{j<k} (1 - v_j),   pi_{T-1} = prod_{j<T-1} (1 - v_j).

References: Blei & Jordan (2006), "Variational inference for Dirichlet process mixtures", Bayesian Analysis
1(1) (stick-breaking CAVI, q(v_k) = Beta(g1_k, g2_k)); Bishop (2006) §10.2 and §B (Gamma, Beta, Normal-Gamma).
The Pyro DP-mixture tutorial's ``mix_weights`` is the sampling counterpart of :func:`mix_weights`.
All functions broadcast over leading dimensions and work in the dtype they are given (use float64 for ELBOs).
"""
from __future__ import annotations

import math

import torch
from torch.special import digamma

LOG_2PI = math.log(2.0 * math.pi)


def mix_weights(v: torch.Tensor) -> torch.Tensor:
    """Stick proportions (..., T-1) -> mixture weights (..., T); the last weight is the remaining stick."""
    one_minus_cumprod = torch.cumprod(1.0 - v, dim=-1)                        # (..., T-1)
    # pi_k = v_k * prod_{j<k}(1-v_j): pad the running product with 1 on the left and v with 1 on the right.
    remaining = torch.nn.functional.pad(one_minus_cumprod, (1, 0), value=1.0)  # (..., T)
    return torch.nn.functional.pad(v, (0, 1), value=1.0) * remaining           # (..., T)


def expected_log_sticks(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[log v] and E[log(1-v)] under v ~ Beta(g1, g2); shapes (T-1,) each."""
    total = digamma(g1 + g2)
    return digamma(g1) - total, digamma(g2) - total


def expected_log_pi(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """E[log pi_k] under q(v_k) = Beta(g1_k, g2_k): (T-1,) sticks -> (T,) components.

    E[log pi_k] = E[log v_k] + sum_{j<k} E[log(1 - v_j)]; the last component has no stick of its own
    (Blei & Jordan 2006, eq. 18 with q(v_T = 1) = 1).
    """
    e_log_v, e_log_1mv = expected_log_sticks(g1, g2)                          # (T-1,), (T-1,)
    before = torch.nn.functional.pad(torch.cumsum(e_log_1mv, dim=-1), (1, 0))  # (T,) sum_{j<k}
    return torch.nn.functional.pad(e_log_v, (0, 1)) + before                   # (T,)


def expected_weights(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """E[pi] (T,) under independent Beta(g1, g2) sticks (T-1,); sums to 1 because the last stick absorbs the rest."""
    return mix_weights(g1 / (g1 + g2))


def beta_kl(g1: torch.Tensor, g2: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """KL(Beta(g1, g2) || Beta(a, b)), elementwise."""
    a = torch.as_tensor(a, dtype=g1.dtype, device=g1.device)
    b = torch.as_tensor(b, dtype=g1.dtype, device=g1.device)
    log_beta_q = torch.lgamma(g1) + torch.lgamma(g2) - torch.lgamma(g1 + g2)
    log_beta_p = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    total = digamma(g1 + g2)
    return (log_beta_p - log_beta_q + (g1 - a) * (digamma(g1) - total) + (g2 - b) * (digamma(g2) - total))


def gamma_kl(a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor | float, b0: torch.Tensor | float) -> torch.Tensor:
    """KL(Gamma(a, rate=b) || Gamma(a0, rate=b0)), elementwise."""
    a0 = torch.as_tensor(a0, dtype=a.dtype, device=a.device)
    b0 = torch.as_tensor(b0, dtype=a.dtype, device=a.device)
    return ((a - a0) * digamma(a) - torch.lgamma(a) + torch.lgamma(a0)
            + a0 * (torch.log(b) - torch.log(b0)) + a * (b0 - b) / b)


def normal_gamma_kl(m: torch.Tensor, beta: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    m0: torch.Tensor, beta0: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per component for Normal-Gamma q(mu, lambda) = Gamma(lambda; a, b) prod_d N(mu_d; m_d, 1/(beta lambda)).

    Shapes: m, m0 (T, d); beta, beta0 (T,); a, b, a0, b0 either (T, d) (diag: one precision per dimension)
    or (T,) (spherical: one precision shared by the d dimensions). Returns (T,).

    KL = KL_Gamma + E_q(lambda)[KL(N(m, 1/(beta lambda)) || N(m0, 1/(beta0 lambda)))] summed over dimensions;
    the Normal part is 1/2 [beta0/beta - 1 - log(beta0/beta) + beta0 E[lambda] (m - m0)^2] per dimension.
    """
    beta, beta0 = beta.unsqueeze(-1), torch.as_tensor(beta0, dtype=m.dtype, device=m.device)
    beta0 = beta0.unsqueeze(-1) if beta0.dim() else beta0
    ratio = beta0 / beta                                                      # (T, 1)
    spherical = a.dim() == 1
    e_lambda = (a / b).unsqueeze(-1) if spherical else a / b                  # (T, 1) or (T, d)
    normal = 0.5 * (ratio - 1.0 - torch.log(ratio) + beta0 * e_lambda * (m - m0) ** 2)  # (T, d)
    gamma = gamma_kl(a, b, a0, b0)                                            # (T,) or (T, d)
    return normal.sum(-1) + (gamma if spherical else gamma.sum(-1))
