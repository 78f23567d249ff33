"""The DP-GMM of ``dpgmm`` written in Pyro: model, mean-field guide, a Pyro SVI engine, and a Trace_ELBO
evaluator used to cross-check the closed-form ELBO.

Sites (components are event dimensions, so the only plate is the data plate, dim -1):
    "alpha"  Gamma(s1, s2)                                   only when alpha has a prior
    "v"      Beta(1, alpha)^(T-1)                            event (T-1,)
    "lam"    full: Wishart(nu0, W0 = Psi0^{-1})^T            event (T, d, d)
             diag: Gamma(a0, b0)^(T, d); spherical: Gamma(a0, b0)^T
    "mu"     full: MultivariateNormal(m0, precision kappa0 lam)^T; else Normal(m0, 1/sqrt(kappa0 lam))^(T, d)
    "z"      Categorical(mix_weights(v))                     in plate "data"
    "obs"    Normal(mu_z, lam_z^{-1}) (full: MultivariateNormal with precision lam_z)   event (d,), in plate "data"
The guide mirrors it with q(alpha) = Gamma(w1, w2), q(v) = Beta(g1, g2), q(lam) = Wishart(nu, Psi^{-1}) or
Gamma(a, b), q(mu | lam) of the same form as the prior with (m, kappa), and (for the ELBO cross-check)
q(z_n) = Categorical(r_n). Every log-density is Pyro's own with all normalisers, so -Trace_ELBO().loss is the
full ELBO that ``dpgmm.elbo`` computes in closed form (Blei & Jordan 2006; Bishop 2006 §10.2).

SVI (``fit_svi``): z is enumerated out in the model (``config_enumerate`` + ``TraceEnum_ELBO``), and the data
plate subsamples minibatches (``pyro.plate(..., subsample_size=B)``, which scales the likelihood by N/B). The prior
is the engine's own (``DPGMM.make_prior``, the same ``prior_scale`` / ``prior_dof`` / ``kappa0``).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.ops.indexing import Vindex

from . import stick
from .dpgmm.families import Components, make_family
from .dpgmm.prior import DPGMMPrior
from .dpgmm.seeding import kmeanspp_seeds, nearest_centre
from .dpgmm.variational import DPGMMParams, m_step

if TYPE_CHECKING:
    from .dpgmm.engine import DPGMM

COMPONENT_PARAMS = ("m", "kappa", "dof", "scale")
STICK_PARAMS = ("g1", "g2", "alpha_shape", "alpha_rate")


def _is_full(components: Components) -> bool:
    return components.scale.dim() == 3


def _precision_site(components: Components, full: bool):
    """The distribution of the component precisions for rows (m, kappa, dof, scale)."""
    if full:
        psi = components.scale @ components.scale.transpose(-1, -2)               # (T, d, d) = W^{-1}
        return dist.Wishart(components.dof, precision_matrix=psi).to_event(1)
    return dist.Gamma(components.dof, components.scale).to_event(components.dof.dim())


def _mean_site(components: Components, lam: torch.Tensor, full: bool):
    """The distribution of the component means given the precisions lam."""
    if full:
        precision = components.kappa[:, None, None] * lam                          # (..., T, d, d)
        return dist.MultivariateNormal(components.m, precision_matrix=precision).to_event(1)
    lam_per_dim = lam.unsqueeze(-1) if components.dof.dim() == 1 else lam           # (..., T, d|1)
    return dist.Normal(components.m, (components.kappa[:, None] * lam_per_dim).rsqrt()).to_event(2)


def model(x: torch.Tensor, prior: DPGMMPrior, subsample_size: int | None = None,
          resp: torch.Tensor | None = None) -> None:
    """DP-GMM generative model for x (N, d); ``prior`` in input coordinates (see ``dpgmm.DPGMMPrior``).
    ``resp`` belongs to the guide (model and guide take the same arguments) and is ignored here."""
    n, d = x.shape
    p = prior.components
    t = p.m.shape[0]
    full = _is_full(p)
    options = dict(dtype=x.dtype, device=x.device)
    if prior.alpha_prior is None:
        alpha = torch.tensor(prior.alpha, **options)
    else:
        alpha = pyro.sample("alpha", dist.Gamma(torch.tensor(prior.alpha_prior[0], **options),
                                                torch.tensor(prior.alpha_prior[1], **options)))
    concentration0 = alpha.unsqueeze(-1).expand(alpha.shape + (t - 1,))               # (..., T-1)
    v = pyro.sample("v", dist.Beta(torch.ones_like(concentration0), concentration0).to_event(1))
    lam = pyro.sample("lam", _precision_site(p, full))                                  # (..., T, d, d) | (T, d) | (T,)
    mu = pyro.sample("mu", _mean_site(p, lam, full))                                    # (..., T, d)
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as index:
        z = pyro.sample("z", dist.Categorical(stick.mix_weights(v)))                     # (..., B)
        loc = Vindex(mu)[..., z, :]                                                      # (..., B, d)
        if full:
            precision = Vindex(lam)[..., z, :, :]                                       # (..., B, d, d)
            pyro.sample("obs", dist.MultivariateNormal(loc, precision_matrix=precision), obs=x[index])
        else:
            lam_per_dim = lam.unsqueeze(-1) if p.dof.dim() == 1 else lam
            scale = Vindex(lam_per_dim)[..., z, :].rsqrt()                               # (..., B, d|1)
            pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=x[index])


def guide(x: torch.Tensor, prior: DPGMMPrior, subsample_size: int | None = None,
          resp: torch.Tensor | None = None) -> None:
    """Mean-field guide reading its parameters from the param store (see :func:`set_guide_params`).

    ``resp`` (N, T): when given, z_n ~ Categorical(resp_n) is sampled in the guide (the Trace_ELBO cross-check);
    when None, z is left to the model's enumeration (SVI).
    """
    if prior.alpha_prior is not None:
        pyro.sample("alpha", dist.Gamma(pyro.param("alpha_shape"), pyro.param("alpha_rate")))
    pyro.sample("v", dist.Beta(pyro.param("g1"), pyro.param("g2")).to_event(1))
    q = Components(*(pyro.param(name) for name in COMPONENT_PARAMS))
    full = _is_full(q)
    lam = pyro.sample("lam", _precision_site(q, full))
    pyro.sample("mu", _mean_site(q, lam, full))
    if resp is not None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Categorical(resp))


def set_guide_params(q: DPGMMParams, dtype: torch.dtype = torch.float64) -> None:
    """Clear the param store and load q (e.g. a fitted CAVI posterior, means in input coordinates)."""
    pyro.clear_param_store()
    c = q.components
    full = _is_full(c)
    d = c.m.shape[1]
    scale_constraint = constraints.lower_cholesky if full else constraints.positive
    dof_constraint = constraints.greater_than(d - 1.0) if full else constraints.positive
    for name, value, constraint in (("m", c.m, constraints.real), ("kappa", c.kappa, constraints.positive),
                                    ("dof", c.dof, dof_constraint), ("scale", c.scale, scale_constraint),
                                    ("g1", q.g1, constraints.positive), ("g2", q.g2, constraints.positive),
                                    ("alpha_shape", q.alpha_shape, constraints.positive),
                                    ("alpha_rate", q.alpha_rate, constraints.positive)):
        if value is not None:
            pyro.param(name, value.detach().clone().to(dtype), constraint=constraint)


def guide_params(dtype: torch.dtype = torch.float64) -> DPGMMParams:
    """The param store's q as DPGMMParams (detached)."""
    store = pyro.get_param_store()
    def read(name):
        return pyro.param(name).detach().to(dtype) if name in store else None
    return DPGMMParams(Components(*(read(name) for name in COMPONENT_PARAMS)),
                       *(read(name) for name in STICK_PARAMS))


