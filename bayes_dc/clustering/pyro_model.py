"""The DP-GMM of ``dpgmm`` written in Pyro: model, mean-field guide, a minibatch Pyro SVI engine, and a Trace_ELBO
evaluator used to cross-check the closed-form ELBO.

Sites (components are event dimensions; the only plate is the data plate, dim -1):
    "alpha"  Gamma(s1, s2)                                   only when alpha has a prior
    "v"      Beta(1, alpha)^(T-1)                            event (T-1,)
    "lam"    full: the upper-triangular square root G of the precision Lambda = G G^T under Lambda ~
             Wishart(nu0, W0 = Psi0^{-1}) (:class:`WishartRoot`), event (K, d, d);
             diag: Gamma(a0, b0)^(K, d); spherical: Gamma(a0, b0)^K
    "mu"     full: MultivariateNormal(m0, scale_tril = G^{-T} / sqrt(kappa0)); else Normal(m0, 1/sqrt(kappa0 lam))
    "z"      Categorical(mix_weights(v)) in plate "data"     only for the ELBO cross-check (``resp`` given)
    "obs"    pyro.factor in plate "data": log N(x_n | mu_z, Lambda_z^{-1}) for the sampled z (cross-check), or
             log sum_{k in top-k(n)} pi_k N(x_n | mu_k, Lambda_k^{-1}) with z summed out (SVI)
K is the number of *live* components (see below); the cross-check uses all T.
The guide mirrors the model: q(alpha) = Gamma(w1, w2), q(v) = Beta(g1, g2), q(Lambda) = Wishart(nu, Psi^{-1})
or Gamma(a, b), q(mu | Lambda) of the prior's form with (m, kappa), and (cross-check only) q(z_n) = Categorical(r_n).
Every log-density has all its normalisers, so -Trace_ELBO().loss with z sampled from r is the full ELBO that
``dpgmm.elbo`` computes in closed form (Blei & Jordan 2006; Bishop 2006 §10.2).

Design of the SVI engine (``fit_svi``; issue 19):

* **Every guide sample is valid by construction.** Full covariance never samples a precision matrix and factorises
  it again (torch's Wishart does that, and in float its samples come out singular): ``WishartRoot`` draws the
  triangular root of Lambda directly by the reversed Bartlett decomposition, G = Psi-chol^{-T} B with B upper
  triangular, B_ii = sqrt(chi2(nu - d + i)) (clamped to the smallest positive float) and B_ij ~ N(0, 1), so
  diag(G) > 0 always; the likelihood and the mean's ``scale_tril`` use G itself (no Cholesky, no inverse of a
  sampled matrix). Guide parameters are unconstrained through Pyro's transforms and relative to the start
  (:func:`guide_components`): nu = d - 1 + exp(.) (the Wishart needs nu > d - 1), Psi's Cholesky factor = the
  start's times a lower-triangular factor with an exp diagonal (``constraints.lower_cholesky``), positive kappa,
  a, b, g1, g2, means moved in units of their posterior standard deviation. Full covariance runs in float64.
* **Initialised from the closed-form posterior.** The engine's own start (``DPGMM.svi_start``): a cold start's
  k-means++ seeding and CAVI (with merge/delete moves) on the subsample of max(20 T, 5000) points, or a warm
  start's M-step of the previous responsibilities, as CAVI itself starts; its statistics are scaled to N and one
  closed-form M-step gives the guide's starting q. So SVI begins where CAVI's full-data iterations would.
* **Live components only; empty ones held at the prior.** Components with no responsibility at the start are
  left out of model and guide: their guide is their prior, which contributes exactly 0 to the ELBO (KL 0, and
  their weight is dropped from the likelihood as the engine's top-k E-step drops it). Only their sticks (cheap)
  stay in the guide. No T x B x d x d tensor is built: the likelihood is one (B, K, d) product per step.
* **z summed out, analytically, over each point's top-k live components** (k = ``topk``): the data term is
  log sum_{k in top-k} pi_k N(x_n | mu_k, Lambda_k^{-1}) through ``pyro.factor``, so no enumeration machinery is
  needed, and for fixed globals it equals the best top-k q(z) (the engine's E-step) in closed form. The ELBO is
  Pyro's Trace_ELBO of that model; by Jensen it is >= the CAVI bound at the same q(globals) over the same live
  components.
* **Minibatches**: ``pyro.plate("data", N, subsample_size=B)`` scales the data term by N / B. Adam, with its step
  size divided by 10 at each plateau of the probe's objective (below) down to 1 % of ``--svi-lr``: at a fixed
  step size the ELBO is limited by Adam's steady jitter, not by the optimum.
* **Stopping**: every ``check_every`` steps the plug-in responsibilities of a fixed probe of points are compared
  with the previous check, and so is the objective estimated on that probe with common random numbers. A rise of
  less than ``ELBO_TOL`` nats per point is a plateau; SVI stops at a plateau at the smallest step size when at
  most ``tol`` of the probe's responsibility mass moved (CAVI's own criterion); well-separated clusters settle their
  responsibilities within a few steps, long before the globals reach the optimum. Else it warns a
  ``ConvergenceWarning`` at the end of ``--svi-steps``. A non-finite ELBO raises one ValueError naming
  --svi-lr. The posterior is then finished by the engine (``DPGMM.svi_finish``): one top-k E-step over all T,
  the closed-form M-step, sort/prune, as a CAVI fit ends.
* **Limit**: SVI has no merge/split/birth moves, so it cannot add components its start lacks; where the full data
  support more components than the start's subsample, it ends with fewer than CAVI (BENCHMARKS.md section 11.2).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import SVI, Trace_ELBO

from bayes_dc.clustering import stick
from bayes_dc.clustering.dpgmm.families import Components
from bayes_dc.clustering.dpgmm.prior import DPGMMPrior
from bayes_dc.clustering.dpgmm.variational import DPGMMParams
from bayes_dc.clustering.dpgmm.weights import StickParams

if TYPE_CHECKING:
    from bayes_dc.clustering.dpgmm.engine import DPGMM

COMPONENT_PARAMS = ("m", "kappa", "dof", "scale")
STICK_PARAMS = ("g1", "g2", "alpha_shape", "alpha_rate")
PROBE_POINTS = 2048          # points whose responsibilities decide SVI's convergence
LR_DROP = 0.1                # the Adam step size is multiplied by this at a plateau of the probe's ELBO ...
LR_FLOOR = 0.01              # ... down to this share of --svi-lr, where a plateau (with settled responsibilities) ends
PROBE_PARTICLES = 8          # guide draws (common random numbers) behind the probe's ELBO
#: converged when the probe's ELBO rose by less than this many nats per point between checks (a difference of
#: log-densities, so it does not depend on the units of the features)
ELBO_TOL = 1e-3


class WishartRoot(TorchDistribution):
    """Lambda ~ Wishart(dof, scale W = Psi^{-1}), represented by its upper-triangular root G (Lambda = G G^T,
    diag(G) > 0). ``psi_tril`` (..., d, d) is the Cholesky factor of Psi; ``dof`` (...) > d - 1.

    ``rsample`` is the reversed Bartlett decomposition (so the sample is triangular without any factorisation);
    ``log_prob`` is the Wishart density of G G^T times the Jacobian |d Lambda / d G| = 2^d prod_i G_ii^i (i from
    1), so the density is that of G, and KL(q || p) is the Wishart KL (the Jacobian cancels).
    """

    arg_constraints = {"dof": constraints.positive, "psi_tril": constraints.lower_cholesky}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, dof: torch.Tensor, psi_tril: torch.Tensor, validate_args=None):
        batch_shape = torch.broadcast_shapes(dof.shape, psi_tril.shape[:-2])
        d = psi_tril.shape[-1]
        self.dof = dof.expand(batch_shape)
        self.psi_tril = psi_tril.expand(batch_shape + (d, d))
        super().__init__(batch_shape, (d, d), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[-1]
        return WishartRoot(self.dof.expand(batch_shape), self.psi_tril.expand(batch_shape + (d, d)))

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)                                  # (..., d, d)
        d = shape[-1]
        i = torch.arange(1, d + 1, dtype=self.dof.dtype, device=self.dof.device)
        concentration = (self.dof.unsqueeze(-1) - d + i) / 2                        # (..., d): chi2(nu - d + i) / 2
        chi2 = 2 * torch._standard_gamma(concentration.expand(shape[:-1]))
        diag = chi2.clamp_min(torch.finfo(chi2.dtype).tiny).sqrt()
        noise = torch.randn(shape, dtype=self.dof.dtype, device=self.dof.device).triu(1)
        root = noise + torch.diag_embed(diag)                                       # B, upper triangular
        # Psi-chol^{-T} is upper triangular: G = L^{-T} B without forming an inverse
        return torch.linalg.solve_triangular(self.psi_tril.transpose(-1, -2).expand(shape), root, upper=True)

    def log_prob(self, value):
        d = value.shape[-1]
        diag = value.diagonal(dim1=-2, dim2=-1)                                     # (..., d)
        log_diag = diag.log()
        i = torch.arange(1, d + 1, dtype=value.dtype, device=value.device)
        log_det_psi = 2 * self.psi_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        trace = (self.psi_tril.transpose(-1, -2) @ value).pow(2).sum((-1, -2))    # tr(Psi G G^T)
        nu = self.dof
        wishart = (-nu * d / 2 * math.log(2) + nu / 2 * log_det_psi - torch.mvlgamma(nu / 2, d)
                   + (nu - d - 1) * log_diag.sum(-1) - trace / 2)
        return wishart + d * math.log(2) + (i * log_diag).sum(-1)


# ---------------------------------------------------------------------------------------------------------------
# Model and guide
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """What model and guide share: the prior rows of the ``live`` components (K,) of T, alpha, ``topk``, and the
    guide's starting q of the live rows (``start``), relative to which the guide is parameterised, with the
    posterior standard deviations of its means (``mean_sd`` (K, d))."""

    prior: Components
    start: Components
    mean_sd: torch.Tensor
    live: torch.Tensor
    truncation: int
    alpha: float
    alpha_prior: tuple[float, float] | None
    topk: int

    @property
    def full(self) -> bool:
        return self.prior.scale.dim() == 3


def _to(c: Components, dtype: torch.dtype) -> Components:
    return Components(*(getattr(c, f).to(dtype) for f in COMPONENT_PARAMS))


def make_spec(prior: DPGMMPrior, q: DPGMMParams, live: torch.Tensor, topk: int, dtype: torch.dtype) -> ModelSpec:
    """The spec for the ``live`` rows of ``prior`` with the guide starting at ``q``."""
    start = _to(q.components.rows(live), dtype)
    full = start.scale.dim() == 3
    if full:       # Var(mu_j) ~ Sigma_jj / kappa with Sigma ~ Psi / nu
        variance = (start.scale * start.scale).sum(-1) / start.dof[:, None]
    else:          # 1 / E[lambda] = b / a per dimension (spherical: one for all)
        variance = (start.scale / start.dof).reshape(start.dof.shape[0], -1).expand_as(start.m)
    mean_sd = (variance / start.kappa[:, None]).sqrt()
    return ModelSpec(_to(prior.components.rows(live), dtype), start, mean_sd, live, prior.components.m.shape[0],
                     prior.alpha, prior.alpha_prior, min(topk, live.shape[0]))


def _precision_site(c: Components, full: bool):
    """The distribution of the live components' precisions (K rows of (m, kappa, dof, scale))."""
    if full:
        return WishartRoot(c.dof, c.scale).to_event(1)
    return dist.Gamma(c.dof, c.scale).to_event(c.dof.dim())


