"""Mixture-of-factor-analysers components (``--covariance mfa``): Sigma_k = Psi_k + Lambda_k Lambda_k^T.

Each component is a factor analyser with at most q = ``factors`` factors whose number is inferred by an ARD prior
(Ghahramani & Beal, "Variational inference for Bayesian mixtures of factor analysers", NIPS 2000; Bishop,
"Variational principal components", ICANN 1999). Per component k (index dropped), dimension p = 1..d:

    x_n ~ N(0, I_q)                         latent factors of a point of this component
    y_np | x_n ~ N(lambda_p^T x_n + mu_p, 1 / tau_p)       Psi = diag(1 / tau)
    tau_p ~ Gamma(a0, b0_p)                 b0 from the prior scale exactly as the diag family (see ``prior``)
    [lambda_p; mu_p] | tau_p, nu ~ N([0; m0_p], (tau_p P0)^{-1}),   P0 = diag(nu_1 .. nu_q, kappa0)
    nu_j ~ Gamma(c0, e0)                    ARD precision of factor j (shared by the d rows of its loading column)

Differences from Ghahramani & Beal, and why: Psi gets a Gamma prior and a variational factor instead of a point
estimate, so the bound below is an ELBO of the marginal likelihood with no point estimate in it; the loadings
and the mean of a row are scaled by the noise precision tau_p, as the mean of the Normal-Gamma families here is,
so q([lambda_p; mu_p], tau_p) is one conjugate Normal-Gamma per row (a Bayesian linear regression of y_p on
[x; 1]) and a factor's ARD precision measures its loadings in units of the noise of each dimension (whitened
or not, the prior means the same thing).

Mean field: q = prod_n q(z_n) q(x_n | z_n) prod_k [prod_p q(lambda_kp, mu_kp, tau_kp)] prod_{k,j} q(nu_kj), with
q(lambda_p, mu_p | tau_p) = N(w_p, (tau_p Lam)^{-1}), q(tau_p) = Gamma(a, b_p) (Lam (Q, Q), Q = q + 1, shared by the
rows because every row regresses on the same x), q(nu_j) = Gamma(c_j, e_j).

* **q(x_n | z_n = k)** is always at its optimum given q(theta), so it is never stored: precision P = I + M_xx,
  mean P^{-1} (B y_n - M_xq), with M = sum_p E[tau_p w~_p w~_p^T] = W~^T diag(E tau) W~ + d Lam^{-1} and
  B = Lambda^T diag(E tau) (q, d). The E-step logit of component k is then the closed form
  E[log pi_k] + 1/2 sum_p (E log tau_p - log 2 pi) - 1/2 sum_p E tau_p (y_p - m_p)^2 - d/2 Lam^{-1}_qq
  - 1/2 log|P| + 1/2 ||L_P^{-1} (B y_n - M_xq)||^2: a GEMM ``[y^2, y, 1] @ (2d+1, K)`` as for diag plus one
  ``[y, 1] @ (d+1, K q)`` and a norm, O(d q) per point and component (Woodbury without forming any d x d matrix).
* **Statistics** are those of full covariance: N_k, sum_n r_nk y_n and sum_n r_nk y_n y_n^T, so they add over
  chunks, processes (``sharded``) and merges. Expected moments of x under the implied q(x) are affine in them:
  sum r E[x] y^T = A S + beta s^T, sum r E[x x^T] = A S A^T + A s beta^T + beta s^T A^T + N (beta beta^T + P^{-1})
  with E[x_n] = A y_n + beta.
* **Update** (:meth:`MFAFamily.posterior`): given the statistics, coordinate ascent q(x) -> q(lambda, mu, tau)
  -> q(nu), each an exact conditional optimum; started from the current q (``previous``) it can only raise the
  ELBO, so the engine's ELBO never decreases. A component without a previous q (moves, cold starts) starts from
  the probabilistic-PCA solution of its scatter matrix (Tipping & Bishop 1999) and runs more sweeps.
* **Bound** per component: sum_n r_nk [logit - E log pi_k] - KL(q(theta_k) || p(theta_k)); an empty component's q
  is its prior (a valid q outside the mean-field family, KL 0), so its terms are 0 exactly.

Parameters per component: loadings d q, mean d, noise d, Lam (q+1)^2, ARD 2q: a few times d, not d(d+1)/2.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.special import digamma

from bayes_dc.clustering.dpgmm import math as nw
from bayes_dc.clustering.dpgmm.families import Components, FullFamily, SuffStats, register_family
from bayes_dc.config.rules import OptionError

DEFAULT_FACTORS = 4           # q_max: factors per component before ARD prunes the unused ones
ARD_SHAPE0 = 1e-3             # c0, e0: the vague Gamma hyperprior of the ARD precisions (Bishop 1999)
ARD_RATE0 = 1e-3
WARM_SWEEPS = 2               # q(x) -> q(theta) -> q(nu) sweeps per M-step from the current q
COLD_SWEEPS = 10              # sweeps from the PPCA start (a component new to the fit)
ACTIVE_SNR = 1.0              # a factor is active when its loadings explain >= this many noise variances in all


def check_factors(factors: int, dim: int | None = None) -> int:
    """``factors`` if it is an integer in [1, dim] (dim None: not known yet), else :class:`OptionError`."""
    if isinstance(factors, bool) or not isinstance(factors, int) or factors < 1:
        raise OptionError("factors", f"factors per component must be an integer >= 1 for covariance mfa, got "
                                     f"{factors!r}; pass factors=1 or more (default {DEFAULT_FACTORS})")
    if dim is not None and factors > dim:
        raise OptionError("factors", f"factors per component must be at most the feature dimension d = {dim} for "
                                     f"covariance mfa, got {factors}; lower factors or raise pca_dim")
    return int(factors)


@dataclass
class FactorComponents(Components):
    """q (or prior) rows of factor-analyser components (float64, component axis first).

    Inherited: m (T, d) E[mu]; kappa (T,) Lam_qq (the mean's precision factor; kappa0 in the prior); dof (T,) the
    Gamma shape a of every tau_p; scale (T, d) the Gamma rates b_p (E[Psi_pp] = b_p / (a - 1)).
    Added: loadings (T, d, q) E[Lambda]; precision (T, q+1, q+1) Lam, the Normal-Gamma precision of [lambda_p; mu_p]
    (the prior's holds E[P0] = diag(c0 / e0, kappa0)); ard_shape, ard_rate (T, q): q(nu_j) = Gamma(c_j, e_j).
    """

    loadings: torch.Tensor = None
    precision: torch.Tensor = None
    ard_shape: torch.Tensor = None
    ard_rate: torch.Tensor = None


def gamma_kl(a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
    """KL(Gamma(a, rate b) || Gamma(a0, rate b0)) elementwise (Penny 2001)."""
    return ((a - a0) * digamma(a) - torch.lgamma(a) + torch.lgamma(a0) + a0 * (torch.log(b) - torch.log(b0))
            + a * (b0 - b) / b)


@dataclass
class _Latent:
    """q(x_n | z_n = k) implied by q(theta), and the expectations the bound reads (K rows): t, log_t (K, d) E[tau],
    E[log tau]; lam_inv (K, Q, Q); moment M (K, Q, Q); precision P (K, q, q) and its Cholesky factor; B (K, q, d)."""

    t: torch.Tensor
    log_t: torch.Tensor
    lam_inv: torch.Tensor
    moment: torch.Tensor
    precision: torch.Tensor
    chol: torch.Tensor
    project: torch.Tensor

    @property
    def offset(self) -> torch.Tensor:
        """M_xq (K, q): the cross moment of the loadings with the mean."""
        q = self.precision.shape[-1]
        return self.moment[:, :q, q]

    def affine(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E[x_n] = A y_n + beta and Cov = P^{-1}: A (K, q, d), beta (K, q), P^{-1} (K, q, q)."""
        a = torch.cholesky_solve(self.project, self.chol)
        beta = -torch.cholesky_solve(self.offset[:, :, None], self.chol)[:, :, 0]
        return a, beta, torch.cholesky_inverse(self.chol)


def _augmented(c: FactorComponents) -> torch.Tensor:
    """W~ (K, d, Q): the rows [lambda_p; mu_p] of E[loadings | mean]."""
    return torch.cat([c.loadings, c.m[:, :, None]], 2)


def latent(c: FactorComponents) -> _Latent:
    """The optimal q(x | z = k) and the expectations under q(theta) of the rows ``c`` (K rows)."""
    k, d, q = c.loadings.shape
    t, log_t = nw.gamma_expectations(c.dof[:, None], c.scale)                    # (K, d)
    lam_inv = torch.cholesky_inverse(torch.linalg.cholesky(c.precision))        # (K, Q, Q)
    w = _augmented(c)
    moment = w.transpose(1, 2) @ (t[:, :, None] * w) + d * lam_inv              # (K, Q, Q)
    moment = 0.5 * (moment + moment.transpose(1, 2))
    precision = torch.eye(q, dtype=w.dtype, device=w.device) + moment[:, :q, :q]
    chol = torch.linalg.cholesky(precision)
    project = (t[:, :, None] * c.loadings).transpose(1, 2)                      # (K, q, d)
    return _Latent(t, log_t, lam_inv, moment, precision, chol, project)


def _latent_moments(stats: SuffStats, a: torch.Tensor, beta: torch.Tensor, cov: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_n r E[x~ x~^T] (K, Q, Q) and sum_n r E[x~] y^T (K, Q, d) for x~ = [x; 1], E[x_n] = A y_n + beta."""
    n, s, big_s = stats.counts, stats.sum_x, stats.sum_xx
    a_s = a @ big_s                                                              # (K, q, d)
    a_sum = (a @ s[:, :, None])[:, :, 0]                                         # (K, q)
    xx = (a_s @ a.transpose(1, 2) + a_sum[:, :, None] * beta[:, None, :] + beta[:, :, None] * a_sum[:, None, :]
          + n[:, None, None] * (beta[:, :, None] * beta[:, None, :] + cov))
    x1 = a_sum + n[:, None] * beta                                               # (K, q)
    top = torch.cat([xx, x1[:, :, None]], 2)
    bottom = torch.cat([x1, n[:, None]], 1)[:, None, :]
    second = torch.cat([top, bottom], 1)
    cross = torch.cat([a_s + beta[:, :, None] * s[:, None, :], s[:, None, :]], 1)
    return 0.5 * (second + second.transpose(1, 2)), cross


def _prior_precision(prior: FactorComponents, ard_shape: torch.Tensor, ard_rate: torch.Tensor) -> torch.Tensor:
    """diag(E[nu], kappa0) (K, Q)."""
    return torch.cat([ard_shape / ard_rate, prior.kappa[:, None]], 1)


def _theta_update(stats: SuffStats, prior: FactorComponents, second: torch.Tensor, cross: torch.Tensor,
                  e_prior: torch.Tensor, ard_shape: torch.Tensor, ard_rate: torch.Tensor) -> FactorComponents:
    """The Normal-Gamma q([lambda_p; mu_p], tau_p) of every row given q(x) (through its moments) and q(nu)."""
    q = second.shape[-1] - 1
    lam = torch.diag_embed(e_prior) + second                                     # (K, Q, Q)
    rhs = cross.clone()
    rhs[:, q, :] += prior.kappa[:, None] * prior.m                               # E[P0] w~0: only the mean is nonzero
    chol = torch.linalg.cholesky(lam)
    w = torch.cholesky_solve(rhs, chol)                                          # (K, Q, d)
    explained = (w * rhs).sum(1)                                                 # w^T Lam w (K, d)
    residual = torch.diagonal(stats.sum_xx, dim1=-2, dim2=-1) + prior.kappa[:, None] * prior.m ** 2 - explained
    # >= 0 in exact arithmetic (a weighted residual sum of squares plus the prior's share)
    scale = prior.scale + 0.5 * residual.clamp_min(0.0)
    return FactorComponents(m=w[:, q, :].contiguous(), kappa=lam[:, q, q].contiguous(),
                            dof=prior.dof + 0.5 * stats.counts, scale=scale,
                            loadings=w[:, :q, :].transpose(1, 2).contiguous(), precision=lam,
                            ard_shape=ard_shape, ard_rate=ard_rate)


def _ard_update(c: FactorComponents, prior: FactorComponents) -> FactorComponents:
    """q(nu_j) = Gamma(c0 + d/2, e0 + 1/2 sum_p E[tau_p lambda_pj^2])."""
    d, q = c.loadings.shape[1:]
    t = c.dof[:, None] / c.scale                                                  # (K, d)
    lam_inv = torch.cholesky_inverse(torch.linalg.cholesky(c.precision))
    energy = (t[:, :, None] * c.loadings ** 2).sum(1) + d * torch.diagonal(lam_inv, dim1=-2, dim2=-1)[:, :q]
    return replace(c, ard_shape=prior.ard_shape + 0.5 * d, ard_rate=prior.ard_rate + 0.5 * energy)


def _top_eigenpairs(cov: torch.Tensor, q: int, oversample: int = 4, iterations: int = 6
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The q largest eigenvalues (K, q), descending, and their eigenvectors (K, d, q) of symmetric PSD ``cov``
    (K, d, d), by subspace iteration with Rayleigh-Ritz (Halko, Martinsson & Tropp 2011, Alg. 4.4): O(K d^2 q) per
    iteration instead of eigh's O(K d^3), which dominated move rounds at d = 256. Only a starting point of the
    updates needs them, so a few iterations suffice; the fixed start keeps fits deterministic."""
    k, d, _ = cov.shape
    width = min(d, q + oversample)
    start = torch.randn(d, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis = torch.linalg.qr(start.to(cov).expand(k, d, width))[0]
    for _ in range(iterations):
        basis = torch.linalg.qr(cov @ basis)[0]
    values, vectors = torch.linalg.eigh(basis.transpose(1, 2) @ cov @ basis)    # (K, w), ascending
    return values[:, -q:].flip(1).clamp_min(0.0), basis @ vectors[:, :, -q:].flip(2)


def _ppca_start(stats: SuffStats, prior: FactorComponents, q: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A q(x) and q(nu) to start from: the factor-analysis posterior of the probabilistic-PCA fit of each row's
    scatter (Tipping & Bishop 1999), shrunk towards the prior noise so that tiny components stay well posed.
    Returns A (K, q, d), beta (K, q), P^{-1} (K, q, q), ard shape and rate (K, q)."""
    n, d = stats.counts, stats.sum_x.shape[1]
    mean = stats.sum_x / n[:, None]
    scatter = stats.sum_xx - n[:, None, None] * mean[:, :, None] * mean[:, None, :]
    cov = (scatter + torch.diag_embed(2.0 * prior.scale)) / (n + 2.0 * prior.dof)[:, None, None]
    cov = 0.5 * (cov + cov.transpose(1, 2))
    top, axes = _top_eigenpairs(cov, q)                                          # (K, q), (K, d, q)
    trace = torch.diagonal(cov, dim1=-2, dim2=-1).sum(1)
    # the mean of the other eigenvalues (PPCA's noise); with q = d there are none: half the smallest
    rest = ((trace - top.sum(1)) / (d - q) if d > q else 0.5 * top[:, -1]).clamp_min(1e-12)
    load = axes * (top - rest[:, None]).clamp_min(0.0).sqrt()[:, None, :]        # (K, d, q)
    variance = torch.diagonal(cov, dim1=-2, dim2=-1)
    noise = (variance - (load ** 2).sum(2)).clamp_min(1e-3 * variance)           # (K, d)
    scaled = load / noise[:, :, None]                                            # Psi^{-1} Lambda
    precision = torch.eye(q, dtype=cov.dtype, device=cov.device) + load.transpose(1, 2) @ scaled
    chol = torch.linalg.cholesky(precision)
    a = torch.cholesky_solve(scaled.transpose(1, 2), chol)                       # (K, q, d)
    beta = -(a @ mean[:, :, None])[:, :, 0]
    ard_rate = prior.ard_rate + 0.5 * (load * scaled).sum(1)
    return a, beta, torch.cholesky_inverse(chol), prior.ard_shape + 0.5 * d, ard_rate


@register_family
class MFAFamily(FullFamily):
    """Factor-analyser components Psi_k + Lambda_k Lambda_k^T with ARD over at most ``factors`` factors.

    Statistics (design, chunked sums, sharding, merges) are full covariance's; everything else is here."""

    name = "mfa"
    options = ("factors",)
    needs_covariance_matrix = False

    def __init__(self, dim: int, factors: int = DEFAULT_FACTORS):
        super().__init__(dim)
        self.factors = check_factors(factors, self.dim)

    # -- posterior -------------------------------------------------------------------------------------------
    def _posterior(self, stats: SuffStats, prior: FactorComponents, previous: FactorComponents | None = None
                   ) -> FactorComponents:
        # rows whose current q has loadings continue from it (never lowering the ELBO); a q equal to the prior
        # (all loadings 0) is a fixed point of the updates, so those, and rows without a previous q, start from PPCA
        warm = (torch.zeros_like(stats.counts, dtype=torch.bool) if previous is None
                else previous.loadings.abs().amax((1, 2)) > 0)
        sweeps = torch.where(warm, WARM_SWEEPS, COLD_SWEEPS)
        if bool(warm.all()):
            a, beta, cov = latent(previous).affine()
            ard_shape, ard_rate = previous.ard_shape, previous.ard_rate
        else:
            a, beta, cov, ard_shape, ard_rate = _ppca_start(stats, prior, self.factors)
            if bool(warm.any()):
                rows = warm.nonzero()[:, 0]
                a[rows], beta[rows], cov[rows] = latent(previous.rows(rows)).affine()
                ard_shape[rows], ard_rate[rows] = previous.ard_shape[rows], previous.ard_rate[rows]
        c = None
        for sweep in range(int(sweeps.max())):
            second, cross = _latent_moments(stats, a, beta, cov)
            new = _ard_update(_theta_update(stats, prior, second, cross, _prior_precision(prior, ard_shape, ard_rate),
                                            ard_shape, ard_rate), prior)
            # rows that have done their sweeps keep their q (a warm row's extra sweeps would also be fine, but the
            # count per row keeps a cold start's cost off the ordinary M-step)
            c = new if c is None else new.where(sweep < sweeps, c)
            ard_shape, ard_rate = c.ard_shape, c.ard_rate
            if sweep + 1 < int(sweeps.max()):
                a, beta, cov = latent(c).affine()
        return c

    def posterior(self, stats: SuffStats, prior: Components, previous: Components | None = None) -> Components:
        occupied = stats.counts > 0
        rows = occupied.nonzero()[:, 0]
        if rows.shape[0] == 0:
            return prior
        fitted = self._posterior(stats.rows(rows), prior.rows(rows), None if previous is None else previous.rows(rows))
        return fitted if rows.shape[0] == stats.counts.shape[0] else prior.put_rows(rows, fitted)

    # -- bound -------------------------------------------------------------------------------------------------
    def expected_loglik(self, stats: SuffStats, q: FactorComponents) -> torch.Tensor:
        """sum_n r_nk max_{q(x_n)} E[log p(y_n, x_n | theta_k) - log q(x_n)] per component (T,) (see module)."""
        d = self.dim
        lat = latent(q)
        n, s, big_s = stats.counts, stats.sum_x, stats.sum_xx
        b, off = lat.project, lat.offset                                         # (K, q, d), (K, q)
        b_s = (b @ s[:, :, None])[:, :, 0]                                       # (K, q)
        h = (b @ big_s @ b.transpose(1, 2) - b_s[:, :, None] * off[:, None, :] - off[:, :, None] * b_s[:, None, :]
             + n[:, None, None] * off[:, :, None] * off[:, None, :])             # sum r h h^T (K, q, q)
        trace = (torch.cholesky_inverse(lat.chol) * h).sum((1, 2))
        log_det_p = 2.0 * torch.log(torch.diagonal(lat.chol, dim1=-2, dim2=-1)).sum(1)
        per_point = 0.5 * (lat.log_t - nw.LOG_2PI).sum(1) - 0.5 * lat.moment[:, -1, -1] - 0.5 * log_det_p
        quad = -0.5 * (lat.t * torch.diagonal(big_s, dim1=-2, dim2=-1)).sum(1) + (lat.t * q.m * s).sum(1)
        out = n * per_point + quad + 0.5 * trace
        return torch.where(n > 0, out, torch.zeros_like(out))

    def kl(self, q: FactorComponents, prior: FactorComponents) -> torch.Tensor:
        """KL(q(Lambda, mu, Psi, nu) || p) per component (T,)."""
        d = self.dim
        dim_q = q.precision.shape[-1]
        t = q.dof[:, None] / q.scale
        gamma = gamma_kl(q.dof[:, None].expand_as(q.scale), q.scale, prior.dof[:, None].expand_as(prior.scale),
                         prior.scale).sum(1)
        e_prior = _prior_precision(prior, q.ard_shape, q.ard_rate)               # (K, Q)
        e_log_det_prior = (digamma(q.ard_shape) - torch.log(q.ard_rate)).sum(1) + torch.log(prior.kappa)
        chol = torch.linalg.cholesky(q.precision)
        lam_inv = torch.cholesky_inverse(chol)
        log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(1)
        diff = _augmented(q) - _augmented(prior)                                 # (K, d, Q): prior loadings are 0
        normal = (0.5 * d * ((e_prior * torch.diagonal(lam_inv, dim1=-2, dim2=-1)).sum(1) - dim_q + log_det
                             - e_log_det_prior)
                  + 0.5 * (t[:, :, None] * diff ** 2 * e_prior[:, None, :]).sum((1, 2)))
        ard = gamma_kl(q.ard_shape, q.ard_rate, prior.ard_shape, prior.ard_rate).sum(1)
        return gamma + normal + ard

    def component_terms(self, stats: SuffStats, q: Components, prior: Components) -> torch.Tensor:
        terms = self.expected_loglik(stats, q) - self.kl(q, prior)
        # an empty component's q is its prior (KL 0), not the mean-field row stored for it
        return torch.where(stats.counts > 0, terms, torch.zeros_like(terms))

    # -- E-step ----------------------------------------------------------------------------------------------
    def logit_operator(self, q: FactorComponents, e_log_pi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k, d, f = q.loadings.shape
        lat = latent(q)
        log_det_p = 2.0 * torch.log(torch.diagonal(lat.chol, dim1=-2, dim2=-1)).sum(1)
        const = (e_log_pi + 0.5 * (lat.log_t - nw.LOG_2PI).sum(1) - 0.5 * (lat.t * q.m ** 2).sum(1)
                 - 0.5 * d * lat.lam_inv[:, -1, -1] - 0.5 * log_det_p)           # (K,)
        diag = torch.cat([-0.5 * lat.t, lat.t * q.m, const[:, None]], 1).T        # (2d+1, K)
        g = torch.linalg.solve_triangular(lat.chol, lat.project, upper=False)     # (K, q, d): L_P^{-1} B
        g0 = torch.linalg.solve_triangular(lat.chol, lat.offset[:, :, None], upper=False)[:, :, 0]   # (K, q)
        low_rank = torch.cat([g.permute(2, 0, 1).reshape(d, k * f), -g0.reshape(1, k * f)])          # (d+1, K q)
        # the diagonal operator last: sweeps read the number of components from op[-1]'s last axis
        return low_rank.float().contiguous(), diag.float().contiguous()

    def logits(self, op: tuple[torch.Tensor, ...], xc: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        low_rank, diag = op
        c, d, k = xc.shape[0], self.dim, diag.shape[1]
        out = torch.addmm(diag[2 * d], xc * xc, diag[:d]).addmm_(xc, diag[d:2 * d])        # (c, K)
        y = torch.addmm(low_rank[d], xc, low_rank[:d]).view(c, k, -1)                        # (c, K, q)
        return out.add_((y * y).sum(2), alpha=0.5)

    def memory_bytes(self, truncation: int) -> int:
        # (T, d, d) statistics: the state's, a merge batch's and the moment temporaries of the update
        return 6 * 8 * truncation * self.dim ** 2

    # -- prior -----------------------------------------------------------------------------------------------
    def prior(self, mean, expected_cov, dof, kappa0, truncation):
        d, q = self.dim, self.factors
        a0 = torch.tensor(0.5 * dof, dtype=torch.float64, device=mean.device)
        kappa = torch.tensor(float(kappa0), dtype=torch.float64, device=mean.device)
        ard_shape = torch.full((truncation, q), ARD_SHAPE0, dtype=torch.float64, device=mean.device)
        ard_rate = torch.full_like(ard_shape, ARD_RATE0)
        e_prior = torch.cat([ard_shape[0] / ard_rate[0], kappa.reshape(1)])
        return FactorComponents(
            m=mean.expand(truncation, d).clone(), kappa=kappa.expand(truncation).clone(),
            dof=a0.expand(truncation).clone(), scale=(expected_cov * (a0 - 1.0)).expand(truncation, d).clone(),
            loadings=torch.zeros(truncation, d, q, dtype=torch.float64, device=mean.device),
            precision=torch.diag(e_prior).expand(truncation, q + 1, q + 1).clone(),
            ard_shape=ard_shape, ard_rate=ard_rate)

    def expected_cov_from_data(self, data_cov: torch.Tensor) -> torch.Tensor:
        return data_cov.diagonal().clone() if data_cov.dim() == 2 else data_cov

    def rescaled(self, prior: Components, factor: float) -> Components:
        return replace(prior, scale=prior.scale * factor)

    def scale_terms(self, q: Components, unit_prior: Components) -> tuple[torch.Tensor, torch.Tensor]:
        # E[log Gamma(tau_p; a0, s b1_p)] = a0 log s - s b1_p E[tau_p] + terms free of s
        return unit_prior.dof * self.dim, (unit_prior.scale * q.dof[:, None] / q.scale).sum(1)

    # -- reporting -------------------------------------------------------------------------------------------
    def expected_precision(self, q: Components) -> torch.Tensor:
        """E[tau] (T, d): the precision of the noise Psi (the covariance is Psi + Lambda Lambda^T)."""
        return q.dof[:, None] / q.scale

    def factor_strength(self, q: FactorComponents) -> torch.Tensor:
        """sum_p E[tau_p] E[lambda_pj]^2 (T, q): the variance factor j explains, in units of the noise variance of
        each dimension; ARD drives an unused factor's to 0."""
        return (q.dof[:, None, None] / q.scale[:, :, None] * q.loadings ** 2).sum(1)

    def active_factors(self, q: FactorComponents) -> torch.Tensor:
        """Number of factors per component (T,) whose :meth:`factor_strength` is at least :data:`ACTIVE_SNR`."""
        return (self.factor_strength(q) >= ACTIVE_SNR).sum(1)


__all__ = ["DEFAULT_FACTORS", "FactorComponents", "MFAFamily", "check_factors", "gamma_kl", "latent"]
