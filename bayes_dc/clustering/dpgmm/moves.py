"""Merge, split, birth, delete and reorder moves for the DP-GMM, each accepted only when the full ELBO rises.

Memoized VI in the sense of Hughes & Sudderth (2013), "Memoized online variational inference for Dirichlet
process mixture models" (NIPS), and bnpy's ``MergeMove`` / ``BirthMove``: a move proposes a new q(z) (new
top-k responsibilities for some points), its sufficient statistics are computed exactly from the cached ones
(plus, where points move, a pass over those points only), every global factor is re-optimised (components,
sticks in the better of the current and the size order, alpha), and the move is kept iff the exact ELBO rises.
So the ELBO stays monotone through moves.

* **merge** k -> j: statistics add; the entropy of q(z) changes by sum_n [h(r_nj + r_nk) - h(r_nj) - h(r_nk)],
  h(r) = -r log r, which only points holding both in their top k contribute. Candidate pairs (all live pairs when
  few, else pairs that share points plus nearest means) are ranked by the exact change of their component terms,
  a (T, T) table of that entropy change from the three largest entries of each row, and the weight term
  (N_j + N_k) log(N_j + N_k) - N_j log N_j - N_k log N_k the sticks roughly gain. All merges with a positive
  estimate (each component into its best partner; one component may absorb several) are first tried together
  in one exact check, then, if refused, pairs one by one. No pass over the features: the exact entropy change
  is computed from the merged top-k responsibilities.
* **split** p -> (p, t): the rows where p holds >= SPLIT_MIN_WEIGHT are split by the principal axis of their
  p-weighted scatter, refined by a few hard two-child iterations (each row's whole p-responsibility goes to one
  child, so q(z) stays a top-k distribution and its entropy does not change); child t goes into an empty slot.
  Up to half the live components are tried per round, largest first, skipping ones refused at about that size.
* **birth**: k-means groups of the worst-fit points (lowest log normaliser in the last E-step) seed a component
  in an empty slot, grown out of the component that holds most of the group by restricted hard EM (points go
  wholly to it when it explains them better); after refusals births pause for 1, 2, 4 ... rounds.
* **delete** j: the mass of a small component moves to the other top-k entries of its points (renormalised);
  points that held only j go to their best other live component.
* **sort**: sticks in order of decreasing N_k (every move round, and inside every other move's evaluation).

Identity: a merge keeps the larger component's slot (the other becomes empty, its id lost); a split keeps the
parent's slot for one child and gives the other none; births have none (``DPGMM.permutation_``).
All sums over points go through the engine's ``_allreduce``; the birth seed points are the engine's ``_top_rows``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from bayes_dc.clustering.dpgmm.families import SuffStats
from bayes_dc.clustering.dpgmm.seeding import lloyd
from bayes_dc.clustering.dpgmm.state import Candidate

ACCEPT_RELATIVE = 1e-10       # a move must raise the ELBO by more than this share of |ELBO| (rounding noise)
ALL_PAIRS_UP_TO = 64          # score every live pair when at most this many components are live
NEAREST_PAIRS = 4             # else: pairs sharing points plus each component's nearest means
MERGE_PAIR_BATCH = 256        # merged posteriors scored at once (bounds the (P, d, d) temporaries)
MERGE_SLACK = 10.0            # nats: try merges whose estimated gain is above -MERGE_SLACK
MERGE_PASSES = 4              # merge passes per move round (each stops when it accepts nothing)
RANK_COLUMNS = 3              # top-k columns whose pairs estimate the merge entropy change for ranking
SPLIT_TRIES, SPLIT_ITERS = 2, 4
SPLIT_MIN_WEIGHT = 0.05       # rows where the parent holds less stay with it (only a split's main rows compete)
BIRTH_ITERS, BIRTH_GROUPS, BIRTH_TRIES = 3, 4, 2
DELETE_TRIES, DELETE_MAX_SHARE = 3, 0.05


def _near(count: float, counts: list[float]) -> bool:
    """Whether ``count`` is within 3 % of one of ``counts`` (a component seen before at about this size)."""
    return any(abs(count - c) <= 0.03 * c for c in counts)


def entropy_terms(r: torch.Tensor) -> torch.Tensor:
    """h(r) = -r log r elementwise (0 at r = 0), float64."""
    r = r.double()
    return -torch.special.xlogy(r, r)


def pair_tables(values: torch.Tensor, index: torch.Tensor, truncation: int, columns: int | None = None,
                chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Over points, for every pair of components held together in a top-k row: the overlap sum_n r_nj r_nk and the
    merge entropy change sum_n [h(r_nj + r_nk) - h(r_nj) - h(r_nk)] (<= 0). values, index (N, k) -> two (T, T)
    float64 tables, symmetric, zero where the pair never co-occurs. With ``columns`` only the first (largest)
    ``columns`` entries of each row are paired: an estimate for ranking pairs, exact if the rest are zero."""
    k = values.shape[1] if columns is None else min(columns, values.shape[1])
    first, second = torch.triu_indices(k, k, 1, device=values.device)               # (P,) column pairs
    overlap = torch.zeros(truncation * truncation, dtype=torch.float64, device=values.device)
    gain = torch.zeros_like(overlap)
    for start in range(0, values.shape[0], chunk):
        v, i = values[start:start + chunk], index[start:start + chunk]
        va, vb = v[:, first].double(), v[:, second].double()                          # (c, P)
        valid = (va > 0) & (vb > 0)
        ia, ib = i[:, first], i[:, second]
        key = (torch.minimum(ia, ib) * truncation + torch.maximum(ia, ib))[valid]
        va, vb = va[valid], vb[valid]
        overlap.index_add_(0, key, va * vb)
        gain.index_add_(0, key, entropy_terms(va + vb) - entropy_terms(va) - entropy_terms(vb))
    overlap, gain = overlap.view(truncation, truncation), gain.view(truncation, truncation)
    return overlap + overlap.T, gain + gain.T