def _mean_site(c: Components, lam: torch.Tensor, full: bool):
    """The distribution of the component means given the precisions (full: their roots G)."""
    if full:
        eye = torch.eye(lam.shape[-1], dtype=lam.dtype, device=lam.device)
        # (kappa G G^T)^{-1} = (G^{-T} / sqrt kappa)(G^{-T} / sqrt kappa)^T, and G^{-T} is lower triangular
        scale_tril = torch.linalg.solve_triangular(lam.transpose(-1, -2), eye, upper=False)
        return dist.MultivariateNormal(c.m, scale_tril=scale_tril * c.kappa.rsqrt()[:, None, None]).to_event(1)
    lam_per_dim = lam.unsqueeze(-1) if c.dof.dim() == 1 else lam                    # (..., K, d|1)
    return dist.Normal(c.m, (c.kappa[:, None] * lam_per_dim).rsqrt()).to_event(2)


def log_likelihood(x: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor, full: bool) -> torch.Tensor:
    """log N(x_n | mu_k, Lambda_k^{-1}) (..., B, K) for points x (B, d) and K components with means mu (..., K, d)
    and precisions lam (full: roots G (..., K, d, d) with Lambda = G G^T; diag (..., K, d); spherical (..., K))."""
    d = x.shape[-1]
    if full:
        diff = x[:, None, :] - mu.unsqueeze(-3)                                      # (..., B, K, d)
        y = torch.einsum("...bkd,...kde->...bke", diff, lam)                        # G^T (x - mu)
        log_det = lam.diagonal(dim1=-2, dim2=-1).log().sum(-1).unsqueeze(-2)       # (..., 1, K)
        return log_det - 0.5 * y.pow(2).sum(-1) - 0.5 * d * stick.LOG_2PI
    lam_per_dim = lam.unsqueeze(-1).expand(mu.shape) if lam.dim() == mu.dim() - 1 else lam   # (..., K, d)
    quad = (x * x) @ lam_per_dim.transpose(-1, -2) - 2 * x @ (lam_per_dim * mu).transpose(-1, -2) \
        + (lam_per_dim * mu * mu).sum(-1).unsqueeze(-2)                              # (..., B, K)
    return 0.5 * lam_per_dim.log().sum(-1).unsqueeze(-2) - 0.5 * quad - 0.5 * d * stick.LOG_2PI


