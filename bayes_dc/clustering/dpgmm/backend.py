"""The DP-GMM behind the clustering seam (``ClusterBackend``): closed-form CAVI or Pyro SVI."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bayes_dc.clustering.base import ClusterBackend, ClusterResult, active_mask, check_features
from bayes_dc.clustering.dpgmm.engine import DPGMM, check_choice, predict_responsibilities
from bayes_dc.clustering.dpgmm.predictive import NOVELTY_THRESHOLD, new_component_probability
from bayes_dc.clustering.dpgmm.sharded import ShardedDPGMM
from bayes_dc.config.rules import OptionError, check_option
from bayes_dc.config.schema import BACKEND_TRAITS

INFERENCES = ("cavi", "svi")


class DPGMMBackend(ClusterBackend):
    """The DP-GMM behind the clustering seam; dispatches on ``inference`` ("cavi" closed form, "svi" Pyro).

    ``fit`` returns a validated :class:`ClusterResult` whose ``state`` is the small warm state
    (top-k responsibilities as CPU tensors, N, d, T, and q(alpha)'s two numbers), picklable with torch.save.
    ``info`` holds the move counts (``moves``: {move: {"tried", "accepted"}}), ``move_seconds``, the final prior
    scale and whether the ELBO is comparable with other fits (``elbo_comparable``; False for warm_start="prior").
    """

    name = "dp"
    traits = BACKEND_TRAITS[name]
    #: the run's ``bayes_dc.runtime.distributed.Distributed`` under torchrun (set by the pipeline): each rank then passes
    #: its own rows to :meth:`fit` and gets the result for all rows (:class:`ShardedDPGMM`)
    dist: Any = None

    def __init__(self, truncation: int = 300, *, inference: str = "cavi", svi_steps: int = 2000,
                 svi_batch: int = 1024, svi_lr: float = 0.05, device: torch.device | str | None = None,
                 **engine_kwargs: Any):
        check_choice("inference", inference, INFERENCES)
        for option, value in (("svi_steps", svi_steps), ("svi_batch", svi_batch), ("svi_lr", svi_lr)):
            check_option(option, value)
        if inference == "svi" and engine_kwargs.get("covariance") == "mfa":
            raise OptionError("inference", "the Pyro model has no mfa (factor-analyser) components; use "
                                           "inference='cavi' with covariance='mfa', or another `covariance` for svi")
        self.engine_kwargs = dict(truncation=truncation, **engine_kwargs)
        DPGMM(**self.engine_kwargs)   # validate the options now, not at the first fit
        self.inference, self.svi_steps, self.svi_batch, self.svi_lr = inference, svi_steps, svi_batch, svi_lr
        self.device = None if device is None else torch.device(device)

    @classmethod
    def from_config(cls, cfg, device: torch.device | str | None = None) -> "DPGMMBackend":
        return cls(truncation=cfg.truncation, inference=cfg.inference, svi_steps=cfg.svi_steps,
                   svi_batch=cfg.svi_batch, svi_lr=cfg.svi_lr, device=device, covariance=cfg.covariance,
                   alpha=cfg.alpha, alpha_prior=cfg.alpha_prior, prior_scale=cfg.prior_scale,
                   prior_dof=cfg.prior_dof, kappa0=cfg.kappa0, prior_scale_update=cfg.prior_scale_update,
                   topk=cfg.topk, max_iter=cfg.max_iter, tol=cfg.tol, min_size=cfg.min_size,
                   warm_start=cfg.warm_start, prior_decay=cfg.prior_decay, moves=cfg.moves,
                   move_every=cfg.move_every, factors=cfg.factors)

    def responsibilities(self, predictor: dict, x: torch.Tensor,
                         allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        topk = self.engine_kwargs.get("topk", 8)
        return predict_responsibilities(predictor, x, topk, allowed)

    novelty_kind = "probability"
    novelty_threshold = NOVELTY_THRESHOLD

    def novelty(self, predictor: dict, x: torch.Tensor) -> torch.Tensor:
        """P(x starts a new component | the fit) (B,): the Chinese-restaurant "new table" probability
        (:mod:`.predictive`)."""
        if "predictive" not in predictor:
            raise ValueError("this DP fit was saved before fits kept their predictive distributions; it cannot "
                             "score novelty (train the run again with this version)")
        return new_component_probability(predictor, x)[0]

    def fit(self, features: torch.Tensor, *, seed: int, warm_state: Any = None) -> ClusterResult:
        # the engine runs check_features; convert only, so the (N, d) finiteness scan happens once
        x = torch.from_numpy(features) if isinstance(features, np.ndarray) else features
        if self.device is not None and isinstance(x, torch.Tensor):
            x = x.to(self.device)
        start = time.perf_counter()
        sharded = self.dist is not None and self.dist.active
        engine = ShardedDPGMM(self.dist, **self.engine_kwargs) if sharded else DPGMM(**self.engine_kwargs)
        if self.inference == "svi":
            from bayes_dc.clustering.pyro_model import fit_svi
            engine = fit_svi(engine, check_features(x), seed=seed, steps=self.svi_steps, batch_size=self.svi_batch,
                             lr=self.svi_lr, warm_state=warm_state)
        else:
            engine.fit(x, seed=seed, warm_state=warm_state)
        predictor = engine.predictor()
        # A final E-step under the final q (scikit-learn's BayesianGaussianMixture.fit_predict does the same): the
        # fit's last responsibilities predate its last M-step, so 0.5 % of the labels differed from what the fitted
        # posterior assigns; now a training image assigned again later (load_run, --two-views) gets its label.
        values, index = self.responsibilities(predictor, x)
        if sharded:
            values, index = self.dist.gather_rows(values), self.dist.gather_rows(index)
        seconds = time.perf_counter() - start
        n = values.shape[0]   # all rows, over every rank
        # the warm state carries the same responsibilities as the labels (the final E-step's), so the next round
        # starts from the partition this round reported, not from the one before the last M-step
        state = {**engine.state_, "resp_values": values.float().cpu(), "resp_index": index.cpu()}
        weights = engine.weights_.cpu().numpy()
        return ClusterResult(
            labels=index[:, 0].cpu().numpy(),
            resp_values=values.cpu().numpy(),
            resp_index=index.cpu().numpy(),
            weights=weights,
            active=active_mask(weights),
            objective=engine.lower_bound_ / n,
            history=[v / n for v in engine.history_],
            n_iter=engine.n_iter_,
            seconds=seconds,
            permutation=engine.permutation_,
            state=state,
            predictor=predictor,
            info={"inference": self.inference, "covariance": engine.covariance, "converged": bool(engine.converged_),
                  "alpha_mean": engine.alpha_, "K_active": int(active_mask(weights).sum()),
                  "K_reset": int((engine.permutation_ < 0).sum()),
                  "prior_scale": engine.prior_scale_,
                  "elbo_before_finalize": engine.elbo_before_finalize_ / n,
                  "elbo_init": None if engine.init_elbo_ is None else engine.init_elbo_ / n,
                  "elbo_comparable": bool(engine.elbo_comparable_),
                  "warm_start": self.engine_kwargs.get("warm_start", "init") if warm_state is not None else "none",
                  "moves": {name: dict(counts) for name, counts in engine.moves_.items()},
                  "move_seconds": engine.move_seconds_,
                  "gemm_seconds": engine.gemm_seconds_,
                  # SVI's own (z-collapsed, Monte Carlo) ELBO estimate at its end, before the closed-form finish
                  "svi_elbo": engine.svi_elbo_ / n if self.inference == "svi" else None},
        ).validate()
