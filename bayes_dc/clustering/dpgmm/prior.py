"""The DP-GMM prior, built in one place for the CAVI engine and the Pyro SVI engine.

The prior is meant to say the same thing at every dimension d and every number of points N:

* **m0** = the data mean; **kappa0** (``kappa0``, Bishop's beta0) small, so the prior spread of a component mean,
  E[Sigma] / kappa0, is wider than the data (default :data:`DEFAULT_KAPPA0`);
* **degrees of freedom**: ``prior_dof`` = the number of pseudo-observations behind each variance. Full: Wishart
  nu0 = d - 1 + prior_dof, whose marginal for each variance Sigma_jj is InvGamma(prior_dof / 2, .); with the
  default 3 that is nu0 = d + 2, the weakest Wishart with a finite E[Sigma] (as DeepDPM and bnpy). Diag: the same
  marginal as an independent Gamma(a0 = prior_dof / 2) precision per dimension; spherical: one Gamma(a0 =
  prior_dof / 2) precision per component. So the prior weighs as much as 3 points in every family and at every d
  (scikit-learn's nu0 = d, and this project's former a0 = d / 2 per dimension, grow with d).
* **scale**: ``prior_scale`` s, with **E[Sigma_k] under the prior = s x the data covariance** (full: Psi0 =
  s (nu0 - d - 1) C; diag: b0 = s var_j (a0 - 1); spherical: b0 = s mean_j(var_j) (a0 - 1)). A tensor instead of
  a float gives E[Sigma_k] directly ((d, d) full, (d,) diag, () spherical).
  ``prior_scale_update`` re-estimates s between sweeps by maximising the ELBO (closed form, see
  :func:`updated_scale`).

Defaults, measured with ``experiments/bench_prior.py`` (K_active and NMI per prior scale, kappa0 and the scale
update on several data sets: BENCHMARKS.md section 6, "The prior scale, its empirical-Bayes update"): K moves
with s in either direction depending on the data, and s = 0.3 is the middle of the range that does best overall.
kappa0 hardly matters; 0.01 makes the prior spread of the means, E[Sigma] / kappa0 = 30 x the data covariance,
flat over the data. The empirical-Bayes update of s (off by default) does not make K more meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from bayes_dc.clustering.dpgmm.families import Components, CovarianceFamily
from bayes_dc.config.rules import OptionError, check_option
from bayes_dc.clustering.dpgmm.weights import StickBreaking, WeightPrior

DEFAULT_PRIOR_DOF = 3.0     # pseudo-observations per variance: nu0 = d + 2 for full covariance
DEFAULT_KAPPA0 = 0.01       # mean precision factor: prior spread of the means = 100 x E[Sigma_k]
DEFAULT_PRIOR_SCALE = 0.3   # E[Sigma_k] = 0.3 x data covariance (measurements above)


@dataclass
class DPGMMPrior:
    """Prior of the DP-GMM, expanded per component (float64, one device).

    ``components``: T rows of m0, kappa0, dof, scale (see :class:`.families.Components`); ``unit``: the same rows at
    scale s = 1 (None when rows differ, e.g. the pseudo-count prior of ``warm_start="prior"``, which has no scalar
    scale); ``scale``: s; ``alpha``: fixed DP concentration, or the initial E[alpha] when ``alpha_prior`` =
    (shape s1, rate s2) makes alpha random.
    """

    components: Components
    unit: Components | None
    scale: float
    alpha: float
    alpha_prior: tuple[float, float] | None = None
    #: the prior on the mixture weights (None: the stick-breaking prior of ``alpha`` / ``alpha_prior``)
    weight_prior: WeightPrior | None = None

    def __post_init__(self) -> None:
        if self.weight_prior is None:
            self.weight_prior = StickBreaking(self.alpha, self.alpha_prior)

    @property
    def shared(self) -> bool:
        """Whether every component has the same prior (then components may be reordered freely)."""
        return self.unit is not None

    def with_scale(self, family: CovarianceFamily, scale: float) -> "DPGMMPrior":
        if self.unit is None:
            raise ValueError("this prior has per-component rows and no scalar scale to change")
        return replace(self, components=family.rescaled(self.unit, scale), scale=float(scale))


def check_prior_options(prior_scale, prior_dof: float | None, kappa0: float | None) -> None:
    """OptionError for a non-positive scale (E[Sigma_k] = prior_scale x the data covariance), too few degrees of
    freedom (> 2, so that E[Sigma_k] exists) or a non-positive kappa0: the ranges of :data:`bayes_dc.config.rules.RANGES`."""
    if isinstance(prior_scale, torch.Tensor):
        check_expected_cov(prior_scale)
    else:
        check_option("prior_scale", prior_scale)
    check_option("prior_dof", prior_dof)
    check_option("kappa0", kappa0)


def check_expected_cov(value: torch.Tensor) -> None:
    """An explicit E[Sigma_k]: a positive scalar, positive variances (d,) or a positive-definite matrix (d, d)."""
    value = value.double()
    if value.dim() == 2:
        if value.shape[0] != value.shape[1] or not torch.allclose(value, value.T):
            raise OptionError("prior_scale", "a prior scale matrix must be symmetric (d, d), got shape "
                                             f"{tuple(value.shape)} (`prior_scale`)")
        smallest = float(torch.linalg.eigvalsh(value)[0])
        if not smallest > 0:
            raise OptionError("prior_scale", "the prior scale matrix E[Sigma_k] is not positive definite (smallest "
                                             f"eigenvalue {smallest:.3g}); pass a positive-definite matrix or a float > 0 "
                                             "(`prior_scale`)")
    elif value.dim() <= 1:
        if not bool((value > 0).all()):
            raise OptionError("prior_scale", "prior scale variances must all be > 0, got minimum "
                                             f"{float(value.min()):.3g} (`prior_scale`)")
    else:
        raise OptionError("prior_scale", "a prior scale must be a float, (d,) variances or a (d, d) matrix, got shape "
                                         f"{tuple(value.shape)} (`prior_scale`)")


def data_moments(x: torch.Tensor, covariance_matrix: bool, allreduce: Callable[[torch.Tensor], torch.Tensor],
                 chunk_size: int = 65536) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Number of points, mean (d,) and covariance (N - 1 normalised) of x (N, d), float64.

    Returns the (d, d) covariance when ``covariance_matrix`` else the (d,) variances. Two passes (mean, then centred
    second moments of float32 chunks, multiplied and accumulated in float64); every sum goes through ``allreduce``.
    """
    n, d = x.shape
    totals = torch.zeros(d + 1, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_size):
        totals[:d] += x[start:start + chunk_size].sum(0, dtype=torch.float64)
    totals[d] = n
    totals = allreduce(totals)
    count = int(totals[d])
    mean = totals[:d] / count
    second = torch.zeros((d, d) if covariance_matrix else (d,), dtype=torch.float64, device=x.device)
    shift = mean.float()
    for start in range(0, n, chunk_size):
        xc = x[start:start + chunk_size] - shift
        # in float64: a float32 product's rounding (~eps N |x|^2) let a nearly singular covariance (duplicated points
        # at scale 1e3, fuzzed) pass as a wide one, and the fit's ELBO then fell by 8 nats
        if covariance_matrix:
            xc = xc.double()
            second += xc.T @ xc
        else:
            second += (xc * xc).sum(0, dtype=torch.float64)
    second = allreduce(second) / max(count - 1, 1)
    return count, mean, second


