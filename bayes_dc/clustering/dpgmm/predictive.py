"""Posterior predictive densities of the DP-GMM, and the probability that a new point starts a new component.

Under q, each component's (mu, Sigma) is Normal-Wishart (full) or Normal-Gamma (diag, spherical), so its
predictive density p_k(x) = E_q[N(x | mu_k, Sigma_k)] is a Student t (Murphy 2007, "Conjugate Bayesian analysis
of the Gaussian distribution", eqs. 100 and 258):

* full: t_{nu - d + 1}(m, Psi (kappa + 1) / (kappa (nu - d + 1))), Psi = L L^T the inverse-Wishart scale;
* diag: per dimension t_{2a}(m, b (kappa + 1) / (a kappa)), the d dimensions independent;
* spherical: a d-variate t_{2a}(m, b (kappa + 1) / (a kappa) I) (one precision shared by the dimensions).

**Novelty** (the Chinese-restaurant "new table" probability). The stick mass that the occupied components leave
over, w_new = 1 - sum_k E[pi_k] (about alpha / (N + alpha)), is the prior probability that a next point starts
a component of its own, whose predictive is the prior predictive p_0 (the same t with the prior's parameters).
So

    P(new | x) = w_new p_0(x) / (w_new p_0(x) + sum_k E[pi_k] p_k(x)),

and a point is flagged novel when P(new | x) > :data:`NOVELTY_THRESHOLD` = 0.5: starting a new component
explains it better than all the existing ones together. The prior is broad (E[Sigma] = prior scale x the data
covariance, mean spread 1 / kappa0 times that), so p_0 is small everywhere and only a point far from every
component in units of that component's own spread gets there; w_new ~ alpha / N makes the test stricter as N
grows, as the CRP does.
"""
from __future__ import annotations

import math

import torch

NOVELTY_THRESHOLD = 0.5            # flag when a new component is more probable than every existing one together
_CHUNK_ELEMENTS = 1 << 22          # rows x components x d per block of the full-covariance solve


def _multivariate_t(maha: torch.Tensor, log_det: torch.Tensor, nu: torch.Tensor, d: int) -> torch.Tensor:
    """log t_nu density from the Mahalanobis distance (B, K) under the scale matrix, its log det (K,) and nu (K,)."""
    norm = torch.lgamma(0.5 * (nu + d)) - torch.lgamma(0.5 * nu) - 0.5 * d * torch.log(nu * math.pi) - 0.5 * log_det
    return norm - 0.5 * (nu + d) * torch.log1p(maha / nu)


def log_predictive(covariance: str, params: dict, xc: torch.Tensor) -> torch.Tensor:
    """log p_k(x) (B, K) float64 of points xc (B, d) under the Student-t predictives of K components.

    ``params``: float64 ``m`` (K, d), ``kappa`` (K,), ``dof`` and ``scale`` as in
    :class:`~bayes_dc.clustering.dpgmm.families.Components` (full: nu (K,), Cholesky factor L (K, d, d); diag: a, b
    (K, d); spherical: a, b (K,)), in the same coordinates as xc.
    """
    if covariance == "mfa":
        # q(Lambda, mu, Psi) of a factor analyser has no closed-form predictive (nor does its prior)
        raise ValueError("the posterior predictive (novelty) is not available for covariance mfa; fit with "
                         "--covariance diag or full to score novelty")
    x = xc.to(torch.float64)
    m, kappa, dof, scale = (params[key].to(x.device, torch.float64) for key in ("m", "kappa", "dof", "scale"))
    d = x.shape[1]
    if covariance == "full":
        nu = dof - d + 1.0                                                         # (K,)
        factor = (kappa + 1.0) / (kappa * nu)                                      # (K,) scale = factor Psi
        eye = torch.eye(d, dtype=x.dtype, device=x.device).expand_as(scale)
        inverse = torch.linalg.solve_triangular(scale, eye, upper=False)          # (K, d, d) L^{-1}
        log_det = d * torch.log(factor) + 2.0 * torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)
        rows = max(1, _CHUNK_ELEMENTS // max(1, m.shape[0] * d))
        maha = torch.cat([(torch.einsum("kij,bkj->bki", inverse, chunk[:, None, :] - m[None]) ** 2).sum(-1)
                          for chunk in x.split(rows)]) / factor                   # (B, K)
        return _multivariate_t(maha, log_det, nu, d)
    spread = ((kappa + 1.0) / kappa).view(-1, *([1] * (scale.dim() - 1)))
    var = scale * spread / dof                                                     # (K, d) diag, (K,) spherical
    nu = 2.0 * dof
    if covariance == "spherical":
        maha = torch.cdist(x, m) ** 2 / var                                        # (B, K)
        return _multivariate_t(maha, d * torch.log(var), nu, d)
    if covariance != "diag":
        raise ValueError(f"unknown covariance {covariance!r}; choose one of full, diag, spherical")
    z = (x[:, None, :] - m[None]) ** 2 / var[None]                                 # (B, K, d)
    per_dim = (torch.lgamma(0.5 * (nu + 1.0)) - torch.lgamma(0.5 * nu) - 0.5 * torch.log(nu * math.pi * var))[None] \
        - 0.5 * (nu + 1.0)[None] * torch.log1p(z / nu[None])
    return per_dim.sum(-1)


def new_component_probability(predictor: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(new | x) (B,), log p(x) (B,)) float64 for points x (B, d) under a fit's ``predictor`` (its
    ``"predictive"`` entry, :meth:`~bayes_dc.clustering.dpgmm.engine.DPGMM.predictor`); see the module docstring.
    log p(x) is the whole posterior predictive density, new component included."""
    pred = predictor["predictive"]
    xc = x.to(torch.float64) - predictor["shift"].to(x.device, torch.float64)
    joined = torch.cat([log_predictive(predictor["covariance"], pred["components"], xc)
                        + pred["log_weights"].to(xc.device, torch.float64)[None],
                        log_predictive(predictor["covariance"], pred["prior"], xc) + pred["log_new_weight"]], 1)
    log_density = torch.logsumexp(joined, 1)                                        # (B,)
    return torch.exp(joined[:, -1] - log_density), log_density


__all__ = ["NOVELTY_THRESHOLD", "log_predictive", "new_component_probability"]