def _drop_plate_dim(value: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Vectorised particles put the component sites in shape (P, 1, ...event); drop the data plate's 1 so the
    likelihood broadcasts to (P, B, K)."""
    return value.squeeze(-event_dims - 1) if value.dim() > event_dims + 1 else value


def log_weights(v: torch.Tensor) -> torch.Tensor:
    """log pi (..., T) from sticks v (..., T-1), computed in logs (v near 0 or 1 stays finite)."""
    tiny = torch.finfo(v.dtype).tiny
    log_v, log_rest = v.clamp_min(tiny).log(), (1 - v).clamp_min(tiny).log()
    zero = torch.zeros_like(v[..., :1])
    return torch.cat([log_v, zero], -1) + torch.cat([zero, log_rest.cumsum(-1)], -1)


def model(x: torch.Tensor, spec: ModelSpec, subsample_size: int | None = None,
          resp: torch.Tensor | None = None, subsample: torch.Tensor | None = None) -> None:
    """DP-GMM generative model for x (N, d) over the live components of ``spec``; ``resp`` belongs to the guide
    (model and guide take the same arguments): with it z is a site, without it z is summed out over each point's
    top-k live components. The data plate takes minibatches of ``subsample_size`` or the given ``subsample`` rows."""
    n, d = x.shape
    p, t, full = spec.prior, spec.truncation, spec.full
    options = dict(dtype=x.dtype, device=x.device)
    if spec.alpha_prior is None:
        alpha = torch.tensor(spec.alpha, **options)
    else:
        alpha = pyro.sample("alpha", dist.Gamma(torch.tensor(spec.alpha_prior[0], **options),
                                                torch.tensor(spec.alpha_prior[1], **options)))
    concentration0 = alpha.unsqueeze(-1).expand(alpha.shape + (t - 1,))               # (..., T-1)
    v = pyro.sample("v", dist.Beta(torch.ones_like(concentration0), concentration0).to_event(1))
    lam = pyro.sample("lam", _precision_site(p, full))                                  # (..., K, d, d)|(K, d)|(K,)
    mu = pyro.sample("mu", _mean_site(p, lam, full))                                    # (..., K, d)
    event = {True: 3, False: p.dof.dim()}[full]
    lam, mu = _drop_plate_dim(lam, event), _drop_plate_dim(mu, 2)
    log_pi = _drop_plate_dim(log_weights(v), 1)                                        # (..., T)
    with pyro.plate("data", n, subsample_size=subsample_size, subsample=subsample, dim=-1) as index:
        loglik = log_likelihood(x[index], mu, lam, full)                               # (..., B, K)
        if resp is not None:
            z = pyro.sample("z", dist.Categorical(logits=log_pi.unsqueeze(-2)))          # (..., B), ids among T
            pyro.factor("obs", loglik.gather(-1, z.unsqueeze(-1)).squeeze(-1))
        else:
            joint = loglik + log_pi[..., spec.live].unsqueeze(-2)                       # (..., B, K)
            pyro.factor("obs", joint.topk(spec.topk, dim=-1).values.logsumexp(-1))


def guide(x: torch.Tensor, spec: ModelSpec, subsample_size: int | None = None,
          resp: torch.Tensor | None = None, subsample: torch.Tensor | None = None) -> None:
    """Mean-field guide reading its parameters (live rows) from the param store (see :func:`set_guide_params`).

    ``resp`` (N, T): when given, z_n ~ Categorical(resp_n) is sampled here (the Trace_ELBO cross-check).
    """
    if spec.alpha_prior is not None:
        pyro.sample("alpha", dist.Gamma(pyro.param("alpha_shape"), pyro.param("alpha_rate")))
    pyro.sample("v", dist.Beta(pyro.param("g1"), pyro.param("g2")).to_event(1))
    q = guide_components(spec)
    lam = pyro.sample("lam", _precision_site(q, spec.full))
    pyro.sample("mu", _mean_site(q, lam, spec.full))
    if resp is not None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Categorical(resp))


def guide_components(spec: ModelSpec) -> Components:
    """The guide's live rows from the param store. Each parameter is a relative change of ``spec.start``, so one
    Adam step (about lr in unconstrained units) means the same at every scale of the features and of N_k:
    m = m_start + mean_sd * offset; kappa, a, b (diag/spherical) positive through exp; nu = d - 1 + exp(.) (the
    Wishart needs nu > d - 1; exp rather than softplus, so that nu in the thousands moves as readily as nu near d);
    Psi's Cholesky factor = L_start @ F with F lower triangular with an exp diagonal
    (``constraints.lower_cholesky``), so the product always has a positive diagonal."""
    start = spec.start
    m = start.m + spec.mean_sd * pyro.param("m_offset")
    if spec.full:
        scale = start.scale @ pyro.param("scale_factor")
    else:
        scale = pyro.param("scale")
    return Components(m, pyro.param("kappa"), pyro.param("dof"), scale)


def set_guide_params(spec: ModelSpec, q: DPGMMParams) -> None:
    """Clear the param store and set the guide to ``spec.start`` for the live components and to q's sticks."""
    pyro.clear_param_store()
    c = spec.start
    d = c.m.shape[1]
    dtype = c.m.dtype
    params = [("m_offset", torch.zeros_like(c.m), constraints.real), ("kappa", c.kappa, constraints.positive),
              ("g1", q.g1, constraints.positive), ("g2", q.g2, constraints.positive),
              ("alpha_shape", q.alpha_shape, constraints.positive), ("alpha_rate", q.alpha_rate, constraints.positive)]
    if spec.full:
        params += [("dof", c.dof, constraints.greater_than(d - 1.0)),
                   ("scale_factor", torch.eye(d, dtype=dtype).expand_as(c.scale), constraints.lower_cholesky)]
    else:
        params += [("dof", c.dof, constraints.positive), ("scale", c.scale, constraints.positive)]
    for name, value, constraint in params:
        if value is not None:
            pyro.param(name, value.detach().clone().to(dtype), constraint=constraint)


def guide_params(spec: ModelSpec, base: DPGMMParams) -> DPGMMParams:
    """q with the guide's live rows and sticks put into ``base`` (float64, detached); other rows unchanged."""
    store = pyro.get_param_store()
    with torch.no_grad():
        live_rows = _to(guide_components(spec), torch.float64)
    sticks = (pyro.param(name).detach().double() if name in store else None for name in STICK_PARAMS)
    return DPGMMParams(base.components.put_rows(spec.live, live_rows), StickParams(*sticks))


def trace_elbo(x: torch.Tensor, prior: DPGMMPrior, q: DPGMMParams, resp: torch.Tensor, *, particles: int = 200,
               batches: int = 20, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo ELBO from Pyro's Trace_ELBO for the guide set to q (all T components) with z ~ Categorical(resp
    (N, T)). Runs ``batches`` vectorised estimates of ``particles`` particles each; returns (mean, standard error)."""
    pyro.set_rng_seed(seed)
    t = q.components.m.shape[0]
    spec = make_spec(prior, q, torch.arange(t, device=x.device), t, x.dtype)
    set_guide_params(spec, q)
    loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    estimates = torch.tensor([-loss.loss(model, guide, x, spec, None, resp) for _ in range(batches)],
                             dtype=torch.float64)
    return float(estimates.mean()), float(estimates.std() / math.sqrt(batches))


def svi_objective(engine: "DPGMM", x: torch.Tensor, *, particles: int = 50, seed: int = 0) -> float:
    """The SVI objective of the guide that :func:`fit_svi` ended with (z summed out over the top-k live
    components), on all of x (N, d), averaged over ``particles`` guide draws: a lower bound on log p(x), in nats.
    The param store must still hold that fit's guide."""
    spec = engine.svi_spec_
    xc = (x - engine.svi_shift_).to(spec.start.m.dtype)
    pyro.set_rng_seed(seed)
    loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    return -float(loss.loss(model, guide, xc, spec))


# ---------------------------------------------------------------------------------------------------------------
# The SVI engine
# ---------------------------------------------------------------------------------------------------------------
def _plugin_responsibilities(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Responsibilities (P, K) of probe points x (P, d) under the guide's mean parameters (E[Lambda]'s root, m,
    E[v]): a deterministic summary of where SVI is, compared between checks to decide convergence."""
    with torch.no_grad():
        q = guide_components(spec)
        g1, g2 = pyro.param("g1"), pyro.param("g2")
        if spec.full:
            # E[Lambda] = nu Psi^{-1}: its root sqrt(nu) L^{-T} is upper triangular
            eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
            root = torch.linalg.solve_triangular(q.scale.transpose(-1, -2), eye, upper=True)
            lam = root * q.dof.sqrt()[:, None, None]
        else:
            lam = q.dof / q.scale
        joint = log_likelihood(x, q.m, lam, spec.full) + log_weights(g1 / (g1 + g2))[spec.live]
        top = joint.topk(spec.topk, dim=-1)
        return torch.zeros_like(joint).scatter_(-1, top.indices, torch.softmax(top.values, -1))


def _probe_elbo(x: torch.Tensor, spec: ModelSpec, probe: torch.Tensor, seed: int) -> float:
    """The SVI objective per point with the data term estimated on the fixed ``probe`` rows (scaled to N), from
    ``PROBE_PARTICLES`` guide draws with the same random numbers at every call (common random numbers, so the
    difference between two calls is the change of the parameters, not Monte Carlo noise). The global RNG state is
    restored afterwards, so the fit's own draws do not depend on how often this runs."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    loss = Trace_ELBO(num_particles=PROBE_PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        value = -float(loss.loss(model, guide, x, spec, None, None, probe))
    torch.set_rng_state(state)
    return value / x.shape[0]


def fit_svi(engine: "DPGMM", x: torch.Tensor, *, seed: int, steps: int, batch_size: int, lr: float,
            warm_state=None, check_every: int | None = None) -> "DPGMM":
    """Fit the DP-GMM by minibatch Pyro SVI (see the module docstring), then finish through the engine.

    ``engine.history_`` holds -loss of every step run (a one-draw minibatch estimate of the full-data ELBO, in
    nats); ``engine.converged_`` whether SVI stopped on its criterion before ``steps``; ``engine.svi_elbo_`` the
    mean estimate over the last ``check_every`` steps; ``engine.svi_spec_`` / ``svi_shift_`` what
    :func:`svi_objective` needs. Full covariance runs in float64, the others in float32.
    """
    n, d = x.shape
    pyro.set_rng_seed(seed)
    q0, prior, shift, live = engine.svi_start(x, seed=seed, warm_state=warm_state)   # centred coordinates
    dtype = torch.float64 if engine.covariance == "full" else torch.float32
    xc = (x - shift).to(dtype)
    spec = make_spec(prior, q0, live, engine.topk, dtype)
    set_guide_params(spec, q0)
    batch = min(batch_size, n)
    optimizer = pyro.optim.Adam({"lr": lr})
    step_size = lr
    svi = SVI(model, guide, optimizer, Trace_ELBO(max_plate_nesting=1))
    generator = torch.Generator().manual_seed(int(seed))
    probe_rows = torch.randperm(n, generator=generator)[:PROBE_POINTS].to(x.device)
    probe = xc[probe_rows]
    check_every = check_every or max(25, steps // 40)
    previous = _plugin_responsibilities(probe, spec)
    previous_elbo = _probe_elbo(xc, spec, probe_rows, seed)
    history, converged = [], False
    for step in range(1, steps + 1):
        value = -svi.step(xc, spec, batch)
        if not math.isfinite(value):
            raise ValueError(f"Pyro SVI's ELBO estimate became non-finite at step {step}; lower --svi-lr (now {lr}) "
                             f"or raise --svi-batch (now {batch_size}), or use --inference cavi")
        history.append(value)
        if step % check_every == 0:
            current, current_elbo = _plugin_responsibilities(probe, spec), _probe_elbo(xc, spec, probe_rows, seed)
            moved = 0.5 * float((current - previous).abs().sum(-1).mean())
            gained = current_elbo - previous_elbo
            previous, previous_elbo = current, current_elbo
            if gained < ELBO_TOL:
                if moved <= engine.tol and step_size <= lr * LR_FLOOR * 1.0001:
                    converged = True
                    break
                # a plateau at this step size: Adam's steady jitter, not the optimum, limits the ELBO
                step_size = max(step_size * LR_DROP, lr * LR_FLOOR)
                for optim in optimizer.optim_objs.values():
                    for group in optim.param_groups:
                        group["lr"] = step_size
    if not converged:
        from bayes_dc.clustering.dpgmm.engine import ConvergenceWarning
        warnings.warn(ConvergenceWarning(
            f"Pyro SVI used all --svi-steps {steps} steps before the responsibilities of its {probe.shape[0]} probe "
            f"points moved less than tol={engine.tol} and its ELBO rose less than {ELBO_TOL} nats per point between "
            "checks; raise "
            "--svi-steps, --svi-lr or --tol"))
    q = guide_params(spec, q0)
    engine = engine.svi_finish(q, history, converged)
    # SVI's own estimate of the (z-collapsed) ELBO at its end: the mean of its last check window of steps
    engine.svi_elbo_ = float(sum(history[-check_every:]) / len(history[-check_every:]))
    engine.svi_spec_, engine.svi_shift_ = spec, shift
    return engine