def merged_stats(stats: SuffStats, keep: torch.Tensor, drop: torch.Tensor, entropy_change: float) -> SuffStats:
    """Statistics after merging each component ``drop[i]`` into ``keep[i]`` ((P,) each; drops distinct and never
    kept, a component may keep several): kept rows add their dropped ones, which empty; the entropy changes by
    ``entropy_change``."""
    def merged(a: torch.Tensor) -> torch.Tensor:
        out = a.clone().index_add_(0, keep, a[drop])
        out[drop] = 0.0
        return out
    return SuffStats(merged(stats.counts), merged(stats.sum_x), merged(stats.sum_xx), stats.entropy + entropy_change)


def responsibility_entropy(values: torch.Tensor) -> torch.Tensor:
    """-sum r log r over the top-k responsibilities (N, k), float64 (0-d)."""
    return entropy_terms(values).sum()


def merge_rows(values: torch.Tensor, index: torch.Tensor, keep: int, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities after merging component ``drop`` into ``keep``: a row holding both sums them into keep's
    entry (drop's entry becomes 0); a row holding only drop relabels it. Rows stay sorted descending."""
    is_drop, is_keep = index == drop, index == keep                                   # (N, k)
    rows = is_drop.any(1)
    both = rows & is_keep.any(1)
    moved = (values * is_drop).sum(1, keepdim=True)                                   # (N, 1)
    values = torch.where(is_keep & both[:, None], values + moved, values)
    values = torch.where(is_drop & both[:, None], torch.zeros_like(values), values)
    index = torch.where(is_drop & ~both[:, None], torch.full_like(index, keep), index)
    return _sorted_rows(values, index, rows)


def drop_entries(values: torch.Tensor, index: torch.Tensor, dropped: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (M, k) with the entries of components ``dropped`` (T,) bool set to 0 and the rest renormalised, sorted
    descending. Rows left with no mass come back all zero (the caller reassigns them)."""
    values = torch.where(dropped[index], torch.zeros_like(values), values)
    total = values.sum(1, keepdim=True)
    values = torch.where(total > 0, values / total.clamp_min(1e-30), values)
    return _sorted_rows(values, index, torch.ones(values.shape[0], dtype=torch.bool, device=values.device))


def _sorted_rows(values: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, index = values.clone(), index.clone()
    sub_values, order = torch.sort(values[rows], dim=1, descending=True, stable=True)
    values[rows], index[rows] = sub_values, torch.gather(index[rows], 1, order)
    return values, index


class MoveRunner:
    """Runs the move rounds of one :class:`~.engine.DPGMM` fit on its current state (``engine._state``)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.failed_split_counts: list[float] = []     # parents whose split was refused, by their N_k then
        self.failed_delete_counts: list[float] = []    # components whose delete was refused, by their N_k then
        self.birth_wait, self.birth_failures = 0, 0    # rounds to skip births after refusals (doubling)

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _accept(self, kind: str, cand: Candidate, values=None, index=None, count: int = 1) -> bool:
        """Commit ``cand`` (made by ``count`` moves of ``kind``) iff it raises the ELBO beyond rounding noise."""
        engine = self.engine
        engine.moves_[kind]["tried"] += count
        current = engine._state.value
        if not cand.value - current > ACCEPT_RELATIVE * max(abs(current), 1.0):
            return False
        engine.moves_[kind]["accepted"] += count
        engine.commit(cand, values, index)
        return True

    def _rows_delta(self, rows: torch.Tensor, old_values: torch.Tensor, old_index: torch.Tensor,
                    new_values: torch.Tensor, new_index: torch.Tensor) -> SuffStats:
        """Exact change of the statistics (and entropy) when rows ``rows`` change their responsibilities."""
        sweeper = self.engine._sweeper
        raw_old, h_old = sweeper.statistics(old_values, old_index, rows)
        raw_new, h_new = sweeper.statistics(new_values, new_index, rows)
        return self.engine._reduce_stats(raw_new - raw_old, h_new - h_old)

    def run(self, round_id: int, moves: tuple[str, ...] | None = None) -> bool:
        """One round of ``moves`` (default: the engine's), after a reorder of the sticks by size; returns whether
        any of ``moves`` was accepted."""
        engine = self.engine
        moves = engine.moves if moves is None else moves
        changed = False
        if engine._prior.shared:
            self.sort()          # raises the ELBO a little but leaves the partition alone: not a change
        if "merge" in moves:
            changed |= self.merges()
        if "delete" in moves:
            changed |= self.deletes()
        if "split" in moves:
            changed |= self.splits()
        if "birth" in moves:
            changed |= self.birth(round_id)
        return changed

    # -- sort ----------------------------------------------------------------------------------------------
    def sort(self) -> bool:
        state = self.engine._state
        cand = self.engine.candidate(state.stats, torch.empty(0, dtype=torch.int64, device=state.origin.device))
        return cand.order is not None and self._accept("sort", cand)

    # -- merge ---------------------------------------------------------------------------------------------
    def _candidate_pairs(self, live: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
        """Pairs (P, 2) of live components to score; first column the larger component (the survivor)."""
        engine = self.engine
        counts = engine._state.stats.counts
        if live.shape[0] <= ALL_PAIRS_UP_TO:
            a, b = torch.triu_indices(live.shape[0], live.shape[0], 1, device=live.device)
            pairs = torch.stack([live[a], live[b]], 1)
        else:
            shared = torch.triu(overlap[live][:, live], 1).nonzero()                   # pairs sharing points
            means = engine._state.q.components.m[live]
            dist = torch.cdist(means, means)
            dist.fill_diagonal_(math.inf)
            near = dist.topk(min(NEAREST_PAIRS, live.shape[0] - 1), largest=False).indices   # (K, n)
            nearest = torch.stack([torch.arange(live.shape[0], device=live.device).repeat_interleave(near.shape[1]),
                                   near.reshape(-1)], 1)
            both = torch.cat([shared, nearest])
            both = torch.unique(torch.sort(both, dim=1).values, dim=0)
            pairs = live[both]
        larger_first = counts[pairs[:, 0]] >= counts[pairs[:, 1]]
        return torch.where(larger_first[:, None], pairs, pairs.flip(1))

    def _merge_estimates(self, pairs: torch.Tensor, entropy_gain: torch.Tensor) -> torch.Tensor:
        """Estimated ELBO change (P,) of each merge: exact component terms and entropy, plus the weight term
        (N_j + N_k) log(N_j + N_k) - N_j log N_j - N_k log N_k that the sticks roughly gain."""
        engine = self.engine
        state, family, prior = engine._state, engine.family, engine._prior.components
        out = []
        for start in range(0, pairs.shape[0], MERGE_PAIR_BATCH):
            j, k = pairs[start:start + MERGE_PAIR_BATCH].unbind(1)
            merged = state.stats.rows(j) + state.stats.rows(k)
            rows_prior = prior.rows(j)
            q = family.posterior(merged, rows_prior)
            terms = family.component_terms(merged, q, rows_prior)
            n_j, n_k = state.stats.counts[j], state.stats.counts[k]
            weights = (torch.special.xlogy(n_j + n_k, n_j + n_k) - torch.special.xlogy(n_j, n_j)
                       - torch.special.xlogy(n_k, n_k))
            out.append(terms - state.terms[j] - state.terms[k] + entropy_gain[j, k] + weights)
        return torch.cat(out)

    def merges(self) -> bool:
        """Passes of :meth:`merge_pass` until one accepts nothing (at most ``MERGE_PASSES``)."""
        accepted = False
        for _ in range(MERGE_PASSES):
            if not self.merge_pass():
                break
            accepted = True
        return accepted

    def merge_pass(self) -> bool:
        """Score candidate pairs; first try all merges with a positive estimate as one batch (one exact check),
        and if that is refused try the pairs one by one, best first."""
        engine = self.engine
        live = engine.live_components()
        if live.shape[0] < 2:
            return False
        overlap, entropy_gain = self._pair_tables()
        pairs = self._candidate_pairs(live, overlap)
        estimates = self._merge_estimates(pairs, entropy_gain)
        order = torch.argsort(estimates, descending=True)
        pairs, estimates = pairs[order], estimates[order]
        # every component with a positive merge estimate goes into its best partner, unless that partner is itself
        # going somewhere (large components often absorb several small ones at once)
        batch, target = [], {}
        for (keep, drop), estimate in zip(pairs.tolist(), estimates.tolist()):
            if estimate <= 0:
                break
            if drop not in target and keep not in target and drop not in target.values():
                target[drop] = keep
                batch.append((keep, drop))
        if len(batch) > 1 and self.try_merges(torch.tensor(batch, device=live.device)) is not None:
            return True
        accepted, tries = False, 0
        for p in range(pairs.shape[0]):
            if estimates[p] < -MERGE_SLACK or tries >= 2 * live.shape[0]:
                break
            keep, drop = (int(v) for v in pairs[p])
            counts = engine._state.stats.counts
            if counts[keep] == 0 or counts[drop] == 0:
                continue                                     # one of them was merged away in this pass
            if counts[keep] < counts[drop]:
                keep, drop = drop, keep
            tries += 1
            order = self.try_merges(torch.tensor([[keep, drop]], device=live.device))
            if order is None:
                continue
            accepted = True
            if not isinstance(order, bool):
                # slots were renumbered: carry the remaining pairs along
                new_id = torch.empty_like(order)
                new_id[order] = torch.arange(engine.truncation, device=order.device)
                pairs = new_id[pairs]
        return accepted

    def _pair_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Estimated overlap and merge entropy tables (T, T) from the largest RANK_COLUMNS entries of each row."""
        state, engine = self.engine._state, self.engine
        tables = pair_tables(state.values, state.index, engine.truncation, columns=RANK_COLUMNS)
        return engine._allreduce(torch.stack(tables)).unbind(0)

    def try_merge(self, keep: int, drop: int) -> torch.Tensor | bool | None:
        """Merge component ``drop`` into ``keep`` if that raises the full ELBO (see :meth:`try_merges`)."""
        return self.try_merges(torch.tensor([[keep, drop]], device=self.engine._state.origin.device))

    def try_merges(self, pairs: torch.Tensor) -> torch.Tensor | bool | None:
        """Merge each ``pairs[i, 1]`` into ``pairs[i, 0]`` ((P, 2); dropped components distinct and never kept) if
        together that raises the full ELBO. Returns None when refused, else the slot order (new -> old) the
        accepted state applied, or True when the slots kept their numbers."""
        engine = self.engine
        state = engine._state
        values, index = state.values, state.index
        for keep, drop in pairs.tolist():
            values, index = merge_rows(values, index, keep, drop)
        # the entropy change of the merged q(z), exact (rows holding several merged components included)
        change = engine._allreduce((responsibility_entropy(values) - responsibility_entropy(state.values)).reshape(1))
        stats = merged_stats(state.stats, pairs[:, 0], pairs[:, 1], engine._stats_scale * float(change[0]))
        cand = engine.candidate(stats, pairs.reshape(-1))
        if not self._accept("merge", cand, values, index, count=pairs.shape[0]):
            return None
        return True if cand.order is None else cand.order

    # -- delete --------------------------------------------------------------------------------------------
    def _reassign_orphans(self, rows: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                          excluded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (of ``rows``) left with no mass go wholly to their best live component outside ``excluded``."""
        orphan = values.sum(1) == 0
        if not bool(orphan.any()):
            return values, index
        engine = self.engine
        live = engine.live_components()
        live = live[~excluded[live]]
        if live.shape[0] == 0:
            return values, index
        best = live[engine._sweeper.score(engine.logit_operator(live), rows[orphan]).argmax(1)]
        values, index = values.clone(), index.clone()
        values[orphan] = 0.0
        values[orphan, 0] = 1.0
        index[orphan, 0] = best
        return values, index

    def remove_entries(self, dropped: torch.Tensor, values: torch.Tensor, index: torch.Tensor, stats: SuffStats
                       ) -> tuple[torch.Tensor, torch.Tensor, SuffStats]:
        """Take every responsibility of the components ``dropped`` (T,) bool away from the points, renormalising
        their rows (orphaned rows go to their best remaining live component); returns the new (values, index) and
        statistics. Used by delete moves and by the final pruning."""
        rows = (dropped[index] & (values > 0)).any(1).nonzero()[:, 0]
        old_values, old_index = values[rows], index[rows]
        new_values, new_index = drop_entries(old_values, old_index, dropped)
        new_values, new_index = self._reassign_orphans(rows, new_values, new_index, dropped)
        stats = stats + self._rows_delta(rows, old_values, old_index, new_values, new_index)
        # the dropped components hold nothing now: remove the float remainder of the subtraction
        keep = (~dropped).to(stats.counts.dtype)
        stats = SuffStats(stats.counts * keep, stats.sum_x * keep[:, None],
                          stats.sum_xx * keep.view(-1, *([1] * (stats.sum_xx.dim() - 1))), stats.entropy)
        values, index = values.clone(), index.clone()
        values[rows], index[rows] = new_values, new_index
        return values, index, stats

    def deletes(self) -> bool:
        """Try to delete the smallest live components (below DELETE_MAX_SHARE of the data, skipping ones refused at
        about the same size before); after an accepted delete the candidates are chosen again."""
        engine = self.engine
        accepted = False
        for _ in range(DELETE_TRIES):
            state = engine._state
            live = engine.live_components()
            if live.shape[0] < 2:
                break
            counts = state.stats.counts
            small = live[torch.argsort(counts[live])]
            small = [int(j) for j in small if counts[j] < DELETE_MAX_SHARE * counts.sum()
                     and not _near(float(counts[j]), self.failed_delete_counts)][:DELETE_TRIES]
            done = False
            for j in small:
                dropped = torch.zeros(engine.truncation, dtype=torch.bool, device=live.device)
                dropped[j] = True
                values, index, stats = self.remove_entries(dropped, state.values, state.index, state.stats)
                cand = engine.candidate(stats, live)     # j and every component its points moved to
                if self._accept("delete", cand, values, index):
                    accepted = done = True
                    break
                self.failed_delete_counts.append(float(counts[j]))
            if not done:
                break
        return accepted

    # -- split ---------------------------------------------------------------------------------------------
    def _propose_split(self, parent: int, child: int):
        """Points of ``parent`` split in two (hard, within the parent's responsibility): (rows that move, the
        column of the parent's entry in them, child statistics (2 rows)) or None.

        Only rows where the parent holds at least SPLIT_MIN_WEIGHT compete (principal axis, refinement); the rest
        stay. The moving child's statistics are summed over the rows that move, the staying child's are the
        parent's minus those, so a proposal costs passes over the parent's main rows only.
        """
        engine = self.engine
        state, sweeper, family = engine._state, engine._sweeper, engine.family
        hit = (state.index == parent) & (state.values >= SPLIT_MIN_WEIGHT)
        rows = hit.any(1).nonzero()[:, 0]
        column = hit[rows].to(torch.int8).argmax(1)
        weight = state.values[rows, column]                                            # (M,)
        xc = sweeper.centred(rows)                                                     # (M, d)
        d = xc.shape[1]
        wx = weight[:, None] * xc
        moments = engine._allreduce(torch.cat([weight.sum(dtype=torch.float64).reshape(1), wx.sum(0).double(),
                                               (xc.T @ wx).double().reshape(-1)]))
        total = float(moments[0])
        if total <= 0:
            return None
        mean = moments[1:d + 1] / total
        cov = moments[d + 1:].view(d, d) / total - mean[:, None] * mean[None, :]
        axis = torch.linalg.eigh(cov)[1][:, -1].float()
        goes = (xc - mean.float()) @ axis > 0                                           # (M,) bool
        slots = torch.tensor([parent, child], device=rows.device)
        prior_rows = engine._prior.components.rows(slots)
        parent_stats = state.stats.rows(slots[:1])
        for iteration in range(SPLIT_ITERS + 1):
            raw, _ = sweeper.statistics(weight[goes, None], torch.zeros_like(weight[goes, None], dtype=torch.int64),
                                        rows[goes], n_components=1)
            moving = engine._reduce_stats(raw, torch.zeros((), dtype=torch.float64, device=raw.device))
            children = SuffStats(torch.cat([parent_stats.counts - moving.counts, moving.counts]),
                                 torch.cat([parent_stats.sum_x - moving.sum_x, moving.sum_x]),
                                 torch.cat([parent_stats.sum_xx - moving.sum_xx, moving.sum_xx]), 0.0)
            if not bool((children.counts > SPLIT_MIN_WEIGHT).all()):
                return None
            if iteration == SPLIT_ITERS:
                break
            q = family.posterior(children, prior_rows)
            op = family.logit_operator(q, torch.log(children.counts / children.counts.sum()))
            scores = sweeper.score(op, rows)                                            # (M, 2)
            new_goes = scores[:, 1] > scores[:, 0]
            moved = engine._allreduce((new_goes != goes).sum(dtype=torch.float64).reshape(1))
            goes = new_goes
            if float(moved[0]) == 0:      # decided on the summed count, so every rank stops at the same iteration
                break
        return rows[goes], column[goes], children

    def splits(self) -> bool:
        """Try to split the live components, largest first (skipping ones refused at about the same size before),
        keeping every split that raises the ELBO; a round tries at most max(SPLIT_TRIES, K / 2) parents."""
        engine = self.engine
        accepted = False
        skip: list[float] = []              # counts of this round's children and refused parents
        for _ in range(max(SPLIT_TRIES, engine.live_components().shape[0] // 2)):
            state = engine._state
            counts = state.stats.counts
            empty = (counts == 0).nonzero()[:, 0]
            if empty.numel() == 0:
                break
            live = engine.live_components()
            live = live[torch.argsort(counts[live], descending=True)]
            parents = [int(p) for p in live if not _near(float(counts[p]), self.failed_split_counts + skip)]
            if not parents:
                break
            parent, child = parents[0], int(empty[0])
            proposal = self._propose_split(parent, child)
            if proposal is None:
                self.failed_split_counts.append(float(counts[parent]))
                continue
            rows, column, children = proposal
            slots = torch.tensor([parent, child], device=rows.device)
            stats = state.stats.put_rows(slots, SuffStats(children.counts, children.sum_x, children.sum_xx,
                                                          state.stats.entropy))
            index = state.index.clone()
            index[rows, column] = child
            cand = engine.candidate(stats, slots)
            if self._accept("split", cand, state.values, index):
                accepted = True
                skip += children.counts.tolist()
            else:
                self.failed_split_counts.append(float(counts[parent]))
        return accepted

    # -- birth ---------------------------------------------------------------------------------------------
    def birth(self, round_id: int) -> bool:
        """One birth into the first empty slot, unless recent rounds refused theirs (see ``birth_wait``)."""
        engine = self.engine
        state, sweeper = engine._state, engine._sweeper
        empty = (state.stats.counts == 0).nonzero()[:, 0]
        if empty.numel() == 0 or state.log_norm is None:
            return False
        if self.birth_wait > 0:          # the worst-fit points change slowly: refused births wait 1, 2, 4 ... rounds
            self.birth_wait -= 1
            return False
        born = self._birth_from_worst(round_id, int(empty[0]))
        self.birth_failures = 0 if born else self.birth_failures + 1
        self.birth_wait = 0 if born else 2 ** (self.birth_failures - 1)
        return born

    def _birth_from_worst(self, round_id: int, slot: int) -> bool:
        """Seed groups from the worst-fit points (k-means on them, largest groups first); the first group whose
        grown component raises the ELBO is kept."""
        engine = self.engine
        state, sweeper = engine._state, engine._sweeper
        d = engine._x.shape[1]
        n_total = engine._n_total
        wanted = min(n_total, max(20 * (d + 1), n_total // 25))
        # the worst-fit points over all ranks, each with the component it belongs to now (ids are exact in float32
        # below 2^24)
        seeds = engine._top_rows(-state.log_norm, wanted,
                                 lambda worst: torch.cat([sweeper.centred(worst), state.index[worst, :1].float()], 1))
        generator = torch.Generator().manual_seed(engine._seed * 1_000_003 + round_id)
        groups = lloyd(seeds[:, :d], min(BIRTH_GROUPS, seeds.shape[0]), generator)
        sizes = torch.bincount(groups)
        for group in torch.argsort(sizes, descending=True)[:BIRTH_TRIES].tolist():
            if sizes[group] < 2:
                break
            members = seeds[groups == group]
            owner = torch.mode(members[:, d].long()).values
            if self._try_birth(members[:, :d].mean(0), owner, slot):
                return True
        return False

    def _try_birth(self, centre: torch.Tensor, owner: torch.Tensor, slot: int) -> bool:
        """Grow a component in the empty ``slot`` at ``centre`` (d,) out of the component ``owner`` that holds most
        of the seed points: it starts as a copy of the owner moved to ``centre`` with half its weight, then
        restricted hard EM over the owner's points (those whose top component it is), each going wholly to the
        new component when it scores higher there than under the (refitted) owner, ``BIRTH_ITERS`` times; then
        the exact ELBO decides. (A component fitted to the seed points alone would be a tight blob at the edge of
        the badly fitted region, which the old component, still fitted to the whole region, outscores.)"""
        engine = self.engine
        state, sweeper, family = engine._state, engine._sweeper, engine.family
        device = centre.device
        slot_id = torch.tensor([slot], device=device)
        ids = torch.cat([owner.reshape(1), slot_id])                                       # (2,)
        region = (state.index[:, 0] == owner).nonzero()[:, 0]                             # rows competed for
        prior_rows = engine._prior.components.rows(ids)
        start = state.q.components.rows(owner.reshape(1))
        start.m = centre.double().reshape(1, -1)
        q = state.q.components.put_rows(slot_id, start)
        counts = state.stats.counts.clone()
        counts[slot] = counts[owner] = 0.5 * float(counts[owner])
        stats, take = None, None
        for _ in range(BIRTH_ITERS):
            log_weight = torch.log(counts[ids].clamp_min(1.0) / engine._n_total)
            scores = sweeper.score(family.logit_operator(q.rows(ids), log_weight), region)   # (R, 2)
            take = region[scores[:, 1] > scores[:, 0]]
            old_values, old_index = state.values[take], state.index[take]
            new_values = torch.zeros_like(old_values)
            new_values[:, 0] = 1.0
            new_index = torch.cat([torch.full_like(old_index[:, :1], slot), old_index[:, :-1]], 1)
            stats = state.stats + self._rows_delta(take, old_values, old_index, new_values, new_index)
            counts = stats.counts
            if float(counts[slot]) < max(engine.min_size, 2.0):
                return False
            q = q.put_rows(ids, family.posterior(stats.rows(ids), prior_rows))
        touched = torch.unique(torch.cat([old_index[old_values > 0], ids]))
        cand = engine.candidate(stats, touched)
        values, index = state.values.clone(), state.index.clone()
        values[take], index[take] = new_values, new_index
        return self._accept("birth", cand, values, index)
