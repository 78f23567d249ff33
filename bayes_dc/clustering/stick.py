"""Stick-breaking math for the truncated DP mixture: weights, expectations, CAVI updates, ELBO terms. Pure torch.

Truncation T: there are T-1 sticks v_k ~ Beta(1, alpha), k < T-1 (0-based), and the last component takes the
rest of the stick (v_{T-1} = 1), so the T weights sum to 1 exactly:

    pi_k = v_k prod_{j<k} (1 - v_j),   pi_{T-1} = prod_{j<T-1} (1 - v_j).

References: Blei & Jordan (2006), "Variational inference for Dirichlet process mixtures", Bayesian Analysis
1(1) (stick-breaking CAVI, q(v_k) = Beta(g1_k, g2_k), q(alpha) = Gamma(w1, w2)).
The Pyro DP-mixture tutorial's ``mix_weights`` is the sampling counterpart of :func:`mix_weights`.
All functions broadcast over leading dimensions and work in the dtype they are given (use float64 for ELBOs).
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Beta, Gamma, kl_divergence
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


def update_sticks(counts: torch.Tensor, e_alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(v_k) = Beta(1 + N_k, E[alpha] + sum_{j>k} N_j) for the T-1 sticks (Blei & Jordan 2006, eq. 21).

    counts (T,) -> g1, g2 (T-1,) each.
    """
    tail = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])             # (T,) sum_{j>=k}
    return 1.0 + counts[:-1], e_alpha + tail[1:]                                  # (T-1,), (T-1,)


def update_alpha(g1: torch.Tensor, g2: torch.Tensor, alpha_prior: tuple[float, float]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """q(alpha) = Gamma(s1 + T - 1, s2 - sum_k E[log(1 - v_k)]) (Blei & Jordan 2006, §5); returns 0-d tensors."""
    _, e_log_1mv = expected_log_sticks(g1, g2)
    return (torch.tensor(alpha_prior[0] + g1.shape[0], dtype=g1.dtype, device=g1.device),
            alpha_prior[1] - e_log_1mv.sum())


def stick_elbo(counts: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, e_alpha: torch.Tensor,
               e_log_alpha: torch.Tensor) -> torch.Tensor:
    """E[log p(z | v)] + E[log p(v | alpha)] - E[log q(v)] for counts (T,) and sticks (T-1,); a 0-d tensor.

    With random alpha, E[log Beta(v; 1, alpha)] = E[log alpha] + (E[alpha] - 1) E[log(1 - v)], which is the
    fixed-alpha term at alpha = E[alpha] plus (E[log alpha] - log E[alpha]) per stick.
    """
    prior = Beta(torch.ones_like(g1), e_alpha.expand_as(g1))
    sticks = -kl_divergence(Beta(g1, g2), prior).sum() + g1.shape[0] * (e_log_alpha - torch.log(e_alpha))
    return (counts * expected_log_pi(g1, g2)).sum() + sticks


def alpha_kl(shape: torch.Tensor, rate: torch.Tensor, alpha_prior: tuple[float, float]) -> torch.Tensor:
    """KL(q(alpha) = Gamma(shape, rate) || Gamma(s1, s2)), a 0-d tensor."""
    s1, s2 = (torch.as_tensor(v, dtype=shape.dtype, device=shape.device) for v in alpha_prior)
    return kl_divergence(Gamma(shape, rate), Gamma(s1, s2))
