"""Variational Dirichlet-process Gaussian mixture: closed-form CAVI engine (torch, CPU or CUDA) and backend.

Model (truncation T, x_n in R^d; design.md "The DP-GMM"):
    v_k ~ Beta(1, alpha), k < T-1;  pi = mix_weights(v)  (the last component takes the remaining stick)
    alpha fixed, or alpha ~ Gamma(s1, s2)
    lambda_k ~ Gamma(a0, b0) per dimension (diag) or one per component (spherical)
    mu_kd | lambda_k ~ Normal(m0_d, 1 / (beta0 lambda_kd))
    z_n ~ Categorical(pi);  x_n | z_n = k ~ Normal(mu_k, diag(1 / lambda_k))
Mean field q = prod_k Beta(v_k; g1_k, g2_k) * prod_k NormalGamma(mu_k, lambda_k; m_k, beta_k, a_k, b_k)
    * prod_n Categorical(z_n; r_n) [* Gamma(alpha; w1, w2)].
Updates: Blei & Jordan (2006) for the sticks and alpha; Bishop (2006) §10.2 for the Gaussian part, made
diagonal (one Normal-Gamma per dimension) or spherical (one precision shared by the d dimensions).

Speed and memory (N points, d dims, T components, k = topk):
  * The E-step is one GEMM per chunk of points: A = [x*x, x, 1] (c, 2d+1) @ W (2d+1, T), where
    W = [-E[lambda]/2 ; E[lambda] m ; per-component constant]. Spherical uses [||x||^2, x, 1] (c, d+2).
  * Only the top-k responsibilities of each point are kept (softmax over the k largest expected log joint
    values; all other r_nk are exactly 0). This is the approximation: q(z_n) is restricted to k components.
    Because the top-k set maximises the restricted E-step objective, the ELBO stays a true lower bound and
    still never decreases. With topk = T the engine is exact CAVI.
  * M-step statistics R^T A (T, 2d+1) = [sum r x^2, sum r x, N_k] come from the sparse (c, T) responsibility
    block of the same chunk (scipy on CPU, a dense per-chunk product on CUDA) and are accumulated in float64.
    Memory is O(N k) for the responsibilities plus O(c T) per chunk, never O(N T).
  * The ELBO is computed in closed form from (N_k, sum r x, sum r x^2, entropy of r) after every M-step, so it
    is exactly the objective the iterations ascend (E-step, then M-step, then ELBO).
Data are centred on the data mean inside the engine (float32 GEMMs lose less to cancellation); all reported
means are in the input coordinates.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch.special import digamma

from . import stick
from .base import ClusterBackend, ClusterResult, active_mask, check_features

COVARIANCES = ("diag", "spherical")
WARM_STARTS = ("none", "init", "prior")
INFERENCES = ("cavi", "svi")
STATE_VERSION = 1


class ConvergenceWarning(UserWarning):
    """The iteration cap was hit before the relative ELBO change fell below ``tol``."""


# ---------------------------------------------------------------------------------------------------------------
# Parameters and sufficient statistics
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class DPGMMPrior:
    """Prior hyper-parameters, expanded per component (float64, one device).

    m0 (T, d); beta0 (T,); a0, b0 (T, d) for diag, (T,) for spherical; alpha (fixed concentration, or the
    initial E[alpha] when ``alpha_prior`` = (shape s1, rate s2) makes alpha random). Per-component priors
    let ``warm_start="prior"`` add the previous round's posterior as pseudo-counts.
    """

    m0: torch.Tensor
    beta0: torch.Tensor
    a0: torch.Tensor
    b0: torch.Tensor
    alpha: float
    alpha_prior: tuple[float, float] | None = None

    @property
    def spherical(self) -> bool:
        return self.a0.dim() == 1


@dataclass
class DPGMMParams:
    """Variational parameters of q (float64). g1, g2 (T-1,); m (T, d); beta (T,); a, b (T, d) or (T,);
    alpha_shape, alpha_rate: q(alpha) = Gamma(w1, w2) as 0-d tensors, or None when alpha is fixed."""

    g1: torch.Tensor
    g2: torch.Tensor
    m: torch.Tensor
    beta: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    alpha_shape: torch.Tensor | None = None
    alpha_rate: torch.Tensor | None = None


@dataclass
class SuffStats:
    """Responsibility-weighted statistics (float64): counts (T,), sum_x (T, d), sum_xx (T, d) diag or (T,) spherical
    (sum of r ||x||^2), and the entropy -sum r log r of the responsibilities they came from."""

    counts: torch.Tensor
    sum_x: torch.Tensor
    sum_xx: torch.Tensor
    entropy: float

    def scaled(self, factor: float) -> "SuffStats":
        return SuffStats(self.counts * factor, self.sum_x * factor, self.sum_xx * factor, self.entropy * factor)

    def permuted(self, order: torch.Tensor) -> "SuffStats":
        return SuffStats(self.counts[order], self.sum_x[order], self.sum_xx[order], self.entropy)


def expected_alpha(prior: DPGMMPrior, q: DPGMMParams) -> tuple[torch.Tensor, torch.Tensor]:
    """E[alpha] and E[log alpha] (0-d float64)."""
    if q.alpha_shape is None:
        alpha = torch.tensor(prior.alpha, dtype=torch.float64, device=q.m.device)
        return alpha, torch.log(alpha)
    return q.alpha_shape / q.alpha_rate, digamma(q.alpha_shape) - torch.log(q.alpha_rate)


def update_components(stats: SuffStats, prior: DPGMMPrior) -> tuple[torch.Tensor, ...]:
    """Normal-Gamma posterior given weighted statistics (Bishop 2006 eqs. 10.60-10.63, per dimension).

    beta = beta0 + N; m = (beta0 m0 + sum_x) / beta; a = a0 + N/2 (spherical: a0 + d N/2);
    b = b0 + (sum_xx + beta0 m0^2 - beta m^2) / 2, which equals the design.md form
    b0 + N (S - xbar^2)/2 + beta0 N (xbar - m0)^2 / (2 beta) and stays finite at N = 0.
    Returns (m (T, d), beta (T,), a, b).
    """
    beta = prior.beta0 + stats.counts                                            # (T,)
    m = (prior.beta0[:, None] * prior.m0 + stats.sum_x) / beta[:, None]          # (T, d)
    mean_terms = prior.beta0[:, None] * prior.m0 ** 2 - beta[:, None] * m ** 2   # (T, d)
    if prior.spherical:
        scatter = stats.sum_xx + mean_terms.sum(1)                                # (T,)
        a = prior.a0 + 0.5 * m.shape[1] * stats.counts
    else:
        scatter = stats.sum_xx + mean_terms                                       # (T, d)
        a = prior.a0 + 0.5 * stats.counts[:, None]
    # The scatter is >= 0 in exact arithmetic; float32 statistics can leave a tiny negative remainder.
    b = prior.b0 + 0.5 * scatter.clamp_min(0.0)
    return m, beta, a, b


def update_sticks(counts: torch.Tensor, e_alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(v_k) = Beta(1 + N_k, E[alpha] + sum_{j>k} N_j) for the T-1 sticks (Blei & Jordan 2006, eq. 21)."""
    tail = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])             # (T,) sum_{j>=k}
    return 1.0 + counts[:-1], e_alpha + tail[1:]                                  # (T-1,), (T-1,)


