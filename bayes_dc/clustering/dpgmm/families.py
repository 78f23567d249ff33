"""Covariance families of the DP-GMM components: full (Normal-Wishart), diag and spherical (Normal-Gamma).

A family is a small stateless object (it knows d) that owns everything that differs between covariance types,
so the engine, the sweep and the moves stay generic:

* the per-chunk **design matrix** whose responsibility-weighted column sums are the sufficient statistics,
  ``[second moments, x, 1]`` with second moments x*x (diag, d columns), ||x||^2 (spherical, 1 column) or the
  upper triangle of x x^T (full, d(d+1)/2 columns);
* the closed-form **posterior** from statistics, the **expected log-likelihood** and the **KL** terms of the bound
  (math in :mod:`.math`);
* the **E-step operator**: float32 tensors from which one GEMM per chunk gives E_q[log pi_k + log N(x | mu_k,
  Sigma_k)] for a set of components (diag/spherical: ``design @ W``; full: ``||x U^T - U m||^2`` with
  U_k = sqrt(nu_k) L_k^{-1}, one GEMM ``x (c, d) @ [U_k^T] (d, K d)``);
* the prior built from an expected covariance, and the empirical-Bayes scale terms.

Parameters (:class:`Components`) and statistics (:class:`SuffStats`) are plain float64 tensors with the
component axis first, so sorting, merging and slicing are the same code for every family. A family with more
per-component parameters subclasses :class:`Components` (its row operations cover every field) and registers
itself (:func:`register_family`): :mod:`.mfa`, factor-analyser components on full covariance's statistics.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np
import scipy.sparse
import torch

from bayes_dc.clustering.dpgmm import math as nw

FULL_MEMORY_LIMIT_BYTES = 4 * 2 ** 30   # refuse full covariance when its (T, d, d) arrays would need more


@dataclass
class Components:
    """Per-component conjugate parameters of a prior or of q (float64; component axis first).

    m (T, d) mean; kappa (T,) mean precision factor; ``dof``: Gamma shape a (T, d) diag, a (T,) spherical, or
    Wishart degrees of freedom nu (T,) full; ``scale``: Gamma rate b (T, d) diag, b (T,) spherical (b / (a - 1) is
    the expected variance), or the Cholesky factor L (T, d, d) of Psi = W^{-1} full (Psi / (nu - d - 1) is E[Sigma]).
    """

    m: torch.Tensor
    kappa: torch.Tensor
    dof: torch.Tensor
    scale: torch.Tensor

    def _map(self, fn: Callable[..., torch.Tensor], *others: "Components") -> "Components":
        """A copy of the same type with ``fn(field, *others' field)`` for every field (subclasses of families with
        more per-component parameters, e.g. :class:`.mfa.FactorComponents`, get the row operations for free)."""
        return type(self)(**{f.name: fn(getattr(self, f.name), *(getattr(o, f.name) for o in others))
                             for f in fields(self)})

    def rows(self, index: torch.Tensor) -> "Components":
        return self._map(lambda a: a[index])

    def put_rows(self, index: torch.Tensor, other: "Components") -> "Components":
        """A copy with rows ``index`` replaced by ``other`` (same number of rows as ``index``)."""
        def put(a, b):
            out = a.clone()
            out[index] = b
            return out
        return self._map(put, other)

    def where(self, mask: torch.Tensor, other: "Components") -> "Components":
        """Rows of self where ``mask`` (T,) is True, else rows of ``other``."""
        def pick(a, b):
            return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)
        return self._map(pick, other)


@dataclass
class SuffStats:
    """Responsibility-weighted statistics (float64): counts (T,), sum_x (T, d), sum_xx (T, d) diag, (T,) spherical
    (sum of r ||x||^2) or (T, d, d) full, and the entropy -sum r log r of the responsibilities they came from
    (a property of the whole q(z), carried unchanged by :meth:`rows` / :meth:`permuted`)."""

    counts: torch.Tensor
    sum_x: torch.Tensor
    sum_xx: torch.Tensor
    entropy: float

    def scaled(self, factor: float) -> "SuffStats":
        return SuffStats(self.counts * factor, self.sum_x * factor, self.sum_xx * factor, self.entropy * factor)

    def permuted(self, order: torch.Tensor) -> "SuffStats":
        return SuffStats(self.counts[order], self.sum_x[order], self.sum_xx[order], self.entropy)

    rows = permuted

    def put_rows(self, index: torch.Tensor, other: "SuffStats") -> "SuffStats":
        """A copy with component rows ``index`` replaced by ``other``'s (entropy: ``other.entropy``)."""
        out = SuffStats(self.counts.clone(), self.sum_x.clone(), self.sum_xx.clone(), other.entropy)
        out.counts[index], out.sum_x[index], out.sum_xx[index] = other.counts, other.sum_x, other.sum_xx
        return out

    def __add__(self, other: "SuffStats") -> "SuffStats":
        return SuffStats(self.counts + other.counts, self.sum_x + other.sum_x, self.sum_xx + other.sum_xx,
                         self.entropy + other.entropy)

    def __sub__(self, other: "SuffStats") -> "SuffStats":
        return self + other.scaled(-1.0)