def build_prior(family: CovarianceFamily, mean: torch.Tensor, data_cov: torch.Tensor, truncation: int, *,
                prior_scale: float | torch.Tensor = DEFAULT_PRIOR_SCALE, prior_dof: float | None = None,
                kappa0: float | None = None, alpha: float = 1.0,
                alpha_prior: tuple[float, float] | None = None, weight_prior: WeightPrior | None = None) -> DPGMMPrior:
    """The prior for ``family`` from the data mean (d,) and covariance ((d, d), or (d,) variances).

    Raises ValueError naming the fix when the data covariance is singular for a full-covariance prior.
    """
    check_prior_options(prior_scale, prior_dof, kappa0)
    dof = DEFAULT_PRIOR_DOF if prior_dof is None else float(prior_dof)
    kappa = DEFAULT_KAPPA0 if kappa0 is None else float(kappa0)
    if isinstance(prior_scale, torch.Tensor):
        unit_cov, scale = prior_scale.to(mean.device, torch.float64), 1.0
        expected_shape = {"full": (family.dim, family.dim), "diag": (family.dim,), "spherical": ()}[family.name]
        if tuple(unit_cov.shape) != expected_shape:
            raise OptionError("prior_scale", f"a prior scale tensor for covariance={family.name!r} must have shape "
                                             f"{expected_shape}, got {tuple(unit_cov.shape)} (`prior_scale`)")
    else:
        unit_cov, scale = family.expected_cov_from_data(data_cov.clamp_min(1e-12) if data_cov.dim() == 1
                                                        else data_cov), float(prior_scale)
        if unit_cov.dim() == 2:
            info = torch.linalg.cholesky_ex(unit_cov).info
            # singular also when the smallest variance is at the float32 resolution of the largest (the fit's
            # float32 E-step cannot resolve that direction; fuzzed: collinear points then failed the Cholesky)
            spread = torch.linalg.eigvalsh(data_cov.double())                      # ascending
            resolution = family.dim * torch.finfo(torch.float32).eps ** 2 * float(spread[-1])
            if int(info) != 0 or float(spread[0]) <= resolution:
                raise OptionError("covariance", f"the data covariance of these d={family.dim} features is singular "
                                                "(rank < d), so a full-covariance prior scaled from it is not positive "
                                                "definite; lower `pca_dim`, drop constant or duplicate dimensions, or "
                                                "use covariance='diag'")
    unit = family.prior(mean.double(), unit_cov, dof, kappa, truncation)
    return DPGMMPrior(components=family.rescaled(unit, scale), unit=unit, scale=scale, alpha=float(alpha),
                      alpha_prior=None if alpha_prior is None else (float(alpha_prior[0]), float(alpha_prior[1])),
                      weight_prior=weight_prior)


def updated_scale(family: CovarianceFamily, q: Components, prior: DPGMMPrior, occupied: torch.Tensor) -> float:
    """Empirical-Bayes prior scale: argmax_s of the ELBO given q, s* = sum shape_k / sum rate_k (closed form).

    Only ``occupied`` components (T,) bool enter: an empty component's optimal q is the prior itself, whatever s
    is, so its bound terms are 0 at every s once the components are updated again (do that right after).
    """
    shape, rate = family.scale_terms(q.rows(occupied), prior.unit.rows(occupied))
    return float(shape.sum() / rate.sum())
