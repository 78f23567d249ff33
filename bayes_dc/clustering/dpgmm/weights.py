"""The weight-prior seam of the variational mixture: everything CAVI needs about p(pi) and q(pi).

A mixture of T Gaussians differs between a Dirichlet-process mixture (truncated stick-breaking, :class:`StickBreaking`)
and a finite Bayesian mixture (a symmetric Dirichlet, :mod:`bayes_dc.clustering.dirichlet`) only in the prior on the
weights pi (T,). The engine (:mod:`.engine`), the closed-form ELBO (:mod:`.variational`) and the moves (:mod:`.moves`,
which score candidates through the engine) read the weights through one :class:`WeightPrior`:

- ``update(counts, old)``: q(pi) given the expected counts N_k (T,), the exact coordinate optimum (so CAVI never
  lowers the ELBO);
- ``expected_log_weights(q)`` (T,): E[log pi_k], the E-step's per-component constant;
- ``expected_weights(q)`` (T,): E[pi], summing to 1 (the reported mixture weights);
- ``elbo(counts, q)`` (0-d): E[log p(z | pi)] + E[log p(pi)] - E[log q(pi)] (and any hyperprior's KL);
- ``ordered``: whether that ELBO depends on the order of the components (stick-breaking does; the moves then also try
  the size order).

Parameters of q(pi) are whatever the weight prior defines (:class:`StickParams` here); the engine only passes them on.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from bayes_dc.clustering import stick


class WeightPrior(ABC):
    """Prior p(pi) on T mixture weights and its mean-field factor q(pi); all tensors float64 on one device."""

    #: whether the ELBO depends on the order of the components (then the engine also tries the size order)
    ordered: bool = False

    @abstractmethod
    def update(self, counts: torch.Tensor, old: Any | None) -> Any:
        """q(pi) given expected counts N_k (T,); ``old`` is the previous q(pi) (or None), for hyperparameters."""

    @abstractmethod
    def expected_log_weights(self, params: Any) -> torch.Tensor:
        """E[log pi_k] (T,) under q(pi)."""

    @abstractmethod
    def expected_weights(self, params: Any) -> torch.Tensor:
        """E[pi_k] (T,) under q(pi); sums to 1."""

    @abstractmethod
    def elbo(self, counts: torch.Tensor, params: Any) -> torch.Tensor:
        """E[log p(z | pi)] + E[log p(pi)] - E[log q(pi)] for counts N_k (T,), as a 0-d tensor."""

    def concentration(self, params: Any | None) -> float:
        """The concentration in force (E[alpha] when alpha is random), for reporting."""
        raise NotImplementedError

    def state(self, params: Any) -> dict:
        """What a warm start carries over of q(pi) (plain numbers); empty by default."""
        return {}

    def params_from_state(self, state: dict, device: torch.device) -> Any | None:
        """The q(pi) a warm start begins its first update from (:meth:`state` of the previous fit), or None."""
        return None


@dataclass
class StickParams:
    """q(pi) of the stick-breaking prior: sticks Beta(g1, g2) (T-1,) each, and q(alpha) = Gamma(alpha_shape,
    alpha_rate) (0-d each) or None when alpha is fixed."""

    g1: torch.Tensor
    g2: torch.Tensor
    alpha_shape: torch.Tensor | None = None
    alpha_rate: torch.Tensor | None = None


@dataclass(frozen=True)
class StickBreaking(WeightPrior):
    """The truncated Dirichlet-process prior: T-1 sticks v_k ~ Beta(1, alpha), pi = mix_weights(v) (the last component
    takes the rest), alpha fixed or alpha ~ Gamma(shape, rate) (Blei & Jordan 2006; math in :mod:`..stick`)."""

    alpha: float = 1.0
    alpha_prior: tuple[float, float] | None = None

    ordered = True

    @classmethod
    def from_options(cls, *, alpha: float, alpha_prior: tuple[float, float] | None, truncation: int) -> "StickBreaking":
        return cls(float(alpha), None if alpha_prior is None else (float(alpha_prior[0]), float(alpha_prior[1])))

    def expected_alpha(self, params: StickParams | None, device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """E[alpha] and E[log alpha] (0-d float64): q(alpha)'s, else the prior's (alpha itself when fixed)."""
        if params is not None and params.alpha_shape is not None:
            shape, rate = params.alpha_shape, params.alpha_rate
        elif self.alpha_prior is None:
            alpha = torch.tensor(self.alpha, dtype=torch.float64, device=device)
            return alpha, torch.log(alpha)
        else:
            shape, rate = (torch.tensor(v, dtype=torch.float64, device=device) for v in self.alpha_prior)
        return shape / rate, torch.special.digamma(shape) - torch.log(rate)

    def update(self, counts: torch.Tensor, old: StickParams | None) -> StickParams:
        """Sticks from the counts at the old E[alpha], then q(alpha) from the new sticks (Blei & Jordan 2006, §5)."""
        e_alpha, _ = self.expected_alpha(old, counts.device)
        g1, g2 = stick.update_sticks(counts, e_alpha)
        params = StickParams(g1, g2)
        if self.alpha_prior is not None:
            params.alpha_shape, params.alpha_rate = stick.update_alpha(g1, g2, self.alpha_prior)
        return params

    def expected_log_weights(self, params: StickParams) -> torch.Tensor:
        return stick.expected_log_pi(params.g1, params.g2)

    def expected_weights(self, params: StickParams) -> torch.Tensor:
        return stick.expected_weights(params.g1, params.g2)

    def elbo(self, counts: torch.Tensor, params: StickParams) -> torch.Tensor:
        e_alpha, e_log_alpha = self.expected_alpha(params, counts.device)
        total = stick.stick_elbo(counts, params.g1, params.g2, e_alpha, e_log_alpha)
        if params.alpha_shape is not None:
            total = total - stick.alpha_kl(params.alpha_shape, params.alpha_rate, self.alpha_prior)
        return total

    def concentration(self, params: StickParams | None) -> float:
        return float(self.expected_alpha(params)[0])

    def state(self, params: StickParams) -> dict:
        shape, rate = params.alpha_shape, params.alpha_rate
        return {"alpha_posterior": None if shape is None else (float(shape), float(rate))}

    def params_from_state(self, state: dict, device: torch.device) -> StickParams | None:
        """q(alpha) of the previous fit (the sticks are recomputed from the counts), when alpha is random."""
        if self.alpha_prior is None or state.get("alpha_posterior") is None:
            return None
        shape, rate = (torch.tensor(float(v), dtype=torch.float64, device=device) for v in state["alpha_posterior"])
        empty = torch.empty(0, dtype=torch.float64, device=device)
        return StickParams(empty, empty, alpha_shape=shape, alpha_rate=rate)


__all__ = ["StickBreaking", "StickParams", "WeightPrior"]