class CovarianceFamily(ABC):
    """What one covariance type needs: design matrix, posterior, bound terms, E-step operator, prior."""

    name: str = ""
    #: keyword options of the constructor beyond ``dim`` (passed on by :func:`make_family`)
    options: tuple[str, ...] = ()
    #: whether the prior needs the full data covariance matrix (else per-dimension variances suffice)
    needs_covariance_matrix: bool = False

    def __init__(self, dim: int):
        self.dim = int(dim)

    # -- statistics ----------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def second_cols(self) -> int:
        """Columns of the second-moment block of the design matrix."""

    @property
    def width(self) -> int:
        """Columns D of the design matrix [second moments, x, 1]."""
        return self.second_cols + self.dim + 1

    @abstractmethod
    def fill_second_moments(self, xc: torch.Tensor, out: torch.Tensor) -> None:
        """Write the second-moment block (c, second_cols) of centred points xc (c, d) into ``out``."""

    def design(self, xc: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[second moments, x, 1] (c, D) for centred points xc (c, d); written into ``out`` when given."""
        c, s = xc.shape[0], self.second_cols
        out = torch.empty(c, self.width, dtype=xc.dtype, device=xc.device) if out is None else out[:c]
        out[:, s:s + self.dim] = xc
        out[:, -1] = 1.0
        self.fill_second_moments(out[:, s:s + self.dim], out[:, :s])
        return out

    @abstractmethod
    def sum_xx_from_raw(self, second: torch.Tensor) -> torch.Tensor:
        """Second-moment columns of R^T A (T, second_cols) -> sum_xx in its family shape."""

    def stats_from_raw(self, raw: torch.Tensor, entropy: float) -> SuffStats:
        """R^T A (T, D) float64 -> SuffStats."""
        s = self.second_cols
        return SuffStats(raw[:, -1].clone(), raw[:, s:s + self.dim].clone(), self.sum_xx_from_raw(raw[:, :s]), entropy)

    def weighted_sums(self, values: torch.Tensor, index: torch.Tensor, xc: torch.Tensor, n_components: int,
                      design: torch.Tensor | None = None) -> torch.Tensor:
        """R^T A (T, D) float64 for the sparse (c, T) responsibility block (values, index) (c, k) of centred points
        xc (c, d), A their design matrix (built here unless given)."""
        design = self.design(xc) if design is None else design
        c, k = values.shape
        if design.is_cuda:
            dense = torch.zeros(c, n_components, dtype=design.dtype, device=design.device)
            return (dense.scatter_add_(1, index, values.to(design.dtype)).T @ design).double()
        # scipy's CSR-transpose product touches only the c k non-zeros; torch's CPU sparse kernels are slower
        block = scipy.sparse.csr_matrix((values.numpy().ravel(), index.numpy().ravel(), np.arange(0, c * k + 1, k)),
                                        shape=(c, n_components))
        return torch.from_numpy(np.asarray(block.T @ design.numpy())).double()

    def stats_from_dense(self, x: torch.Tensor, resp: torch.Tensor) -> SuffStats:
        """Reference statistics from points x (N, d) and dense responsibilities (N, T), in float64."""
        x, resp = x.double(), resp.double()
        raw = resp.T @ self.design(x)                                             # (T, D)
        return self.stats_from_raw(raw, float(-torch.special.xlogy(resp, resp).sum()))

    # -- posterior and bound -------------------------------------------------------------------------------
    #: the family's conjugate math (``.math``): posterior(counts, sum_x, sum_xx, m0, kappa0, dof0, scale0),
    #: expected log-likelihood(counts, sum_x, sum_xx, m, kappa, dof, scale), KL(q rows, prior rows)
    #: (set by each family as staticmethods)
    posterior_fn: Callable
    loglik_fn: Callable
    kl_fn: Callable

    def _posterior(self, stats: SuffStats, prior: Components) -> Components:
        """The conjugate posterior for every row."""
        return Components(*self.posterior_fn(stats.counts, stats.sum_x, stats.sum_xx, prior.m, prior.kappa,
                                             prior.dof, prior.scale))

    def posterior(self, stats: SuffStats, prior: Components, previous: Components | None = None) -> Components:
        """Closed-form q(mu, Sigma) per component (exactly the prior where N_k = 0). Only occupied rows are
        computed: most of T components are empty, and for full covariance each row costs O(d^3).

        ``previous``: the current q rows, for families whose update is itself iterative (:mod:`.mfa`: the
        update starts there, so it never lowers the ELBO); the conjugate families here ignore it."""
        occupied = stats.counts > 0
        if bool(occupied.all()):
            return self._posterior(stats, prior)
        rows = occupied.nonzero()[:, 0]
        return prior.put_rows(rows, self._posterior(stats.rows(rows), prior.rows(rows)))

    def expected_loglik(self, stats: SuffStats, q: Components) -> torch.Tensor:
        """sum_n r_nk E_q[log N(x_n | mu_k, Sigma_k)] per component, (T,)."""
        return self.loglik_fn(stats.counts, stats.sum_x, stats.sum_xx, q.m, q.kappa, q.dof, q.scale)

    def kl(self, q: Components, prior: Components) -> torch.Tensor:
        """KL(q(mu_k, Sigma_k) || p(mu_k, Sigma_k)) per component, (T,)."""
        return self.kl_fn(q.m, q.kappa, q.dof, q.scale, prior.m, prior.kappa, prior.dof, prior.scale)

    def component_terms(self, stats: SuffStats, q: Components, prior: Components) -> torch.Tensor:
        """The component part of the ELBO, expected log-likelihood minus KL, per component (T,)."""
        return self.expected_loglik(stats, q) - self.kl(q, prior)

    def posterior_terms(self, stats: SuffStats, q: Components, prior: Components) -> torch.Tensor:
        """:meth:`component_terms` (T,) for q = :meth:`posterior` (stats, prior), computed on occupied rows only: an
        empty component's q is its prior, so it has no likelihood term and KL 0."""
        rows = (stats.counts > 0).nonzero()[:, 0]
        terms = torch.zeros_like(stats.counts)
        terms[rows] = self.component_terms(stats.rows(rows), q.rows(rows), prior.rows(rows))
        return terms

    # -- E-step ----------------------------------------------------------------------------------------------
    @abstractmethod
    def logit_operator(self, q: Components, e_log_pi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """float32 tensors for :meth:`logits` over the K components of ``q`` (K rows) with E[log pi] (K,)."""

    @abstractmethod
    def logits(self, op: tuple[torch.Tensor, ...], xc: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        """E_q[log pi_k + log N(x_n | mu_k, Sigma_k)] (c, K) for centred points xc (c, d) (and their design)."""

    #: whether :meth:`logits` reads the design matrix (else the design is built only for the statistics)
    logits_need_design: bool = True

    def logit_bytes_per_row(self, k: int) -> int:
        """Bytes of temporaries per point when scoring k components (sizes the E-step chunks)."""
        return 4 * k

    def memory_bytes(self, truncation: int) -> int:
        """Rough bytes of the per-component parameter and statistic arrays for T components."""
        return 0

    # -- prior -------------------------------------------------------------------------------------------------
    @abstractmethod
    def prior(self, mean: torch.Tensor, expected_cov: torch.Tensor, dof: float, kappa0: float,
              truncation: int) -> Components:
        """Prior rows (T of them) with mean m0 (d,), E[Sigma] = ``expected_cov`` (family shape: (d, d) full, (d,)
        diag, () spherical) and ``dof`` pseudo-observations of each variance (see :mod:`.prior`)."""

    @abstractmethod
    def expected_cov_from_data(self, data_cov: torch.Tensor) -> torch.Tensor:
        """The family-shaped E[Sigma] at scale 1 from the data covariance ((d, d) full, (d,) variances otherwise)."""

    @abstractmethod
    def rescaled(self, prior: Components, factor: float) -> Components:
        """The prior with its expected covariance multiplied by ``factor``."""

    @abstractmethod
    def scale_terms(self, q: Components, unit_prior: Components) -> tuple[torch.Tensor, torch.Tensor]:
        """(shape, rate) per component (T,) such that the ELBO depends on the prior scale s as
        sum_k [shape_k log s - s rate_k] + const, so s* = sum shape / sum rate (``unit_prior``: the prior at s = 1)."""

    # -- reporting -------------------------------------------------------------------------------------------
    @abstractmethod
    def expected_precision(self, q: Components) -> torch.Tensor:
        """E[Lambda_k]: (T, d, d) full, (T, d) diag, (T,) spherical."""


# ---------------------------------------------------------------------------------------------------------------
class _NormalGammaFamily(CovarianceFamily):
    """Shared code of diag and spherical (Normal-Gamma) components."""

    posterior_fn = staticmethod(nw.normal_gamma_posterior)
    loglik_fn = staticmethod(nw.normal_gamma_expected_loglik)
    kl_fn = staticmethod(nw.normal_gamma_kl)

    def logits(self, op: tuple[torch.Tensor, ...], xc: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        return design @ op[0]                                                     # (c, D) @ (D, K)

    def _operator(self, w_sq: torch.Tensor, q: Components, e_lambda: torch.Tensor, const: torch.Tensor):
        w_x = (e_lambda[:, None] if e_lambda.dim() == 1 else e_lambda) * q.m     # (K, d)
        return (torch.cat([w_sq, w_x, const[:, None]], dim=1).T.float().contiguous(),)   # (D, K)

    def rescaled(self, prior: Components, factor: float) -> Components:
        return replace(prior, scale=prior.scale * factor)

    def scale_terms(self, q: Components, unit_prior: Components) -> tuple[torch.Tensor, torch.Tensor]:
        # E[log Gamma(lambda; a0, s b1)] = a0 log s - s b1 E[lambda] + terms free of s
        shape, rate = unit_prior.dof, unit_prior.scale * q.dof / q.scale
        return (shape, rate) if shape.dim() == 1 else (shape.sum(1), rate.sum(1))

    def expected_precision(self, q: Components) -> torch.Tensor:
        return q.dof / q.scale


class DiagFamily(_NormalGammaFamily):
    """Diagonal covariance: an independent Normal-Gamma per dimension."""

    name = "diag"

    @property
    def second_cols(self) -> int:
        return self.dim

    def fill_second_moments(self, xc: torch.Tensor, out: torch.Tensor) -> None:
        torch.mul(xc, xc, out=out)

    def sum_xx_from_raw(self, second: torch.Tensor) -> torch.Tensor:
        return second.clone()

    def logit_operator(self, q: Components, e_log_pi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # -E[lambda] (x - m)^2 / 2 = x^2 (-E[lambda]/2) + x E[lambda] m - E[lambda] m^2 / 2, and
        # E[lambda (x - mu)^2] = E[lambda] (x - m)^2 + 1/kappa
        e_lambda, e_log_lambda = nw.gamma_expectations(q.dof, q.scale)            # (K, d)
        const = (e_log_pi + 0.5 * (e_log_lambda - nw.LOG_2PI - 1.0 / q.kappa[:, None]).sum(1)
                 - 0.5 * (e_lambda * q.m ** 2).sum(1))                            # (K,)
        return self._operator(-0.5 * e_lambda, q, e_lambda, const)

    def prior(self, mean, expected_cov, dof, kappa0, truncation):
        a0 = torch.full_like(expected_cov, 0.5 * dof)                              # (d,)
        return _expand(mean, kappa0, a0, expected_cov * (0.5 * dof - 1.0), truncation)

    def expected_cov_from_data(self, data_cov: torch.Tensor) -> torch.Tensor:
        return data_cov.diagonal().clone() if data_cov.dim() == 2 else data_cov


class SphericalFamily(_NormalGammaFamily):
    """Spherical covariance: one Normal-Gamma precision shared by the d dimensions of a component."""

    name = "spherical"

    @property
    def second_cols(self) -> int:
        return 1

    def fill_second_moments(self, xc: torch.Tensor, out: torch.Tensor) -> None:
        torch.sum(xc * xc, dim=1, keepdim=True, out=out)

    def sum_xx_from_raw(self, second: torch.Tensor) -> torch.Tensor:
        return second[:, 0].clone()

    def logit_operator(self, q: Components, e_log_pi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = q.m.shape[1]
        e_lambda, e_log_lambda = nw.gamma_expectations(q.dof, q.scale)            # (K,)
        const = (e_log_pi + 0.5 * d * (e_log_lambda - nw.LOG_2PI - 1.0 / q.kappa)
                 - 0.5 * e_lambda * (q.m ** 2).sum(1))
        return self._operator(-0.5 * e_lambda[:, None], q, e_lambda, const)

    def prior(self, mean, expected_cov, dof, kappa0, truncation):
        a0 = torch.full((), 0.5 * dof, dtype=torch.float64, device=mean.device)
        return _expand(mean, kappa0, a0, expected_cov * (0.5 * dof - 1.0), truncation)

    def expected_cov_from_data(self, data_cov: torch.Tensor) -> torch.Tensor:
        variances = data_cov.diagonal() if data_cov.dim() == 2 else data_cov
        return variances.mean()


class FullFamily(CovarianceFamily):
    """Full covariance: a Normal-Wishart per component, scale carried as the Cholesky factor of Psi = W^{-1}."""

    name = "full"
    needs_covariance_matrix = True
    logits_need_design = False
    posterior_fn = staticmethod(nw.normal_wishart_posterior)
    loglik_fn = staticmethod(nw.normal_wishart_expected_loglik)
    kl_fn = staticmethod(nw.normal_wishart_kl)

    @property
    def second_cols(self) -> int:
        return self.dim * self.dim

    def fill_second_moments(self, xc: torch.Tensor, out: torch.Tensor) -> None:
        torch.mul(xc[:, :, None], xc[:, None, :], out=out.view(-1, self.dim, self.dim))

    def sum_xx_from_raw(self, second: torch.Tensor) -> torch.Tensor:
        square = second.reshape(-1, self.dim, self.dim)
        return 0.5 * (square + square.transpose(1, 2))

    def weighted_sums(self, values: torch.Tensor, index: torch.Tensor, xc: torch.Tensor, n_components: int,
                      design: torch.Tensor | None = None) -> torch.Tensor:
        # sum_n r_nk x_n x_n^T without a (c, d^2) design matrix: one GEMM x^T (c, d) @ [r_k * x] (c, K d) over the
        # K components present in the chunk (the size of the E-step's GEMM), or, when K is well above the k
        # entries per row, one GEMM per component over only the rows that hold it (k c d^2 work instead of K c d^2)
        c, d = xc.shape
        nonzero = values > 0
        present = torch.unique(index[nonzero])                                         # (K,)
        raw = torch.zeros(n_components, self.width, dtype=torch.float64, device=xc.device)
        if present.shape[0] <= 2 * values.shape[1]:
            position = torch.zeros(n_components, dtype=torch.int64, device=xc.device)
            position[present] = torch.arange(present.shape[0], device=xc.device)
            r = torch.zeros(c, present.shape[0], dtype=xc.dtype, device=xc.device)
            r.scatter_add_(1, position[index], values.to(xc.dtype))                    # (c, K) zeros stay zero
            weighted = (r[:, :, None] * xc[:, None, :]).reshape(c, -1)               # (c, K d)
            second = (xc.T @ weighted).view(d, -1, d).transpose(0, 1)                 # (K, d, d)
            rows = torch.cat([second.reshape(-1, d * d), r.T @ xc, r.sum(0)[:, None]], 1)   # (K, D)
            raw[present] = rows.double()
            return raw
        point = torch.arange(c, device=xc.device)[:, None].expand_as(index)[nonzero]   # (nnz,) entries' rows
        component, weight = index[nonzero], values[nonzero].to(xc.dtype)
        order = torch.argsort(component, stable=True)
        point, component, weight = point[order], component[order], weight[order]
        bounds = torch.searchsorted(component, present, right=True).tolist()
        start = 0
        for k, stop in zip(present.tolist(), bounds):
            x_k, w_k = xc[point[start:stop]], weight[start:stop, None]                 # (n_k, d), (n_k, 1)
            weighted = w_k * x_k
            raw[k] = torch.cat([(x_k.T @ weighted).reshape(-1), weighted.sum(0), w_k.sum(0)]).double()
            start = stop
        return raw

    def logit_operator(self, q: Components, e_log_pi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # nu (x - m)^T Psi^{-1} (x - m) = ||U x - U m||^2 with U = sqrt(nu) L^{-1}: one GEMM against [U_k^T] and a
        # subtraction of two vectors of the size of the distance (no float32 cancellation of x^T W x - 2 m^T W x ...)
        k, d = q.m.shape
        eye = torch.eye(d, dtype=q.scale.dtype, device=q.scale.device).expand(k, d, d)
        u = torch.linalg.solve_triangular(q.scale, eye, upper=False) * q.dof.sqrt()[:, None, None]    # (K, d, d)
        gemm = u.transpose(1, 2).permute(1, 0, 2).reshape(d, k * d)              # (d, K d): block k = U_k^T
        offset = (u @ q.m[:, :, None]).reshape(1, k * d)                          # (1, K d): U_k m_k
        const = (e_log_pi + 0.5 * nw.expected_log_det_precision(q.dof, q.scale)
                 - 0.5 * d * nw.LOG_2PI - 0.5 * d / q.kappa)                      # (K,)
        # [x, 1] @ [[U^T], [-U m]] gives U x - U m inside the GEMM, so only one pass (the norm) follows it
        return torch.cat([gemm, -offset]).float().contiguous(), const.float()

    def logits(self, op: tuple[torch.Tensor, ...], xc: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        gemm, const = op
        c, k = xc.shape[0], const.shape[0]
        y = torch.cat([xc, torch.ones(c, 1, dtype=xc.dtype, device=xc.device)], 1) @ gemm   # (c, K d)
        distance = torch.linalg.vector_norm(y.view(c, k, self.dim), dim=-1)             # (c, K)
        return const - 0.5 * distance * distance

    def logit_bytes_per_row(self, k: int) -> int:
        # logits GEMM output and the statistics' weighted copy of the points, (c, K d) float32 each
        return 8 * k * (self.dim + 1)

    def memory_bytes(self, truncation: int) -> int:
        # about ten (T, d, d) float64 arrays live at once: q and prior factors, sum_xx, the posterior's Psi and its
        # temporaries, the bound's scatter, and a merge batch of the same size
        return 10 * 8 * truncation * self.dim ** 2

    def prior(self, mean, expected_cov, dof, kappa0, truncation):
        nu0 = torch.tensor(self.dim - 1.0 + dof, dtype=torch.float64, device=mean.device)
        psi0 = expected_cov * (dof - 2.0)                                           # nu0 - d - 1 = dof - 2
        return _expand(mean, kappa0, nu0, torch.linalg.cholesky(psi0), truncation)

    def expected_cov_from_data(self, data_cov: torch.Tensor) -> torch.Tensor:
        return data_cov if data_cov.dim() == 2 else torch.diag(data_cov)

    def rescaled(self, prior: Components, factor: float) -> Components:
        return replace(prior, scale=prior.scale * factor ** 0.5)

    def scale_terms(self, q: Components, unit_prior: Components) -> tuple[torch.Tensor, torch.Tensor]:
        # E[log Wishart(Lambda; (s B)^{-1}, nu0)] = nu0 d / 2 log s - s/2 nu Tr(B Psi^{-1}) + terms free of s
        solved = torch.linalg.solve_triangular(q.scale, unit_prior.scale, upper=False)
        return 0.5 * unit_prior.dof * self.dim, 0.5 * q.dof * (solved ** 2).sum((-2, -1))

    def expected_precision(self, q: Components) -> torch.Tensor:
        return q.dof[:, None, None] * torch.cholesky_inverse(q.scale)


def _expand(mean: torch.Tensor, kappa0: float, dof: torch.Tensor, scale: torch.Tensor, truncation: int) -> Components:
    """Prior rows: the same (m0, kappa0, dof, scale) for each of the T components."""
    def rows(t):
        return t.expand(truncation, *t.shape).clone()
    kappa = torch.tensor(float(kappa0), dtype=torch.float64, device=mean.device)
    return Components(rows(mean), rows(kappa), rows(dof), rows(scale))


FAMILIES: dict[str, type[CovarianceFamily]] = {"full": FullFamily, "diag": DiagFamily, "spherical": SphericalFamily}


def register_family(family: type[CovarianceFamily]) -> type[CovarianceFamily]:
    """Add a family defined in its own module (which imports this one, so it cannot be listed above without an
    import cycle); the engine imports every such module before it reads :data:`FAMILIES`."""
    FAMILIES[family.name] = family
    return family


def make_family(name: str, dim: int, **options) -> CovarianceFamily:
    """The family ``name`` for d = ``dim``; ``options`` (e.g. ``factors`` for mfa) go to families that take them."""
    if name not in FAMILIES:
        raise ValueError(f"unknown covariance {name!r}; choose one of {list(FAMILIES)} (--covariance)")
    family = FAMILIES[name]
    return family(dim, **{k: v for k, v in options.items() if k in family.options and v is not None})
