"""The DP-GMM of ``dpgmm.py`` written in Pyro: model, mean-field guide, a Pyro SVI engine, and a Trace_ELBO
evaluator used to cross-check the closed-form ELBO.

Sites (components are event dimensions, so the only plate is the data plate, dim -1):
    "alpha"  Gamma(s1, s2)                      only when alpha has a prior
    "v"      Beta(1, alpha)^(T-1)               event (T-1,)
    "lam"    Gamma(a0, b0)                      event (T, d) diag, (T,) spherical
    "mu"     Normal(m0, 1/sqrt(beta0 lam))      event (T, d)
    "z"      Categorical(mix_weights(v))        in plate "data"
    "obs"    Normal(mu_z, 1/sqrt(lam_z))        event (d,), in plate "data"
The guide mirrors it with q(alpha) = Gamma(w1, w2), q(v) = Beta(g1, g2), q(lam) = Gamma(a, b),
q(mu | lam) = Normal(m, 1/sqrt(beta lam)), and (for the ELBO cross-check) q(z_n) = Categorical(r_n).
Every log-density is Pyro's own with all normalisers, so -Trace_ELBO().loss is the full ELBO that
``dpgmm.elbo`` computes in closed form (Blei & Jordan 2006; Bishop 2006 §10.2).

SVI (``fit_svi``): z is enumerated out in the model (``config_enumerate`` + ``TraceEnum_ELBO``), and the data
plate subsamples minibatches (``pyro.plate(..., subsample_size=B)``, which scales the likelihood by N/B).
"""
from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.ops.indexing import Vindex

from . import stick
from .dpgmm import DPGMM, DPGMMParams, DPGMMPrior, default_prior, kmeanspp_seeds, m_step, SuffStats

PARAM_NAMES = ("g1", "g2", "m", "beta", "a", "b", "alpha_shape", "alpha_rate")


def model(x: torch.Tensor, prior: DPGMMPrior, subsample_size: int | None = None,
          resp: torch.Tensor | None = None) -> None:
    """DP-GMM generative model for x (N, d); ``prior`` in input coordinates (see ``dpgmm.DPGMMPrior``).
    ``resp`` belongs to the guide (model and guide take the same arguments) and is ignored here."""
    n, d = x.shape
    t = prior.m0.shape[0]
    options = dict(dtype=x.dtype, device=x.device)
    if prior.alpha_prior is None:
        alpha = torch.tensor(prior.alpha, **options)
    else:
        alpha = pyro.sample("alpha", dist.Gamma(torch.tensor(prior.alpha_prior[0], **options),
                                                torch.tensor(prior.alpha_prior[1], **options)))
    concentration0 = alpha.unsqueeze(-1).expand(alpha.shape + (t - 1,))               # (..., T-1)
    v = pyro.sample("v", dist.Beta(torch.ones_like(concentration0), concentration0).to_event(1))
    a0, b0 = prior.a0.to(**options), prior.b0.to(**options)
    lam = pyro.sample("lam", dist.Gamma(a0, b0).to_event(a0.dim()))                      # (..., T, d) or (..., T)
    lam_per_dim = lam.unsqueeze(-1) if prior.spherical else lam                          # (..., T, d|1)
    scale0 = (prior.beta0.to(**options)[:, None] * lam_per_dim).rsqrt()
    mu = pyro.sample("mu", dist.Normal(prior.m0.to(**options), scale0).to_event(2))     # (..., T, d)
    with pyro.plate("data", n, subsample_size=subsample_size, dim=-1) as index:
        z = pyro.sample("z", dist.Categorical(stick.mix_weights(v)))                     # (..., B)
        loc = Vindex(mu)[..., z, :]                                                      # (..., B, d)
        scale = Vindex(lam_per_dim)[..., z, :].rsqrt()                                   # (..., B, d|1)
        pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=x[index])