def update_alpha(g1: torch.Tensor, g2: torch.Tensor, alpha_prior: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """q(alpha) = Gamma(s1 + T - 1, s2 - sum_k E[log(1 - v_k)]) (Blei & Jordan 2006, §5)."""
    _, e_log_1mv = stick.expected_log_sticks(g1, g2)
    return (torch.tensor(alpha_prior[0] + g1.shape[0], dtype=g1.dtype, device=g1.device),
            alpha_prior[1] - e_log_1mv.sum())


def m_step(stats: SuffStats, prior: DPGMMPrior, q_old: DPGMMParams | None = None) -> DPGMMParams:
    """All global coordinate updates given the statistics: components, then sticks, then alpha.

    Each update is the exact conditional optimum of the ELBO, so the ELBO does not decrease. The sticks use
    E[alpha] of ``q_old`` (or the prior's alpha on the first step).
    """
    m, beta, a, b = update_components(stats, prior)
    q = DPGMMParams(torch.empty(0), torch.empty(0), m, beta, a, b)
    if prior.alpha_prior is not None:
        if q_old is not None and q_old.alpha_shape is not None:
            q.alpha_shape, q.alpha_rate = q_old.alpha_shape, q_old.alpha_rate
        else:
            s1, s2 = prior.alpha_prior
            q.alpha_shape = torch.tensor(float(s1), dtype=torch.float64, device=m.device)
            q.alpha_rate = torch.tensor(float(s2), dtype=torch.float64, device=m.device)
    e_alpha, _ = expected_alpha(prior, q)
    q.g1, q.g2 = update_sticks(stats.counts, e_alpha)
    if prior.alpha_prior is not None:
        q.alpha_shape, q.alpha_rate = update_alpha(q.g1, q.g2, prior.alpha_prior)
    return q


def estep_matrix(q: DPGMMParams, prior: DPGMMPrior) -> torch.Tensor:
    """W (D, T) float32 such that A @ W with A = [x*x, x, 1] (diag, D = 2d+1) or [||x||^2, x, 1] (spherical,
    D = d+2) gives E_q[log pi_k + log N(x_n | mu_k, lambda_k^{-1})] for every point and component.

    Expanding -E[lambda] (x - m)^2 / 2 = x^2 (-E[lambda]/2) + x (E[lambda] m) - E[lambda] m^2 / 2 and
    E[lambda (x - mu)^2] = E[lambda] (x - m)^2 + 1/beta gives the three blocks.
    """
    d = q.m.shape[1]
    e_lambda, e_log_lambda = q.a / q.b, digamma(q.a) - torch.log(q.b)
    e_log_pi = stick.expected_log_pi(q.g1, q.g2)                                  # (T,)
    if prior.spherical:
        w_sq = -0.5 * e_lambda[:, None]                                           # (T, 1)
        w_x = e_lambda[:, None] * q.m                                             # (T, d)
        const = e_log_pi + 0.5 * d * (e_log_lambda - stick.LOG_2PI - 1.0 / q.beta) - 0.5 * e_lambda * (q.m ** 2).sum(1)
    else:
        w_sq = -0.5 * e_lambda                                                    # (T, d)
        w_x = e_lambda * q.m                                                      # (T, d)
        const = (e_log_pi + 0.5 * (e_log_lambda - stick.LOG_2PI - 1.0 / q.beta[:, None]).sum(1)
                 - 0.5 * (e_lambda * q.m ** 2).sum(1))
    return torch.cat([w_sq, w_x, const[:, None]], dim=1).T.float().contiguous()   # (D, T)


def elbo(stats: SuffStats, q: DPGMMParams, prior: DPGMMPrior) -> float:
    """The full ELBO (with every log-normaliser) from sufficient statistics, in closed form (float64).

    ELBO = E[log p(x | z, mu, lambda)] + E[log p(z | v)] + E[log p(v | alpha)] - E[log q(v)]
           - KL(q(mu, lambda) || p) - KL(q(alpha) || p(alpha)) + H[q(z)].
    E[log p(v | alpha)] with random alpha equals the fixed-alpha Beta(1, E[alpha]) term plus
    (T-1) (E[log alpha] - log E[alpha]), because log Beta(v; 1, alpha) = log alpha + (alpha - 1) log(1 - v).
    """
    d = q.m.shape[1]
    n, sx, sxx = stats.counts, stats.sum_x, stats.sum_xx
    e_lambda, e_log_lambda = q.a / q.b, digamma(q.a) - torch.log(q.b)
    if prior.spherical:
        quad = e_lambda * (sxx - 2.0 * (q.m * sx).sum(1) + n * (q.m ** 2).sum(1))  # (T,)
        loglik = 0.5 * d * n * (e_log_lambda - stick.LOG_2PI - 1.0 / q.beta) - 0.5 * quad
    else:
        quad = e_lambda * (sxx - 2.0 * q.m * sx + n[:, None] * q.m ** 2)           # (T, d)
        loglik = (0.5 * n[:, None] * (e_log_lambda - stick.LOG_2PI - 1.0 / q.beta[:, None]) - 0.5 * quad).sum(1)
    e_alpha, e_log_alpha = expected_alpha(prior, q)
    sticks = -stick.beta_kl(q.g1, q.g2, 1.0, e_alpha).sum() + q.g1.shape[0] * (e_log_alpha - torch.log(e_alpha))
    total = (loglik.sum() + (n * stick.expected_log_pi(q.g1, q.g2)).sum() + sticks
             - stick.normal_gamma_kl(q.m, q.beta, q.a, q.b, prior.m0, prior.beta0, prior.a0, prior.b0).sum())
    if q.alpha_shape is not None:
        total = total - stick.gamma_kl(q.alpha_shape, q.alpha_rate, *prior.alpha_prior)
    return float(total) + stats.entropy


def default_prior(x: torch.Tensor, truncation: int, covariance: str = "diag", *, alpha: float = 1.0,
                  alpha_prior: tuple[float, float] | None = None, beta0: float | None = None,
                  a0: float | None = None, b0: float | None = None, strength: float = 1.0) -> DPGMMPrior:
    """Data-driven prior, translated from scikit-learn's BayesianGaussianMixture defaults.

    scikit-learn (covariance_type="diag"): mean_prior = data mean, mean_precision_prior = 1,
    degrees_of_freedom_prior nu0 = d, covariance_prior = per-dimension variance (ddof=1). Its diagonal
    Wishart-style update (covariances_ = (covariance_prior + N S + ...) / (nu0 + N)) is a Gamma posterior with
    shape nu/2 and rate covariance*nu/2, so the Normal-Gamma prior here is
        m0 = mean, beta0 = 1, a0 = nu0 / 2 = d / 2, b0 = covariance_prior / 2 = var / 2,
    i.e. prior mean precision a0/b0 = d/var (as scikit-learn's nu0 W0). Spherical: one precision per component
    sees d numbers per point, so the same prior strength (nu0 = d points) is a0 = d^2/2, b0 = d mean(var)/2.
    A scalar ``a0`` / ``b0`` / ``beta0`` overrides the default for every component and dimension.
    ``strength`` scales the default a0 and b0 together: the prior mean precision stays a0/b0, its weight (the
    pseudo-count 2 a0) grows. A stronger precision prior makes small tight components costlier, so the
    posterior keeps fewer of them (BENCHMARKS.md, bench_prior).
    """
    if not strength > 0:
        raise ValueError(f"prior strength must be > 0, got {strength} (--prior-strength)")
    n, d = x.shape
    # float32 reductions (torch sums pairwise) are accurate enough for a prior and 5x faster than a float64 copy
    var, mean = torch.var_mean(x.float(), dim=0, unbiased=n > 1)
    var, mean = var.double().clamp_min(1e-12), mean.double()
    if covariance == "spherical":
        a0_default, b0_default = 0.5 * d * d * strength, 0.5 * d * var.mean() * strength
        shape = (truncation,)
    else:
        a0_default, b0_default = 0.5 * d * strength * torch.ones_like(var), 0.5 * var * strength
        shape = (truncation, d)
    a0_t = torch.as_tensor(a0_default if a0 is None else a0, dtype=torch.float64, device=x.device)
    b0_t = torch.as_tensor(b0_default if b0 is None else b0, dtype=torch.float64, device=x.device)
    return DPGMMPrior(
        m0=mean.expand(truncation, d).clone(),
        beta0=torch.full((truncation,), 1.0 if beta0 is None else float(beta0), dtype=torch.float64, device=x.device),
        a0=a0_t.expand(shape).clone(), b0=b0_t.expand(shape).clone(),
        alpha=float(alpha), alpha_prior=None if alpha_prior is None else (float(alpha_prior[0]), float(alpha_prior[1])))


# ---------------------------------------------------------------------------------------------------------------
# Chunked E-step / statistics sweep
# ---------------------------------------------------------------------------------------------------------------
class _Sweeper:
    """Streams x (N, d) in chunks, builds A = [q(x), x, 1] per chunk, and either runs the top-k E-step
    (``W`` given) or reuses given responsibilities, accumulating the M-step statistics in float64."""

    def __init__(self, x: torch.Tensor, shift: torch.Tensor, spherical: bool, truncation: int, chunk_size: int,
                 profile_gemm: bool = False):
        self.x, self.shift, self.spherical, self.truncation = x, shift.float(), spherical, truncation
        self.chunk_size = chunk_size
        n, d = x.shape
        self.d, self.n = d, n
        self.sq_cols = 1 if spherical else d
        self.buffer = torch.empty(min(chunk_size, n), self.sq_cols + d + 1, dtype=torch.float32, device=x.device)
        self.buffer[:, -1] = 1.0
        self.profile_gemm = profile_gemm
        self.gemm_seconds = 0.0

    def _build(self, start: int, stop: int) -> torch.Tensor:
        a = self.buffer[: stop - start]                                            # (c, D)
        xc = a[:, self.sq_cols:self.sq_cols + self.d]
        torch.sub(self.x[start:stop], self.shift, out=xc)                          # centred x
        if self.spherical:
            torch.sum(xc * xc, dim=1, keepdim=True, out=a[:, :1])
        else:
            torch.mul(xc, xc, out=a[:, :self.d])
        return a

    def _gemm(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not self.profile_gemm:
            return a @ w
        if a.is_cuda:
            torch.cuda.synchronize(a.device)
        t0 = time.perf_counter()
        out = a @ w
        if a.is_cuda:
            torch.cuda.synchronize(a.device)
        self.gemm_seconds += time.perf_counter() - t0
        return out

    def _weighted_sums(self, values: torch.Tensor, index: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """R^T A (T, D) float64 for the sparse (c, T) responsibility block given by (values, index) (c, k)."""
        c, k = values.shape
        if a.is_cuda:
            dense = torch.zeros(c, self.truncation, dtype=torch.float32, device=a.device)
            return (dense.scatter_(1, index, values).T @ a).double()
        # scipy's CSR-transpose product touches only the N k non-zeros; torch's CPU sparse kernels are slower.
        block = scipy.sparse.csr_matrix((values.numpy().ravel(), index.numpy().ravel(), np.arange(0, c * k + 1, k)),
                                        shape=(c, self.truncation))
        return torch.from_numpy(np.asarray(block.T @ a.numpy())).double()

    def sweep(self, w: torch.Tensor | None, topk: int, values: torch.Tensor | None = None,
              index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """One pass. With ``w``: E-step, returns new (values, index) (N, k) sorted descending. Without: uses the
        given responsibilities. Returns (values, index, stats R^T A (T, D) float64, entropy)."""
        if w is not None:
            values = torch.empty(self.n, topk, dtype=torch.float32, device=self.x.device)
            index = torch.empty(self.n, topk, dtype=torch.int64, device=self.x.device)
        stats = torch.zeros(self.truncation, self.buffer.shape[1], dtype=torch.float64, device=self.x.device)
        entropy = torch.zeros((), dtype=torch.float64, device=self.x.device)
        for start in range(0, self.n, self.chunk_size):
            stop = min(start + self.chunk_size, self.n)
            a = self._build(start, stop)
            if w is not None:
                top_logits, top_index = torch.topk(self._gemm(a, w), topk, dim=1, sorted=True)   # (c, k)
                values[start:stop] = torch.softmax(top_logits, dim=1)
                index[start:stop] = top_index
            r = values[start:stop]
            entropy -= torch.special.xlogy(r, r).sum(dtype=torch.float64)
            stats += self._weighted_sums(r, index[start:stop], a)
        return values, index, stats, float(entropy)

    def to_stats(self, raw: torch.Tensor, entropy: float) -> SuffStats:
        """Split R^T A (T, D) into SuffStats (sum_xx is (T,) for spherical)."""
        sum_xx = raw[:, 0] if self.spherical else raw[:, :self.d]
        return SuffStats(raw[:, -1].clone(), raw[:, self.sq_cols:self.sq_cols + self.d].clone(), sum_xx.clone(), entropy)


def kmeanspp_seeds(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): indices (k,) of rows of x (M, d) float32.

    The loop over k is inherent to k-means++ (each pick depends on the previous ones); each step is one
    (M, d) matrix-vector product, run on a subsample, so it costs little next to one full E-step.
    """
    m = x.shape[0]
    sq_norms = (x * x).sum(1)                                                     # (M,)
    picks = torch.empty(k, dtype=torch.int64)
    picks[0] = torch.randint(m, (1,), generator=generator)
    closest = (sq_norms - 2.0 * x @ x[picks[0]] + sq_norms[picks[0]]).clamp_min(0.0)  # (M,)
    for j in range(1, k):
        weights = closest.double().cpu()
        total = float(weights.sum())
        # All remaining points coincide with a seed: pick uniformly (duplicates are then harmless).
        probs = weights / total if total > 0 else torch.full((m,), 1.0 / m, dtype=torch.float64)
        picks[j] = torch.multinomial(probs, 1, generator=generator)
        dist = (sq_norms - 2.0 * x @ x[picks[j]] + sq_norms[picks[j]]).clamp_min(0.0)
        closest = torch.minimum(closest, dist)
    return picks.to(x.device)


def _check_choice(name: str, value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)} ({flag})")


# ---------------------------------------------------------------------------------------------------------------
# Engine: a base class owning the loop, and the DP-GMM math
# ---------------------------------------------------------------------------------------------------------------
class VariationalMixture:
    """Iteration loop shared by variational mixtures (in the style of scikit-learn's ``BaseMixture``).

    ``fit`` runs ``_initialize`` (which may return the ELBO of its initial state), then iterations of
    E-step -> M-step -> ELBO until the relative ELBO change ``|L_t - L_{t-1}| / |L_t|`` is below ``tol`` or
    ``max_iter`` iterations ran (then a :class:`ConvergenceWarning`), then ``_finalize``. Subclasses hold only
    the math. Fitted attributes: ``history_`` (ELBO after each iteration), ``lower_bound_`` (final ELBO),
    ``converged_``, ``n_iter_``, ``fit_seconds_``.
    """

    def __init__(self, *, max_iter: int = 100, tol: float = 1e-4, verbose: bool = False):
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter} (--max-iter)")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol} (--tol)")
        self.max_iter, self.tol, self.verbose = int(max_iter), float(tol), verbose

    def fit(self, x: torch.Tensor, *, seed: int = 0, warm_state: Any = None) -> "VariationalMixture":
        x = check_features(x)
        start = time.perf_counter()
        previous = self._initialize(x, seed, warm_state)
        history: list[float] = []
        converged = False
        for _ in range(self.max_iter):
            self._e_step()
            self._m_step()
            value = self._elbo()
            history.append(value)
            if self.verbose:
                print(f"iter {len(history)}: ELBO/N {value / x.shape[0]:.6f}")
            if previous is not None and abs(value - previous) <= self.tol * abs(value):
                converged = True
                break
            previous = value
        if not converged:
            warnings.warn(ConvergenceWarning(f"{type(self).__name__} hit max_iter={self.max_iter} before the relative "
                                             f"ELBO change fell below tol={self.tol}; raise --max-iter or --tol"))
        self.history_, self.n_iter_, self.converged_ = history, len(history), converged
        self.lower_bound_ = self._finalize()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _initialize(self, x: torch.Tensor, seed: int, warm_state: Any) -> float | None:
        raise NotImplementedError

    def _e_step(self) -> None:
        raise NotImplementedError

    def _m_step(self) -> None:
        raise NotImplementedError

    def _elbo(self) -> float:
        raise NotImplementedError

    def _finalize(self) -> float:
        raise NotImplementedError


class DPGMM(VariationalMixture):
    """Truncated stick-breaking DP mixture of diagonal (or spherical) Gaussians fitted by closed-form CAVI.

    Args:
        truncation: T >= 2 components (T-1 sticks).
        covariance: "diag" (a Normal-Gamma per dimension) or "spherical" (one precision per component).
        alpha: DP concentration (> 0); fixed unless ``alpha_prior`` = (shape, rate) puts a Gamma prior on it.
        beta0, a0, b0: prior overrides (None: data-driven, see :func:`default_prior`).
        prior_strength: multiplies the data-driven a0 and b0 (same mean precision, more pseudo-counts).
        topk: responsibilities kept per point (1 <= topk <= T; topk = T is exact CAVI).
        min_size: components whose expected count N_k ends below this are reset to the prior (see ``_finalize``).
        warm_start: "none" | "init" | "prior" (what ``fit(..., warm_state=...)`` does with a previous state).
        prior_decay: rho in (0, 1], weight of the previous posterior's pseudo-counts for warm_start="prior".
        init_subsample: points used for the cold-start seeding phase (None: max(20 T, 5000), at most N).
        init_iter: CAVI iterations on that subsample before the full data (cold start only).
        chunk_size: points per E-step chunk (None: 8192 on CPU, 65536 on CUDA).
        profile_gemm: time the E-step GEMMs separately (synchronising CUDA) into ``gemm_seconds_``.

    Fitted attributes (components in the final order, largest N_k first): ``weights_`` (T,) E[pi];
    ``means_`` (T, d) E[mu]; ``precisions_`` (T, d) or (T,) E[lambda]; ``mean_precision_`` (T,) beta;
    ``counts_`` (T,) N_k; ``alpha_`` E[alpha]; ``resp_values_`` / ``resp_index_`` (N, k) top-k
    responsibilities (rows sum to 1, sorted descending); ``labels_`` (N,); ``permutation_`` (T,) int64;
    ``state_`` (warm state for the next fit); ``history_``, ``lower_bound_``, ``converged_``, ``n_iter_``;
    ``init_elbo_`` (ELBO of the warm initial state, None for cold starts); ``gemm_seconds_``.
    """

    def __init__(self, truncation: int = 300, *, covariance: str = "diag", alpha: float = 1.0,
                 alpha_prior: tuple[float, float] | None = None, beta0: float | None = None,
                 a0: float | None = None, b0: float | None = None, prior_strength: float = 1.0,
                 topk: int = 8, max_iter: int = 100,
                 tol: float = 1e-4, min_size: float = 1.0, warm_start: str = "init", prior_decay: float = 0.5,
                 init_subsample: int | None = None, init_iter: int = 20, chunk_size: int | None = None,
                 profile_gemm: bool = False, verbose: bool = False):
        super().__init__(max_iter=max_iter, tol=tol, verbose=verbose)
        if truncation < 2:
            raise ValueError(f"truncation T must be >= 2 (T-1 sticks), got {truncation}; pass --truncation 2 or more")
        _check_choice("covariance", covariance, COVARIANCES, "--covariance")
        _check_choice("warm_start", warm_start, WARM_STARTS, "--warm-start")
        if not alpha > 0:
            raise ValueError(f"DP concentration alpha must be > 0, got {alpha} (--alpha)")
        if alpha_prior is not None and not (len(alpha_prior) == 2 and min(alpha_prior) > 0):
            raise ValueError(f"alpha_prior must be (shape, rate) with both > 0, got {alpha_prior} (--alpha-prior)")
        for name, value in (("beta0", beta0), ("a0", a0), ("b0", b0)):
            if value is not None and not value > 0:
                raise ValueError(f"prior {name} must be > 0 or None (data-driven default), got {value} (--{name})")
        if not 1 <= topk <= truncation:
            raise ValueError(f"topk must be in [1, truncation={truncation}], got {topk} (--topk)")
        if not 0 < prior_decay <= 1:
            raise ValueError(f"prior_decay (rho) must be in (0, 1], got {prior_decay} (--prior-decay)")
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size} (--min-size)")
        self.truncation, self.covariance, self.alpha, self.alpha_prior = int(truncation), covariance, float(alpha), alpha_prior
        if not prior_strength > 0:
            raise ValueError(f"prior_strength must be > 0, got {prior_strength} (--prior-strength)")
        self.beta0, self.a0, self.b0, self.topk = beta0, a0, b0, int(topk)
        self.prior_strength = float(prior_strength)
        self.min_size, self.warm_start, self.prior_decay = float(min_size), warm_start, float(prior_decay)
        self.init_subsample, self.init_iter, self.chunk_size = init_subsample, int(init_iter), chunk_size
        self.profile_gemm = profile_gemm

    # -- setup -----------------------------------------------------------------------------------------------
    def _setup(self, x: torch.Tensor) -> None:
        """Data-driven prior (centred coordinates) and the chunked sweeper for x."""
        self._x = x
        base = default_prior(x, self.truncation, self.covariance, alpha=self.alpha, alpha_prior=self.alpha_prior,
                             beta0=self.beta0, a0=self.a0, b0=self.b0, strength=self.prior_strength)
        self._shift = base.m0[0].clone()                                          # data mean (d,)
        self._base_prior = replace(base, m0=base.m0 - self._shift)
        self._prior = self._base_prior
        chunk = self.chunk_size or (65536 if x.is_cuda else 8192)
        self._sweeper = _Sweeper(x, self._shift, self.covariance == "spherical", self.truncation, chunk,
                                 self.profile_gemm)

    def check_warm_state(self, warm_state: Any, n: int, d: int) -> None:
        """Raise ValueError when ``warm_state`` does not fit features of shape (n, d) or this truncation."""
        if not isinstance(warm_state, dict) or warm_state.get("version") != STATE_VERSION:
            raise ValueError("warm_state is not a DP-GMM state (expected the `state` of a previous dp ClusterResult); "
                             "pass warm_state=None for a cold start")
        if warm_state["dim"] != d:
            raise ValueError(f"warm_state was fitted on d={warm_state['dim']} features but these have d={d}; keep "
                             "--pca-dim fixed across rounds or start cold (--warm-start none)")
        if warm_state["n_points"] != n:
            raise ValueError(f"warm_state holds responsibilities for N={warm_state['n_points']} points but got N={n}; "
                             "use the same points in the same order every round")
        if warm_state["truncation"] != self.truncation:
            raise ValueError(f"warm_state has truncation T={warm_state['truncation']} but this model has "
                             f"T={self.truncation}; keep --truncation fixed across rounds")

    def _initialize(self, x: torch.Tensor, seed: int, warm_state: Any) -> float | None:
        n, d = x.shape
        self._setup(x)
        self._q = None
        self.gemm_seconds_ = 0.0
        if warm_state is not None and self.warm_start != "none":
            self.check_warm_state(warm_state, n, d)
            return self._initialize_warm(warm_state)
        if n < self.truncation:
            raise ValueError(f"a cold start seeds T={self.truncation} components from distinct points but N={n}; "
                             f"lower --truncation to at most {n} or cluster more points")
        self._initialize_cold(seed)
        self.init_elbo_ = None
        return None

    def _initialize_warm(self, state: dict) -> float:
        """M-step of the previous responsibilities on the new features (and, for "prior", the pseudo-count prior)."""
        device = self._x.device
        values = torch.as_tensor(state["resp_values"], dtype=torch.float32).to(device)
        index = torch.as_tensor(state["resp_index"], dtype=torch.int64).to(device)
        values, index, raw, entropy = self._sweeper.sweep(None, values.shape[1], values, index)
        stats = self._sweeper.to_stats(raw, entropy)
        if self.warm_start == "prior":
            m, beta, a, b = update_components(stats.scaled(self.prior_decay), self._base_prior)
            self._prior = replace(self._base_prior, m0=m, beta0=beta, a0=a, b0=b)
        q_old = None
        if self.alpha_prior is not None and state.get("alpha_posterior") is not None:
            shape, rate = (torch.tensor(float(v), dtype=torch.float64, device=device) for v in state["alpha_posterior"])
            q_old = DPGMMParams(*(torch.empty(0),) * 6, alpha_shape=shape, alpha_rate=rate)
        self._values, self._index, self._stats = values, index, stats
        self._q = m_step(stats, self._prior, q_old)
        self.init_elbo_ = elbo(stats, self._q, self._prior)
        return self.init_elbo_

    def _initialize_cold(self, seed: int) -> None:
        """k-means++ seeds on a subsample, hard assignment, then ``init_iter`` CAVI iterations on the subsample
        with statistics scaled by N/M (so q lives on the full-data scale), components sorted by size after
        each M-step so that stick order follows size and the tail empties faster."""
        x, n = self._x, self._x.shape[0]
        generator = torch.Generator().manual_seed(int(seed))
        m_sub = min(n, self.init_subsample or max(20 * self.truncation, 5000))
        subset = torch.randperm(n, generator=generator)[:m_sub].sort().values.to(x.device)
        x_sub = x[subset]
        centred = x_sub - self._shift.float()
        # seeding needs a few points per component, not the whole subsample
        seeds = kmeanspp_seeds(centred[: max(10 * self.truncation, 2000)], self.truncation, generator)  # (T,)
        centres = centred[seeds]                                                    # (T, d)
        nearest = ((centres * centres).sum(1) - 2.0 * centred @ centres.T).argmin(1)  # (M,)
        sub_sweeper = _Sweeper(x_sub, self._shift, self.covariance == "spherical", self.truncation,
                               self._sweeper.chunk_size)
        ones = torch.ones(m_sub, 1, dtype=torch.float32, device=x.device)
        _, _, raw, entropy = sub_sweeper.sweep(None, 1, ones, nearest[:, None])
        scale = n / m_sub
        stats = sub_sweeper.to_stats(raw, entropy).scaled(scale)
        q = m_step(stats, self._prior)
        previous = None
        for _ in range(self.init_iter):
            _, _, raw, entropy = sub_sweeper.sweep(estep_matrix(q, self._prior), self.topk)
            stats = sub_sweeper.to_stats(raw, entropy).scaled(scale)
            stats = stats.permuted(torch.argsort(stats.counts, descending=True, stable=True))
            q = m_step(stats, self._prior, q)
            value = elbo(stats, q, self._prior)
            if previous is not None and abs(value - previous) <= self.tol * abs(value):
                break
            previous = value
        self._q = q

    # -- iterations ------------------------------------------------------------------------------------------
    def _e_step(self) -> None:
        w = estep_matrix(self._q, self._prior)
        self._values, self._index, raw, entropy = self._sweeper.sweep(w, self.topk)
        self._stats = self._sweeper.to_stats(raw, entropy)

    def _m_step(self) -> None:
        self._q = m_step(self._stats, self._prior, self._q)

    def _elbo(self) -> float:
        return elbo(self._stats, self._q, self._prior)

    # -- finalisation ----------------------------------------------------------------------------------------
    def _finalize(self) -> float:
        """Sort components by N_k (largest first), reset the small ones to the prior, refresh q; return the ELBO.

        Pruning: a component with final N_k < ``min_size`` is reset to the (base) prior: its responsibilities are
        removed and the affected rows renormalised over their remaining top-k entries (removed entries stay in
        ``resp_index`` with value 0). A component is kept anyway if removing it would leave some point with no
        responsibility at all. Permutation convention: ``permutation_[old] = new`` for kept components, where
        old ids are the ids of the fit's initial state (warm start: the previous round's ids; cold start: the
        seeding order), and ``permutation_[old] = -1`` for every reset component (its new slot is a fresh
        prior component with no predecessor). Kept components take new ids 0..K-1 by decreasing N_k; reset ones
        take the ids K..T-1. The returned ELBO is that of the final, sorted and pruned state (sorting by size
        usually raises it; pruning moves at most ``min_size`` expected points per reset component).
        """
        counts, values, index = self._stats.counts, self._values, self._index
        self.elbo_before_finalize_ = self._elbo()
        keep = counts >= self.min_size                                              # (T,)
        entry_kept = keep[index]                                                    # (N, k)
        orphans = ~(entry_kept & (values > 0)).any(1)
        keep[index[orphans, 0]] = True
        entry_kept = keep[index]
        touched = ((~entry_kept) & (values > 0)).any(1).nonzero()[:, 0]             # rows losing mass
        stats = self._stats
        if touched.numel():
            old_values, rows_index = values[touched], index[touched]
            new_values = old_values * entry_kept[touched]
            new_values = new_values / new_values.sum(1, keepdim=True)
            new_values, order_in_row = torch.sort(new_values, dim=1, descending=True)
            rows_index = torch.gather(rows_index, 1, order_in_row)
            old_values = torch.gather(old_values, 1, order_in_row)
            sweeper = _Sweeper(self._x[touched], self._shift, self._sweeper.spherical, self.truncation,
                               self._sweeper.chunk_size)
            _, _, raw_old, h_old = sweeper.sweep(None, values.shape[1], old_values, rows_index)
            _, _, raw_new, h_new = sweeper.sweep(None, values.shape[1], new_values, rows_index)
            raw = torch.cat([stats.sum_xx.reshape(self.truncation, -1), stats.sum_x, stats.counts[:, None]], 1)
            stats = self._sweeper.to_stats(raw - raw_old + raw_new, stats.entropy - h_old + h_new)
            values, index = values.clone(), index.clone()
            values[touched], index[touched] = new_values, rows_index
        # Reset components hold no statistics at all (not a float remainder).
        stats = SuffStats(stats.counts * keep, stats.sum_x * keep[:, None],
                          stats.sum_xx * (keep if stats.sum_xx.dim() == 1 else keep[:, None]), stats.entropy)
        # Kept components by decreasing N_k, then the reset ones.
        order = torch.argsort(torch.where(keep, stats.counts, -1.0), descending=True, stable=True)   # new -> old
        new_id = torch.empty_like(order)
        new_id[order] = torch.arange(self.truncation, device=order.device)        # old -> new
        prior = self._prior
        if self.warm_start == "prior" and prior is not self._base_prior:
            reset = (~keep)[:, None]
            prior = replace(prior, m0=torch.where(reset, self._base_prior.m0, prior.m0),
                            beta0=torch.where(~keep, self._base_prior.beta0, prior.beta0),
                            a0=torch.where(reset if prior.a0.dim() == 2 else ~keep, self._base_prior.a0, prior.a0),
                            b0=torch.where(reset if prior.b0.dim() == 2 else ~keep, self._base_prior.b0, prior.b0))
        self._prior = replace(prior, m0=prior.m0[order], beta0=prior.beta0[order], a0=prior.a0[order],
                              b0=prior.b0[order])
        self._stats = stats.permuted(order)
        self._values, self._index = values, new_id[index]
        self._q = m_step(self._stats, self._prior, self._q)
        self.permutation_ = torch.where(keep, new_id, -1).cpu().numpy().astype(np.int64)
        self._set_fitted_attributes()
        return self._elbo()

    def _set_fitted_attributes(self) -> None:
        q = self._q
        self.weights_ = stick.expected_weights(q.g1, q.g2)
        self.means_ = q.m + self._shift
        self.precisions_ = q.a / q.b
        self.mean_precision_ = q.beta
        self.counts_ = self._stats.counts
        self.alpha_ = float(expected_alpha(self._prior, q)[0])
        self.resp_values_, self.resp_index_ = self._values, self._index
        self.labels_ = self._index[:, 0]
        self.gemm_seconds_ = self._sweeper.gemm_seconds
        self.state_ = {
            "version": STATE_VERSION,
            "resp_values": self._values.cpu(),
            "resp_index": self._index.cpu(),
            "n_points": int(self._x.shape[0]),
            "dim": int(self._x.shape[1]),
            "truncation": self.truncation,
            "alpha_posterior": None if q.alpha_shape is None else (float(q.alpha_shape), float(q.alpha_rate)),
        }

    # -- entry for externally fitted posteriors (Pyro SVI) ---------------------------------------------------
    def fit_from_params(self, x: torch.Tensor, q: DPGMMParams, history: list[float]) -> "DPGMM":
        """Finish a posterior fitted elsewhere (means in input coordinates): one top-k E-step from ``q``, the
        closed-form M-step, then the same sort/prune as :meth:`fit`. ``history`` is stored as given."""
        x = check_features(x)
        start = time.perf_counter()
        self._setup(x)
        self.init_elbo_, self.gemm_seconds_ = None, 0.0
        self._q = replace(q, m=q.m.to(x.device, torch.float64) - self._shift)
        self._e_step()
        self._m_step()
        self.history_, self.n_iter_, self.converged_ = list(history), len(history), True
        self.lower_bound_ = self._finalize()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def params_in_input_coordinates(self) -> DPGMMParams:
        """The fitted q with means in the input coordinates (to set a Pyro guide from it)."""
        return replace(self._q, m=self._q.m + self._shift)

    @property
    def prior_in_input_coordinates(self) -> DPGMMPrior:
        return replace(self._prior, m0=self._prior.m0 + self._shift)


# ---------------------------------------------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------------------------------------------
class DPGMMBackend(ClusterBackend):
    """The DP-GMM behind the clustering seam; dispatches on ``inference`` ("cavi" closed form, "svi" Pyro).

    ``fit`` returns a validated :class:`ClusterResult` whose ``state`` is the small warm state
    (top-k responsibilities as CPU tensors, N, d, T, and q(alpha)'s two numbers), picklable with torch.save.
    """

    name = "dp"
    has_identities = True

    def __init__(self, truncation: int = 300, *, inference: str = "cavi", svi_steps: int = 2000,
                 svi_batch: int = 1024, svi_lr: float = 0.05, device: torch.device | str | None = None,
                 **engine_kwargs: Any):
        _check_choice("inference", inference, INFERENCES, "--inference")
        if svi_steps < 1 or svi_batch < 1 or not svi_lr > 0:
            raise ValueError(f"svi_steps, svi_batch must be >= 1 and svi_lr > 0; got {svi_steps}, {svi_batch}, {svi_lr}")
        self.engine_kwargs = dict(truncation=truncation, **engine_kwargs)
        DPGMM(**self.engine_kwargs)   # validate the options now, not at the first fit
        self.inference, self.svi_steps, self.svi_batch, self.svi_lr = inference, svi_steps, svi_batch, svi_lr
        self.device = None if device is None else torch.device(device)

    @classmethod
    def from_config(cls, cfg, device: torch.device | str | None = None) -> "DPGMMBackend":
        return cls(truncation=cfg.truncation, inference=cfg.inference, svi_steps=cfg.svi_steps,
                   svi_batch=cfg.svi_batch, svi_lr=cfg.svi_lr, device=device, covariance=cfg.covariance,
                   alpha=cfg.alpha, alpha_prior=cfg.alpha_prior, beta0=cfg.beta0, a0=cfg.a0, b0=cfg.b0,
                   prior_strength=cfg.prior_strength,
                   topk=cfg.topk, max_iter=cfg.max_iter, tol=cfg.tol, min_size=cfg.min_size,
                   warm_start=cfg.warm_start, prior_decay=cfg.prior_decay)

    def fit(self, features: torch.Tensor, *, seed: int, warm_state: Any = None) -> ClusterResult:
        # the engine runs check_features; convert only, so the (N, d) finiteness scan happens once
        x = torch.from_numpy(features) if isinstance(features, np.ndarray) else features
        if self.device is not None and isinstance(x, torch.Tensor):
            x = x.to(self.device)
        start = time.perf_counter()
        engine = DPGMM(**self.engine_kwargs)
        if self.inference == "svi":
            from .pyro_model import fit_svi
            engine = fit_svi(engine, check_features(x), seed=seed, steps=self.svi_steps, batch_size=self.svi_batch,
                             lr=self.svi_lr)
        else:
            engine.fit(x, seed=seed, warm_state=warm_state)
        seconds = time.perf_counter() - start
        n = x.shape[0]
        weights = engine.weights_.cpu().numpy()
        return ClusterResult(
            labels=engine.labels_.cpu().numpy(),
            resp_values=engine.resp_values_.cpu().numpy(),
            resp_index=engine.resp_index_.cpu().numpy(),
            weights=weights,
            active=active_mask(weights),
            objective=engine.lower_bound_ / n,
            history=[v / n for v in engine.history_],
            n_iter=engine.n_iter_,
            seconds=seconds,
            permutation=engine.permutation_,
            state=engine.state_,
            info={"inference": self.inference, "converged": bool(engine.converged_),
                  "alpha_mean": engine.alpha_, "K_active": int(active_mask(weights).sum()),
                  "K_reset": int((engine.permutation_ < 0).sum()),
                  "elbo_before_finalize": engine.elbo_before_finalize_ / n,
                  "elbo_init": None if engine.init_elbo_ is None else engine.init_elbo_ / n,
                  "warm_start": self.engine_kwargs.get("warm_start", "init") if warm_state is not None else "none",
                  "gemm_seconds": engine.gemm_seconds_},
        ).validate()
