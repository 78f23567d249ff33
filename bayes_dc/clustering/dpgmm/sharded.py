"""The CAVI engine on one rank's rows of a multi-process fit (torchrun; ``bayes_dc.runtime.distributed``).

:class:`ShardedDPGMM` fills the engine's multi-process seam (:class:`~bayes_dc.clustering.dpgmm.engine.DPGMM`):
every sum over points (sufficient statistics, ELBO entropy, move scores, data moments of the prior) is all-reduced,
and the data-dependent choices are made from global rows: the cold start's random subsample is drawn from the
global row ids, the births' worst-fit points are the global top ones. Every rank therefore holds the same
posterior, and that posterior is the one a single process fits on all the rows, up to the order of float sums.

Rows are the ranks' shards concatenated in rank order (what ``Distributed.shard`` gives each rank). The warm state
passed in and the fitted ``labels_``, ``resp_values_``, ``resp_index_`` and ``state_`` cover all N rows on every
rank, as a single-process fit's do, so the result of one round and the warm start of the next do not depend on
the number of processes.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bayes_dc.clustering.dpgmm.engine import DPGMM


class ShardedDPGMM(DPGMM):
    """:class:`DPGMM` on this rank's rows; ``dist`` is the run's ``bayes_dc.runtime.distributed.Distributed``."""

    def __init__(self, dist: Any, **options: Any):
        super().__init__(**options)
        self.dist = dist

    # -- the seam --------------------------------------------------------------------------------------------
    def _allreduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.dist.all_reduce(tensor)

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.dist.gather_rows(rows)

    def _global_rows(self, positions: torch.Tensor) -> torch.Tensor:
        n = self._x.shape[0]
        positions = positions.to(self._x.device)
        mine = ((positions >= self._offset) & (positions < self._offset + n)).nonzero()[:, 0]   # where in positions
        rows = self.dist.gather_rows(self._x[positions[mine] - self._offset])
        order = torch.argsort(self.dist.gather_rows(mine))
        return rows[order]

    def _top_rows(self, scores: torch.Tensor, k: int, rows: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        local = torch.topk(scores, min(k, scores.shape[0])).indices            # every rank's candidates
        candidates = self.dist.gather_rows(rows(local))
        best = torch.topk(self.dist.gather_rows(scores[local]), min(k, candidates.shape[0])).indices
        return candidates[best]

    # -- fitting -----------------------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, *, seed: int = 0, warm_state: Any = None) -> "ShardedDPGMM":
        """Fit on this rank's rows x (n_r, d); ``warm_state`` (if any) covers all N rows. Fitted attributes cover
        all N rows (in rank order) on every rank."""
        sizes = self.dist.gather_rows(torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)).tolist()
        self._offset, n_total = sum(sizes[: self.dist.rank]), sum(sizes)
        super().fit(x, seed=seed, warm_state=self._rows_of_state(warm_state, n_total, x.shape))
        self.resp_values_ = self.dist.gather_rows(self.resp_values_)
        self.resp_index_ = self.dist.gather_rows(self.resp_index_)
        self.labels_ = self.resp_index_[:, 0]
        self.state_ = {**self.state_, "resp_values": self.resp_values_.cpu(), "resp_index": self.resp_index_.cpu(),
                       "n_points": n_total}
        return self

    def _rows_of_state(self, warm_state: Any, n_total: int, shape: torch.Size) -> Any:
        """This rank's rows of a warm state over all N rows (checked against N and d first)."""
        if warm_state is None or self.warm_start == "none":
            return warm_state
        n_local, d = shape
        self.check_warm_state(warm_state, n_total, d)
        rows = slice(self._offset, self._offset + n_local)
        return {**warm_state, "resp_values": warm_state["resp_values"][rows],
                "resp_index": warm_state["resp_index"][rows], "n_points": n_local}


__all__ = ["ShardedDPGMM"]