def guide(x: torch.Tensor, prior: DPGMMPrior, subsample_size: int | None = None,
          resp: torch.Tensor | None = None) -> None:
    """Mean-field guide reading its parameters from the param store (see :func:`set_guide_params`).

    ``resp`` (N, T): when given, z_n ~ Categorical(resp_n) is sampled in the guide (the Trace_ELBO cross-check);
    when None, z is left to the model's enumeration (SVI).
    """
    g1, g2 = pyro.param("g1"), pyro.param("g2")
    if prior.alpha_prior is not None:
        pyro.sample("alpha", dist.Gamma(pyro.param("alpha_shape"), pyro.param("alpha_rate")))
    pyro.sample("v", dist.Beta(g1, g2).to_event(1))
    a, b = pyro.param("a"), pyro.param("b")
    lam = pyro.sample("lam", dist.Gamma(a, b).to_event(a.dim()))
    lam_per_dim = lam.unsqueeze(-1) if prior.spherical else lam
    pyro.sample("mu", dist.Normal(pyro.param("m"), (pyro.param("beta")[:, None] * lam_per_dim).rsqrt()).to_event(2))
    if resp is not None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Categorical(resp))


def set_guide_params(q: DPGMMParams, dtype: torch.dtype = torch.float64) -> None:
    """Clear the param store and load q (e.g. a fitted CAVI posterior, means in input coordinates)."""
    pyro.clear_param_store()
    for name in PARAM_NAMES:
        value = getattr(q, name)
        if value is None:
            continue
        constraint = constraints.real if name == "m" else constraints.positive
        pyro.param(name, value.detach().clone().to(dtype), constraint=constraint)


def guide_params(dtype: torch.dtype = torch.float64) -> DPGMMParams:
    """The param store's q as DPGMMParams (detached)."""
    store = pyro.get_param_store()
    values = {name: (pyro.param(name).detach().to(dtype) if name in store else None) for name in PARAM_NAMES}
    return DPGMMParams(**values)


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


def fit_svi(engine: DPGMM, x: torch.Tensor, *, seed: int, steps: int, batch_size: int, lr: float) -> DPGMM:
    """Fit the DP-GMM by Pyro SVI (Adam, minibatches of ``batch_size``, z enumerated), then finish through the
    engine: one top-k E-step from the SVI posterior, the closed-form M-step, sort/prune (see
    ``DPGMM.fit_from_params``). The guide starts from the same k-means++ seeding as a cold CAVI fit
    (hard assignments of a subsample, one M-step). ``history`` holds -loss of every step (a noisy,
    minibatch estimate of the full-data ELBO)."""
    n, d = x.shape
    if n < engine.truncation:
        raise ValueError(f"SVI seeds T={engine.truncation} components from distinct points but N={n}; "
                         f"lower --truncation to at most {n}")
    pyro.set_rng_seed(seed)
    prior = default_prior(x, engine.truncation, engine.covariance, alpha=engine.alpha, alpha_prior=engine.alpha_prior,
                          beta0=engine.beta0, a0=engine.a0, b0=engine.b0)
    set_guide_params(_seeded_params(x, prior, engine, seed), torch.float32)
    x32 = x.float()
    prior32 = DPGMMPrior(prior.m0.float(), prior.beta0.float(), prior.a0.float(), prior.b0.float(), prior.alpha,
                         prior.alpha_prior)
    svi = SVI(config_enumerate(model, "parallel"), guide, pyro.optim.Adam({"lr": lr}),
              TraceEnum_ELBO(max_plate_nesting=1))
    batch = min(batch_size, n)
    history = [-svi.step(x32, prior32, batch) for _ in range(steps)]
    return engine.fit_from_params(x, guide_params(torch.float64), history)


def _seeded_params(x: torch.Tensor, prior: DPGMMPrior, engine: DPGMM, seed: int) -> DPGMMParams:
    """q after one M-step on hard k-means++ assignments of a subsample (statistics scaled to N)."""
    n = x.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    m_sub = min(n, max(20 * engine.truncation, 5000))
    subset = torch.randperm(n, generator=generator)[:m_sub].to(x.device)
    x_sub = x[subset].double()
    seeds = kmeanspp_seeds(x_sub.float(), engine.truncation, generator)
    centres = x_sub[seeds]
    nearest = ((centres * centres).sum(1) - 2.0 * x_sub @ centres.T).argmin(1)          # (M,)
    onehot = torch.nn.functional.one_hot(nearest, engine.truncation).double()           # (M, T)
    sum_xx = onehot.T @ (x_sub * x_sub)
    stats = SuffStats(onehot.sum(0), onehot.T @ x_sub, sum_xx.sum(1) if prior.spherical else sum_xx, 0.0)
    return m_step(stats.scaled(n / m_sub), prior)
