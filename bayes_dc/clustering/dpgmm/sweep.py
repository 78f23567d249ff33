"""Chunked streaming pass over the points: top-k E-step over the live components and M-step statistics.

Memory (N points, d dims, T components, K live, k = topk): O(N k) for the responsibilities, plus per chunk of c
points the logits temporaries (c x K for diag/spherical, c x K d for full, twice: logits and statistics) and, for
diag/spherical, the design matrix (c x D), with c chosen so they stay under :data:`CHUNK_BYTES`; never O(N T).

* E-step: logits for the live components only (one GEMM per chunk, see ``families``), then the k largest per
  point and a softmax over them; all other r_nk are exactly 0. Restricting q(z_n) to the top k of the live set
  keeps the ELBO a lower bound, and because the previous q(z_n) was supported inside that set the restricted
  optimum is never worse, so the ELBO still never decreases.
* Statistics R^T A (T, D) = [sum r * second moments, sum r x, N_k] come from the sparse (c, T) responsibility
  block (``families``: diag/spherical multiply it with the design matrix, scipy on CPU and a dense product on
  CUDA; full covariance uses GEMMs of the points weighted by it), accumulated in float64 over chunks.
Points are centred on the data mean (``shift``) as they are read, so float32 products lose less to cancellation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bayes_dc.clustering.dpgmm.families import CovarianceFamily

CHUNK_BYTES = 256 * 2 ** 20   # bound on one chunk's logits + design temporaries


def moved_mass(old_values: torch.Tensor, old_index: torch.Tensor, new_values: torch.Tensor,
               new_index: torch.Tensor) -> torch.Tensor:
    """Total-variation distance (c,) between two top-k responsibility rows of the same points, (c, k) and (c, k'):
    1 - sum_j min(r_old_j, r_new_j) over the components both rows hold (each row holds distinct components)."""
    same = old_index[:, :, None] == new_index[:, None, :]                               # (c, k, k')
    overlap = (torch.minimum(old_values[:, :, None], new_values[:, None, :]) * same).sum((1, 2))   # (c,)
    return (1.0 - overlap).clamp_min(0.0)


@dataclass
class SweepResult:
    """values, index (N, k): top-k responsibilities (rows sorted descending, zero-padded); raw (T, D) float64
    statistics R^T A; entropy (0-d float64); log_norm (N,) float32 log sum_{top k} exp(logits) per point (the
    point's share of the bound with its entropy; None when the responsibilities were given); moved (0-d float64)
    the summed :func:`moved_mass` from the responsibilities the E-step replaced (None when none were given)."""

    values: torch.Tensor
    index: torch.Tensor
    raw: torch.Tensor
    entropy: torch.Tensor
    log_norm: torch.Tensor | None = None
    moved: torch.Tensor | None = None


class Sweeper:
    """Streams x (N, d) in chunks for one family and truncation T."""

    def __init__(self, x: torch.Tensor, shift: torch.Tensor, family: CovarianceFamily, truncation: int,
                 chunk_size: int, profile_gemm: bool = False):
        self.x, self.shift, self.family, self.truncation = x, shift.float(), family, truncation
        self.chunk_size, self.profile_gemm = int(chunk_size), profile_gemm
        self.n, self.d = x.shape
        self.gemm_seconds = 0.0

    # -- helpers -------------------------------------------------------------------------------------------
    def rows_per_chunk(self, k_scored: int) -> int:
        per_row = self.family.logit_bytes_per_row(k_scored) + 4 * (self.family.width + self.d)
        return max(64, min(self.chunk_size, CHUNK_BYTES // per_row))

    def centred(self, rows: torch.Tensor | slice) -> torch.Tensor:
        return self.x[rows] - self.shift                                          # (c, d)

    def _logits(self, op, xc: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        if not self.profile_gemm:
            return self.family.logits(op, xc, design)
        if xc.is_cuda:
            torch.cuda.synchronize(xc.device)
        start = time.perf_counter()
        out = self.family.logits(op, xc, design)
        if xc.is_cuda:
            torch.cuda.synchronize(xc.device)
        self.gemm_seconds += time.perf_counter() - start
        return out

    # -- passes --------------------------------------------------------------------------------------------
    def estep(self, op, live: torch.Tensor, topk: int,
              previous: tuple[torch.Tensor, torch.Tensor] | None = None) -> SweepResult:
        """Top-k E-step over the live components (ids (K,)) with the operator ``op`` built for them, and the
        statistics of the new responsibilities; with ``previous`` (values, index) (N, k), how far they moved."""
        n, t, device = self.n, self.truncation, self.x.device
        k_live = int(live.shape[0])
        k_eff = min(topk, k_live)
        values = torch.zeros(n, topk, dtype=torch.float32, device=device)
        index = torch.empty(n, topk, dtype=torch.int64, device=device)
        if k_eff < topk:
            # zero-valued padding points at distinct components that are not live (harmless for every consumer)
            dead = torch.ones(t, dtype=torch.bool, device=device)
            dead[live] = False
            index[:, k_eff:] = dead.nonzero()[: topk - k_eff, 0]
        log_norm = torch.empty(n, dtype=torch.float32, device=device)
        raw = torch.zeros(t, self.family.width, dtype=torch.float64, device=device)
        entropy = torch.zeros((), dtype=torch.float64, device=device)
        moved = None if previous is None else torch.zeros((), dtype=torch.float64, device=device)
        rows = self.rows_per_chunk(k_live)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            xc = self.centred(slice(start, stop))
            design = self.family.design(xc) if self.family.logits_need_design else None
            top, top_pos = torch.topk(self._logits(op, xc, design), k_eff, dim=1, sorted=True)   # (c, k_eff)
            norm = torch.logsumexp(top, dim=1)                                      # (c,)
            r = torch.exp(top - norm[:, None])
            values[start:stop, :k_eff] = r
            index[start:stop, :k_eff] = live[top_pos]
            log_norm[start:stop] = norm
            entropy -= torch.special.xlogy(r, r).sum(dtype=torch.float64)
            raw += self.family.weighted_sums(values[start:stop], index[start:stop], xc, t, design)
            if moved is not None:
                moved += moved_mass(previous[0][start:stop], previous[1][start:stop], values[start:stop],
                                    index[start:stop]).sum(dtype=torch.float64)
        return SweepResult(values, index, raw, entropy, log_norm, moved)

    def statistics(self, values: torch.Tensor, index: torch.Tensor, rows: torch.Tensor | None = None,
                   n_components: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw (T, D) float64, entropy 0-d) of given responsibilities (values, index) for all points, or for the
        points ``rows`` (M,) when given (then values, index are (M, k)); T = ``n_components`` (default truncation)."""
        m = self.n if rows is None else int(rows.shape[0])
        t = self.truncation if n_components is None else n_components
        raw = torch.zeros(t, self.family.width, dtype=torch.float64, device=self.x.device)
        entropy = torch.zeros((), dtype=torch.float64, device=self.x.device)
        step = self.rows_per_chunk(t)
        for start in range(0, m, step):
            stop = min(start + step, m)
            xc = self.centred(slice(start, stop) if rows is None else rows[start:stop])
            r = values[start:stop]
            entropy -= torch.special.xlogy(r, r).sum(dtype=torch.float64)
            raw += self.family.weighted_sums(r, index[start:stop], xc, t)
        return raw, entropy

    def score(self, op, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (M, K) of the points ``rows`` (all points when None) for the components of ``op``."""
        m = self.n if rows is None else int(rows.shape[0])
        parts = []
        step = self.rows_per_chunk(int(op[-1].shape[-1]))
        for start in range(0, m, step):
            stop = min(start + step, m)
            xc = self.centred(slice(start, stop) if rows is None else rows[start:stop])
            parts.append(self._logits(op, xc, self.family.design(xc) if self.family.logits_need_design else None))
        if not parts:
            return torch.empty(0, int(op[-1].shape[-1]), dtype=torch.float32, device=self.x.device)
        return torch.cat(parts)