def trace_elbo(x: torch.Tensor, prior: DPGMMPrior, q: DPGMMParams, resp: torch.Tensor, *, particles: int = 200,
               batches: int = 20, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo ELBO from Pyro's Trace_ELBO for the guide set to q with z ~ Categorical(resp (N, T)).

    Runs ``batches`` independent vectorised estimates of ``particles`` particles each; returns
    (mean ELBO, standard error of the mean) from the spread of the batch means.
    """
    pyro.set_rng_seed(seed)
    set_guide_params(q, x.dtype)
    loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    estimates = torch.tensor([-loss.loss(model, guide, x, prior, None, resp) for _ in range(batches)],
                             dtype=torch.float64)
    return float(estimates.mean()), float(estimates.std() / math.sqrt(batches))


def fit_svi(engine: "DPGMM", x: torch.Tensor, *, seed: int, steps: int, batch_size: int, lr: float) -> "DPGMM":
    """Fit the DP-GMM by Pyro SVI (Adam, minibatches of ``batch_size``, z enumerated), then finish through the
    engine: one top-k E-step from the SVI posterior, the closed-form M-step, sort/prune (see
    ``DPGMM.fit_from_params``). The guide starts from the same k-means++ seeding as a cold CAVI fit
    (hard assignments of a subsample, one M-step). ``history`` holds -loss of every step (a noisy,
    minibatch estimate of the full-data ELBO). Full covariance runs in float64, the others in float32."""
    n, d = x.shape
    if n < engine.truncation:
        raise ValueError(f"SVI seeds T={engine.truncation} components from distinct points but N={n}; "
                         f"lower --truncation to at most {n}")
    pyro.set_rng_seed(seed)
    prior, _, _ = engine.make_prior(x)
    # float32 Wishart draws of very tight clusters (precisions ~1e6) come out not positive definite
    dtype = torch.float64 if engine.covariance == "full" else torch.float32
    set_guide_params(_seeded_params(x, prior, engine, seed), dtype)
    x_svi = x.to(dtype)
    prior_svi = replace(prior, components=Components(*(getattr(prior.components, f).to(dtype)
                                                      for f in COMPONENT_PARAMS)))
    svi = SVI(config_enumerate(model, "parallel"), guide, pyro.optim.Adam({"lr": lr}),
              TraceEnum_ELBO(max_plate_nesting=1))
    batch = min(batch_size, n)
    history = [-svi.step(x_svi, prior_svi, batch) for _ in range(steps)]
    return engine.fit_from_params(x, guide_params(torch.float64), history)


def _seeded_params(x: torch.Tensor, prior: DPGMMPrior, engine: "DPGMM", seed: int) -> DPGMMParams:
    """q after one M-step on hard k-means++ assignments of a subsample (statistics scaled to N)."""
    n, d = x.shape
    family = make_family(engine.covariance, d)
    generator = torch.Generator().manual_seed(int(seed))
    m_sub = min(n, max(20 * engine.truncation, 5000))
    subset = torch.randperm(n, generator=generator)[:m_sub].to(x.device)
    x_sub = x[subset].float()
    seeds = kmeanspp_seeds(x_sub, engine.truncation, generator)
    onehot = torch.nn.functional.one_hot(nearest_centre(x_sub, x_sub[seeds]), engine.truncation)   # (M, T)
    stats = family.stats_from_dense(x_sub, onehot)
    return m_step(family, stats.scaled(n / m_sub), prior)
