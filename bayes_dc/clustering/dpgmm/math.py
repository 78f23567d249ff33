"""Conjugate Gaussian-component math of the DP-GMM: posteriors, expectations, KLs. Pure torch functions, float64.

Two conjugate priors per component k (T components, d dimensions):

* **Normal-Gamma** (diag: one precision per dimension; spherical: one precision shared by the d dimensions):
  lambda_k ~ Gamma(a0, rate b0), mu_k | lambda_k ~ Normal(m0, 1 / (kappa0 lambda_k)) per dimension
  (Bishop 2006 §10.2 made diagonal; §B for the Gamma).
* **Normal-Wishart** (full): Lambda_k ~ Wishart(W0, nu0), mu_k | Lambda_k ~ Normal(m0, (kappa0 Lambda_k)^{-1})
  (Bishop 2006 §10.2, eqs. 10.58-10.66; §B.79-B.82). Scale matrices are carried as Cholesky factors of
  Psi = W^{-1} (the inverse-Wishart scale, so E[Sigma] = Psi / (nu - d - 1)): ``scale_tril`` L, Psi = L L^T.

Statistics are responsibility-weighted sums over points: counts N_k (T,), sum_x (T, d) = sum_n r_nk x_n and
sum_xx = sum_n r_nk x_n^2 (T, d) diag, sum_n r_nk ||x_n||^2 (T,) spherical, sum_n r_nk x_n x_n^T (T, d, d) full.
Every update below is written from these raw sums, so it stays finite (and equal to the prior) at N_k = 0.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Gamma, kl_divergence
from torch.special import digamma

LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------------------
# Normal-Gamma (diag / spherical)
# ---------------------------------------------------------------------------------------------------------------
def normal_gamma_posterior(counts: torch.Tensor, sum_x: torch.Tensor, sum_xx: torch.Tensor, m0: torch.Tensor,
                           kappa0: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal-Gamma posterior (Bishop 2006 eqs. 10.60-10.63 per dimension).

    kappa = kappa0 + N; m = (kappa0 m0 + sum_x) / kappa; a = a0 + N/2 (spherical: a0 + d N / 2);
    b = b0 + (sum_xx + kappa0 m0^2 - kappa m^2) / 2, which equals b0 + N S / 2 + kappa0 N (xbar - m0)^2 / (2 kappa).
    Shapes: counts, kappa0 (T,); sum_x, m0 (T, d); sum_xx, a0, b0 (T, d) diag or (T,) spherical.
    Returns m (T, d), kappa (T,), a, b (shaped as a0).
    """
    kappa = kappa0 + counts                                                     # (T,)
    m = (kappa0[:, None] * m0 + sum_x) / kappa[:, None]                         # (T, d)
    mean_terms = kappa0[:, None] * m0 ** 2 - kappa[:, None] * m ** 2            # (T, d)
    if a0.dim() == 1:
        scatter = sum_xx + mean_terms.sum(1)                                    # (T,)
        a = a0 + 0.5 * m.shape[1] * counts
    else:
        scatter = sum_xx + mean_terms                                           # (T, d)
        a = a0 + 0.5 * counts[:, None]
    # >= 0 in exact arithmetic; statistics summed in float32 can leave a tiny negative remainder
    return m, kappa, a, b0 + 0.5 * scatter.clamp_min(0.0)


def gamma_expectations(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[lambda] and E[log lambda] under Gamma(a, rate b), elementwise."""
    return a / b, digamma(a) - torch.log(b)


def normal_gamma_expected_loglik(counts: torch.Tensor, sum_x: torch.Tensor, sum_xx: torch.Tensor, m: torch.Tensor,
                                 kappa: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_n r_nk E_q[log Normal(x_n | mu_k, diag(1/lambda_k))] per component, (T,).

    E[lambda (x - mu)^2] = E[lambda] (x - m)^2 + 1/kappa per dimension (Bishop 2006 eq. 10.64, diagonal).
    """
    d = m.shape[1]
    e_lambda, e_log_lambda = gamma_expectations(a, b)
    if a.dim() == 1:
        quad = e_lambda * (sum_xx - 2.0 * (m * sum_x).sum(1) + counts * (m ** 2).sum(1))          # (T,)
        return 0.5 * d * counts * (e_log_lambda - LOG_2PI - 1.0 / kappa) - 0.5 * quad
    quad = e_lambda * (sum_xx - 2.0 * m * sum_x + counts[:, None] * m ** 2)                       # (T, d)
    per_dim = 0.5 * counts[:, None] * (e_log_lambda - LOG_2PI - 1.0 / kappa[:, None]) - 0.5 * quad
    return per_dim.sum(1)


def normal_gamma_kl(m: torch.Tensor, kappa: torch.Tensor, a: torch.Tensor, b: torch.Tensor, m0: torch.Tensor,
                    kappa0: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per component for Normal-Gamma q(mu, lambda) = Gamma(lambda; a, b) prod_d N(mu_d; m_d, 1/(kappa lambda)).

    Shapes: m, m0 (T, d); kappa, kappa0 (T,); a, b, a0, b0 (T, d) diag or (T,) spherical. Returns (T,).
    KL = KL_Gamma + E_q(lambda)[KL(N(m, 1/(kappa lambda)) || N(m0, 1/(kappa0 lambda)))] summed over dimensions;
    the Normal part is 1/2 [kappa0/kappa - 1 - log(kappa0/kappa) + kappa0 E[lambda] (m - m0)^2] per dimension.
    """
    ratio = (kappa0 / kappa)[:, None]                                           # (T, 1)
    spherical = a.dim() == 1
    e_lambda = (a / b)[:, None] if spherical else a / b                         # (T, 1) or (T, d)
    normal = 0.5 * (ratio - 1.0 - torch.log(ratio) + kappa0[:, None] * e_lambda * (m - m0) ** 2)  # (T, d)
    gamma = kl_divergence(Gamma(a, b), Gamma(a0, b0))                           # (T,) or (T, d)
    return normal.sum(-1) + (gamma if spherical else gamma.sum(-1))


# ---------------------------------------------------------------------------------------------------------------
# Normal-Wishart (full)
# ---------------------------------------------------------------------------------------------------------------
def log_det_from_tril(scale_tril: torch.Tensor) -> torch.Tensor:
    """log |L L^T| for Cholesky factors (..., d, d) -> (...,)."""
    return 2.0 * torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)


def psd_cholesky(psi: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of symmetric matrices psi (..., d, d) that are PD in exact arithmetic.

    ``psi = floor + scatter`` with ``floor`` PD and scatter PSD up to rounding; where rounding made a factorisation
    fail, the scatter's negative eigenvalues (rounding noise) are clipped to 0 and the factorisation repeated.
    """
    psi = 0.5 * (psi + psi.transpose(-1, -2))
    tril, info = torch.linalg.cholesky_ex(psi)
    bad = info != 0
    if bad.any():
        scatter = psi[bad] - floor[bad]
        values, vectors = torch.linalg.eigh(scatter)
        clipped = (vectors * values.clamp_min(0.0)[..., None, :]) @ vectors.transpose(-1, -2)
        tril[bad] = torch.linalg.cholesky(floor[bad] + clipped)
    return tril


def normal_wishart_posterior(counts: torch.Tensor, sum_x: torch.Tensor, sum_xx: torch.Tensor, m0: torch.Tensor,
                             kappa0: torch.Tensor, nu0: torch.Tensor, scale_tril0: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal-Wishart posterior (Bishop 2006 eqs. 10.60-10.63), scale as a Cholesky factor.

    kappa = kappa0 + N; nu = nu0 + N; m = (kappa0 m0 + sum_x) / kappa;
    Psi = W^{-1} = Psi0 + sum_xx + kappa0 m0 m0^T - kappa m m^T, which equals Bishop's
    W0^{-1} + N S + kappa0 N / (kappa0 + N) (xbar - m0)(xbar - m0)^T and stays finite at N = 0.
    Shapes: counts, kappa0, nu0 (T,); sum_x, m0 (T, d); sum_xx, scale_tril0 (T, d, d).
    Returns m (T, d), kappa (T,), nu (T,), scale_tril (T, d, d) with Psi = L L^T.
    """
    kappa, nu = kappa0 + counts, nu0 + counts                                   # (T,), (T,)
    m = (kappa0[:, None] * m0 + sum_x) / kappa[:, None]                         # (T, d)
    psi0 = scale_tril0 @ scale_tril0.transpose(-1, -2)                          # (T, d, d)
    outer0 = kappa0[:, None, None] * m0[:, :, None] * m0[:, None, :]
    outer = kappa[:, None, None] * m[:, :, None] * m[:, None, :]
    return m, kappa, nu, psd_cholesky(psi0 + sum_xx + outer0 - outer, psi0)


def expected_log_det_precision(nu: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """E[log |Lambda|] under Wishart(W = Psi^{-1}, nu) (Bishop 2006 eq. 10.65 / B.81): (T,) and (T, d, d) -> (T,).

    sum_{i=1..d} psi((nu + 1 - i) / 2) + d log 2 - log |Psi|.
    """
    d = scale_tril.shape[-1]
    offsets = torch.arange(d, dtype=nu.dtype, device=nu.device)                 # (d,) = i - 1
    return digamma(0.5 * (nu[..., None] - offsets)).sum(-1) + d * LOG_2 - log_det_from_tril(scale_tril)


def wishart_log_normalizer(nu: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """log B(W, nu) of the Wishart density with W = Psi^{-1} (Bishop 2006 eq. B.79), (T,).

    log B = -nu/2 log|W| - nu d / 2 log 2 - log Gamma_d(nu / 2) = nu/2 log|Psi| - nu d / 2 log 2 - log Gamma_d(nu / 2).
    """
    d = scale_tril.shape[-1]
    return 0.5 * nu * log_det_from_tril(scale_tril) - 0.5 * nu * d * LOG_2 - torch.mvlgamma(0.5 * nu, d)


def inverse_quadratic(scale_tril: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """diff^T Psi^{-1} diff = ||L^{-1} diff||^2 for L (T, d, d), diff (T, d) -> (T,)."""
    solved = torch.linalg.solve_triangular(scale_tril, diff[..., None], upper=False)          # (T, d, 1)
    return (solved ** 2).sum((-2, -1))


def normal_wishart_expected_loglik(counts: torch.Tensor, sum_x: torch.Tensor, sum_xx: torch.Tensor,
                                   m: torch.Tensor, kappa: torch.Tensor, nu: torch.Tensor,
                                   scale_tril: torch.Tensor) -> torch.Tensor:
    """sum_n r_nk E_q[log Normal(x_n | mu_k, Lambda_k^{-1})] per component, (T,) (Bishop 2006 eqs. 10.64-10.65, 10.71).

    E[(x - mu)^T Lambda (x - mu)] = d / kappa + nu (x - m)^T Psi^{-1} (x - m); summed over points with weights r_nk
    the quadratic becomes nu Tr(Psi^{-1} M) with M = sum_xx - sum_x m^T - m sum_x^T + N m m^T (T, d, d).
    """
    d = m.shape[1]
    cross = sum_x[:, :, None] * m[:, None, :]                                   # (T, d, d)
    scatter = sum_xx - cross - cross.transpose(-1, -2) + counts[:, None, None] * m[:, :, None] * m[:, None, :]
    trace = torch.diagonal(torch.cholesky_solve(scatter, scale_tril), dim1=-2, dim2=-1).sum(-1)   # (T,)
    e_log_det = expected_log_det_precision(nu, scale_tril)
    return 0.5 * counts * (e_log_det - d * LOG_2PI - d / kappa) - 0.5 * nu * trace


def normal_wishart_kl(m: torch.Tensor, kappa: torch.Tensor, nu: torch.Tensor, scale_tril: torch.Tensor,
                      m0: torch.Tensor, kappa0: torch.Tensor, nu0: torch.Tensor, scale_tril0: torch.Tensor
                      ) -> torch.Tensor:
    """KL(NW(m, kappa, nu, Psi) || NW(m0, kappa0, nu0, Psi0)) per component, (T,) (Bishop 2006 eqs. 10.74, 10.77).

    = E_q(Lambda)[KL(N(m, (kappa Lambda)^{-1}) || N(m0, (kappa0 Lambda)^{-1}))] + KL(Wishart || Wishart), with
    Normal part 1/2 [d kappa0/kappa - d - d log(kappa0/kappa) + kappa0 nu (m - m0)^T Psi^{-1} (m - m0)] and
    Wishart part log B(W, nu) - log B(W0, nu0) + (nu - nu0)/2 E[log|Lambda|] - nu d / 2 + nu/2 Tr(Psi0 Psi^{-1}).
    """
    d = m.shape[1]
    ratio = kappa0 / kappa
    normal = 0.5 * (d * ratio - d - d * torch.log(ratio) + kappa0 * nu * inverse_quadratic(scale_tril, m - m0))
    trace = (torch.linalg.solve_triangular(scale_tril, scale_tril0, upper=False) ** 2).sum((-2, -1))  # Tr(Psi0 Psi^-1)
    wishart = (wishart_log_normalizer(nu, scale_tril) - wishart_log_normalizer(nu0, scale_tril0)
               + 0.5 * (nu - nu0) * expected_log_det_precision(nu, scale_tril) - 0.5 * nu * d + 0.5 * nu * trace)
    return normal + wishart
