"""Closed-form CAVI engine of the DP-GMM (torch, CPU or CUDA): the iteration loop, warm and cold starts, moves.

Each iteration: top-k E-step over the live components (one streaming pass, ``sweep``), the global M-step
(``variational.m_step``), the exact ELBO from the sufficient statistics; every ``move_every`` iterations and once
more before stopping, merge / split / birth / delete moves (``moves``), each kept only when the full ELBO rises.
So the ELBO never decreases through iterations and moves (``elbo_trace_`` records every accepted state).

Multi-process seam: every sum over points goes through :meth:`DPGMM._allreduce` and every data-dependent random
choice is made from rows passed through :meth:`DPGMM._gather_rows`; both are the identity here. A distributed
subclass overrides them and feeds each rank its shard of the points; all ranks then hold the same globals.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import fields, replace
from typing import Any, Callable, Iterable

import torch

from bayes_dc.clustering.base import active_mask, check_features
from bayes_dc.clustering.dpgmm import mfa  # noqa: F401  (registers the "mfa" family before COVARIANCES is read)
from bayes_dc.config.rules import OptionError, check_option
from bayes_dc.clustering.dpgmm.families import FAMILIES, FULL_MEMORY_LIMIT_BYTES, Components, SuffStats, make_family
from bayes_dc.clustering.dpgmm.moves import MoveRunner
from bayes_dc.clustering.dpgmm.prior import (DEFAULT_PRIOR_SCALE, DPGMMPrior, build_prior, check_prior_options, data_moments, updated_scale)
from bayes_dc.clustering.dpgmm.seeding import kmeanspp_seeds, nearest_centre
from bayes_dc.clustering.dpgmm.state import Candidate, FitState
from bayes_dc.clustering.dpgmm.sweep import Sweeper
from bayes_dc.clustering.dpgmm.variational import DPGMMParams, expected_alpha, global_terms, m_step
from bayes_dc.clustering.dpgmm.weights import StickBreaking, WeightPrior

COVARIANCES = tuple(FAMILIES)
WARM_STARTS = ("none", "init", "prior")
MOVES = ("merge", "split", "birth", "delete")
STATE_VERSION = 1
INIT_MERGE_ROUNDS = 10      # merge rounds on the hard seeding partition of a cold start
GROWING_MOVE_EVERY = 2      # iterations between move rounds while the previous round accepted a move
DEFAULT_TOL = 1e-2          # converged when less than this share of the responsibility mass moved in an E-step


class ConvergenceWarning(UserWarning):
    """The iteration cap was hit before the responsibilities settled (mean change per point below ``tol``)."""


class ClusterCountWarning(UserWarning):
    """The fit ended with 1-2 active components or with every component active: K says more about the prior or
    the truncation than about the data."""


def check_choice(name: str, value: str, choices: Iterable[str], option: str | None = None) -> None:
    """OptionError naming ``option`` (default: ``name``) when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise OptionError(option or name, f"unknown {name} {value!r}; choose one of {list(choices)} (`{option or name}`)")


def parse_moves(moves: bool | str | Iterable[str] | None) -> tuple[str, ...]:
    """True / "all" -> every move; False / None / "none" / "" -> none; "merge,delete" or a list -> those."""
    if moves is True or moves == "all":
        return MOVES
    if moves is False or moves is None or moves in ("none", ""):
        return ()
    names = [m.strip() for m in moves.split(",")] if isinstance(moves, str) else list(moves)
    for name in names:
        check_choice("move", name, MOVES, "moves")
    return tuple(m for m in MOVES if m in names)


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------
class VariationalMixture:
    """Iteration loop shared by variational mixtures (in the style of scikit-learn's ``BaseMixture``).

    ``fit`` runs ``_initialize``, then iterations of E-step -> M-step -> ELBO -> ``_after_iteration`` (moves) until
    the E-step changed the responsibilities by at most ``tol`` per point (``_change``) and ``_after_iteration``
    changed nothing, or ``max_iter`` iterations ran (then a :class:`ConvergenceWarning`), then ``_finalize``.
    Subclasses hold only the math. Fitted attributes:
    ``history_`` (ELBO after each iteration), ``lower_bound_`` (final ELBO), ``converged_``, ``n_iter_``,
    ``fit_seconds_``.
    """

    def __init__(self, *, max_iter: int = 100, tol: float = DEFAULT_TOL, verbose: bool = False):
        check_option("max_iter", max_iter)
        check_option("tol", tol)   # a share of the responsibility mass
        self.max_iter, self.tol, self.verbose = int(max_iter), float(tol), verbose

    def fit(self, x: torch.Tensor, *, seed: int = 0, warm_state: Any = None) -> "VariationalMixture":
        x = check_features(x)
        start = time.perf_counter()
        self._initialize(x, seed, warm_state)
        history, converged = self._iterate(self.max_iter)
        if not converged:
            warnings.warn(ConvergenceWarning(f"{type(self).__name__} hit max_iter={self.max_iter} before the mean change "
                                             f"of the responsibilities per point fell below tol={self.tol}; raise "
                                             "--max-iter or --tol"))
        self.history_, self.n_iter_, self.converged_ = history, len(history), converged
        self.lower_bound_ = self._finalize()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _iterate(self, max_iter: int) -> tuple[list[float], bool]:
        history: list[float] = []
        for iteration in range(1, max_iter + 1):
            self._e_step()
            self._m_step()
            value = self._elbo()
            change = self._change()
            small = change is not None and change <= self.tol
            value, changed = self._after_iteration(iteration, value, small)
            history.append(value)
            if self.verbose:
                print(f"iter {iteration}: ELBO {value:.6f}, change {change}{' (moves)' if changed else ''}")
            if small and not changed:
                return history, True
        return history, False

    def _initialize(self, x: torch.Tensor, seed: int, warm_state: Any) -> None:
        raise NotImplementedError

    def _change(self) -> float | None:
        """How much the last E-step changed the responsibilities, per point (compared with ``tol``); None when
        there is nothing to compare with."""
        raise NotImplementedError

    def _e_step(self) -> None:
        raise NotImplementedError

    def _m_step(self) -> None:
        raise NotImplementedError

    def _elbo(self) -> float:
        raise NotImplementedError

    def _after_iteration(self, iteration: int, value: float, converging: bool) -> tuple[float, bool]:
        """Hook between iterations (e.g. moves); returns the (possibly raised) ELBO and whether anything changed."""
        return value, False

    def _finalize(self) -> float:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# The DP-GMM
# ---------------------------------------------------------------------------------------------------------------
class DPGMM(VariationalMixture):
    """Truncated stick-breaking DP mixture of Gaussians fitted by closed-form CAVI with ELBO-checked moves.

    Args:
        truncation: T >= 2 components (T-1 sticks).
        covariance: "full" (Normal-Wishart), "diag" (Normal-Gamma per dimension) or "spherical".
        alpha: DP concentration (> 0); fixed unless ``alpha_prior`` = (shape, rate) puts a Gamma prior on it.
        prior_scale: E[Sigma_k] under the prior = prior_scale x the data covariance (float > 0), or E[Sigma_k]
            itself as a tensor ((d, d) full, (d,) diag, () spherical). See :mod:`.prior`.
        prior_dof: pseudo-observations per variance (> 2; None: 3, i.e. nu0 = d + 2 for full).
        kappa0: prior mean precision factor (None: :data:`.prior.DEFAULT_KAPPA0`).
        prior_scale_update: re-estimate prior_scale between sweeps by maximising the ELBO (empirical Bayes).
        topk: responsibilities kept per point (>= 1, at most T; topk >= T is exact CAVI over the live set).
        max_iter: most iterations on the full data.
        tol: converged when an E-step moved at most this share of the responsibility mass (the mean total-variation
            distance between each point's old and new responsibilities, in (0, 1); see :meth:`_change`).
        min_size: components whose expected count N_k ends below this are reset to the prior (see ``_finalize``).
        warm_start: "none" | "init" | "prior" (what ``fit(..., warm_state=...)`` does with a previous state).
        prior_decay: rho in (0, 1], weight of the previous posterior's pseudo-counts for warm_start="prior".
        moves: which of "merge", "split", "birth", "delete" run between sweeps (True/"all", False/"none", a
            comma-separated string or a list); each is kept only when the full ELBO rises.
        move_every: iterations between move rounds (2 while the last round accepted a move; moves also run when
            the responsibilities settle (``tol``), and the fit stops only after a round that accepts nothing).
        init_subsample: points used for the cold-start seeding phase (None: max(20 T, 5000), at most N).
        init_iter: CAVI iterations on that subsample before the full data (cold start only).
        chunk_size: maximum points per E-step chunk (None: 8192 on CPU, 65536 on CUDA; chunks also shrink so their
            temporaries stay under ``sweep.CHUNK_BYTES``).
        profile_gemm: time the E-step products separately (synchronising CUDA) into ``gemm_seconds_``.
        memory_limit: bytes the full-covariance (T, d, d) arrays may take before the fit is refused.
        weights: the prior on the mixture weights, built as ``weights(alpha=, alpha_prior=, truncation=)`` into a
            :class:`.weights.WeightPrior` (default: the DP's stick-breaking; a finite Dirichlet shares the rest).
        factors: most factors per component for covariance="mfa" (None: :data:`.mfa.DEFAULT_FACTORS`).

    Fitted attributes (components in the final order, largest N_k first): ``weights_`` (T,) E[pi];
    ``means_`` (T, d) E[mu]; ``precisions_`` E[Lambda] ((T, d, d) full, (T, d) diag, (T,) spherical);
    ``mean_precision_`` (T,) kappa; ``counts_`` (T,) N_k; ``alpha_`` E[alpha]; ``prior_scale_`` (final s);
    ``resp_values_`` / ``resp_index_`` (N, k) top-k responsibilities (rows sum to 1, sorted descending);
    ``labels_`` (N,); ``permutation_`` (T,) int64; ``state_`` (warm state for the next fit); ``history_``,
    ``elbo_trace_`` (every accepted state's ELBO, iterations and moves), ``lower_bound_``, ``converged_``,
    ``n_iter_``; ``init_elbo_`` (ELBO of the warm initial state, None for cold starts); ``moves_``
    ({move: {"tried", "accepted"}}); ``move_seconds_``; ``gemm_seconds_``; ``elbo_comparable_`` (False for
    ``warm_start="prior"``, whose prior counts the data twice).
    """

    def __init__(self, truncation: int = 300, *, covariance: str = "full", alpha: float = 1.0,
                 alpha_prior: tuple[float, float] | None = None, prior_scale: float | torch.Tensor = DEFAULT_PRIOR_SCALE,
                 prior_dof: float | None = None, kappa0: float | None = None, prior_scale_update: bool = False,
                 topk: int = 8, max_iter: int = 100, tol: float = DEFAULT_TOL, min_size: float = 1.0,
                 warm_start: str = "init", prior_decay: float = 0.5, moves: bool | str | Iterable[str] = True,
                 move_every: int = 5, init_subsample: int | None = None, init_iter: int = 20,
                 chunk_size: int | None = None, profile_gemm: bool = False, memory_limit: int | None = None,
                 weights: Callable[..., WeightPrior] = StickBreaking.from_options, factors: int | None = None,
                 verbose: bool = False):
        super().__init__(max_iter=max_iter, tol=tol, verbose=verbose)
        check_option("truncation", truncation)   # T >= 2: T-1 sticks
        check_choice("covariance", covariance, COVARIANCES)
        check_choice("warm_start", warm_start, WARM_STARTS)
        check_option("alpha", alpha)
        if alpha_prior is not None and len(alpha_prior) != 2:
            raise OptionError("alpha_prior", f"`alpha_prior` is (shape, rate) of a Gamma, got {alpha_prior}")
        check_option("alpha_prior", alpha_prior)
        check_prior_options(prior_scale, prior_dof, kappa0)
        for option, value in (("topk", topk), ("prior_decay", prior_decay), ("min_size", min_size),
                              ("move_every", move_every)):
            check_option(option, value)
        if factors is not None and covariance == "mfa":
            mfa.check_factors(factors)   # the upper bound, d, is checked when the data arrive
        if covariance == "mfa" and warm_start == "prior":
            # the mfa update assumes the ARD prior (zero-mean loadings, diagonal precision) a pseudo-count prior lacks
            raise OptionError("warm_start", "warm_start='prior' is not available for covariance='mfa'; use "
                                            "warm_start='init' or 'none'")
        if prior_scale_update and warm_start == "prior":
            raise OptionError("prior_scale_update", "prior_scale_update=True needs one prior shared by all components, "
                                                    "but warm_start='prior' gives each its own; use warm_start='init' "
                                                    "or prior_scale_update=False")
        self.truncation, self.covariance, self.alpha, self.alpha_prior = int(truncation), covariance, float(alpha), alpha_prior
        self.prior_scale, self.prior_dof, self.kappa0 = prior_scale, prior_dof, kappa0
        self.prior_scale_update, self.topk = bool(prior_scale_update), min(int(topk), int(truncation))
        self.min_size, self.warm_start, self.prior_decay = float(min_size), warm_start, float(prior_decay)
        self.moves, self.move_every = parse_moves(moves), int(move_every)
        self.init_subsample, self.init_iter, self.chunk_size = init_subsample, int(init_iter), chunk_size
        self.profile_gemm = profile_gemm
        self.memory_limit = memory_limit
        self.weights = weights
        self.weight_prior = weights(alpha=self.alpha, alpha_prior=self.alpha_prior, truncation=self.truncation)
        self.factors = factors

    # -- multi-process seam ------------------------------------------------------------------------------------
    def _allreduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks (identity in one process). Every sum over points goes through here."""
        return tensor

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``rows`` (M_r, ...) in rank order (identity in one process), so a random or
        data-dependent choice made from the result is the same on every rank."""
        return rows

    def _global_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows ``positions`` (M,) of the points of all ranks in rank order, in the order given, on every rank
        (``x[positions]`` in one process): a random subsample drawn from the global ids is the one process's."""
        return self._x[positions.to(self._x.device)]

    def _top_rows(self, scores: torch.Tensor, k: int, rows) -> torch.Tensor:
        """``rows(ids)`` (k, ...) of the k points with the largest ``scores`` (N,) over all ranks, largest first, on
        every rank; ``rows`` maps local row ids (m,) to the rows (m, ...) wanted for them."""
        return rows(torch.topk(scores, min(k, scores.shape[0])).indices)

    # -- setup -------------------------------------------------------------------------------------------------
    def _options(self) -> dict:
        return dict(truncation=self.truncation, covariance=self.covariance, alpha=self.alpha,
                    alpha_prior=self.alpha_prior, prior_scale=self.prior_scale, prior_dof=self.prior_dof,
                    kappa0=self.kappa0, prior_scale_update=self.prior_scale_update, topk=self.topk,
                    max_iter=self.max_iter, tol=self.tol, min_size=self.min_size, warm_start=self.warm_start,
                    prior_decay=self.prior_decay, moves=self.moves, move_every=self.move_every,
                    init_subsample=self.init_subsample, init_iter=self.init_iter, chunk_size=self.chunk_size,
                    profile_gemm=self.profile_gemm, memory_limit=self.memory_limit, weights=self.weights,
                    factors=self.factors)

    def make_prior(self, x: torch.Tensor) -> tuple[DPGMMPrior, torch.Tensor, int]:
        """The prior for features x (N, d) in input coordinates, the data mean (d,) and N (summed over ranks).

        Raises ValueError when full covariance would not fit :attr:`memory_limit`.
        """
        family = make_family(self.covariance, x.shape[1], factors=self.factors)
        limit = self.memory_limit if self.memory_limit is not None else FULL_MEMORY_LIMIT_BYTES
        need = family.memory_bytes(self.truncation)
        if need > limit:
            raise OptionError("covariance", f"{family.name} covariance for T={self.truncation} components of d={x.shape[1]} "
                                            f"dimensions needs about {need / 2 ** 30:.1f} GiB for its (T, d, d) arrays "
                                            f"(limit {limit / 2 ** 30:.1f} GiB); use covariance='diag', a lower "
                                            "`pca_dim` or a smaller `truncation`")
        n, mean, cov = data_moments(x, family.needs_covariance_matrix, self._allreduce)
        prior = build_prior(family, mean, cov, self.truncation, prior_scale=self.prior_scale, prior_dof=self.prior_dof,
                            kappa0=self.kappa0, alpha=self.alpha, alpha_prior=self.alpha_prior,
                            weight_prior=self.weight_prior)
        return prior, mean, n

    def _setup(self, x: torch.Tensor) -> None:
        """Family, prior (in coordinates centred on the data mean), sweeper; no state yet."""
        prior, mean, n = self.make_prior(x)
        shift = mean.float()
        self._attach(x, make_family(self.covariance, x.shape[1], factors=self.factors), shift,
                     _shift_prior(prior, -shift.double()), n_total=n, stats_scale=1.0)

    def _attach(self, x: torch.Tensor, family, shift: torch.Tensor, prior: DPGMMPrior, *, n_total: int,
                stats_scale: float) -> None:
        self._x, self.family, self._shift, self._n_total = x, family, shift, n_total
        self._base_prior = self._prior = prior
        self._stats_scale = float(stats_scale)
        chunk = self.chunk_size or (65536 if x.is_cuda else 8192)
        self._sweeper = Sweeper(x, shift, family, self.truncation, chunk, self.profile_gemm)
        self._state: FitState | None = None
        self.moves_ = {name: {"tried": 0, "accepted": 0} for name in MOVES + ("sort",)}
        self.move_seconds_ = 0.0
        self.elbo_trace_: list[float] = []
        self._move_round = self._last_round_iteration = 0
        self._last_round_changed = False
        self.mover = MoveRunner(self)

    def check_warm_state(self, warm_state: Any, n: int, d: int) -> None:
        """Raise ValueError when ``warm_state`` does not fit features of shape (n, d) or this truncation. The
        dimension may change: a warm start goes through the responsibilities, which any new features of the same
        points can take (the parametric space drops the directions its encoder stopped using)."""
        if not isinstance(warm_state, dict) or warm_state.get("version") != STATE_VERSION:
            raise ValueError("warm_state is not a DP-GMM state (expected the `state` of a previous dp ClusterResult); "
                             "pass warm_state=None for a cold start")
        if warm_state["n_points"] != n:
            raise ValueError(f"warm_state holds responsibilities for N={warm_state['n_points']} points but got N={n}; "
                             "use the same points in the same order every round")
        if warm_state["truncation"] != self.truncation:
            raise ValueError(f"warm_state has truncation T={warm_state['truncation']} but this model has "
                             f"T={self.truncation}; keep `truncation` fixed across rounds")

    def _initialize(self, x: torch.Tensor, seed: int, warm_state: Any) -> None:
        n, d = x.shape
        self._seed = int(seed)
        self.gemm_seconds_ = 0.0
        self.elbo_comparable_ = True
        if warm_state is not None and self.warm_start != "none":
            self.check_warm_state(warm_state, n, d)
            self._setup(x)
            self._initialize_warm(warm_state)
            return
        n = int(self._allreduce(torch.tensor([float(n)], dtype=torch.float64, device=x.device)).item())  # all ranks'
        if n < self.truncation:
            raise OptionError("truncation", f"a cold start seeds T={self.truncation} components from distinct points "
                                            f"but N={n}; lower `truncation` to at most {n} or cluster more points")
        self._setup(x)
        self._initialize_cold(seed)
        self.init_elbo_ = None

    # -- state bookkeeping -------------------------------------------------------------------------------------
    def _reduce_stats(self, raw: torch.Tensor, entropy: torch.Tensor) -> SuffStats:
        """Sum per-rank R^T A (T, D) and entropy over ranks in one call; scale to the full data."""
        packed = self._allreduce(torch.cat([raw.reshape(-1), entropy.reshape(1)]))
        stats = self.family.stats_from_raw(packed[:-1].reshape(raw.shape), float(packed[-1]))
        return stats.scaled(self._stats_scale) if self._stats_scale != 1.0 else stats

    def _evaluate(self, stats: SuffStats, q_old: DPGMMParams | None) -> Candidate:
        """Full M-step and ELBO for new statistics (every component recomputed)."""
        q = m_step(self.family, stats, self._prior, q_old)
        terms = self.family.posterior_terms(stats, q.components, self._prior.components)
        value = float(terms.sum() + global_terms(stats, q, self._prior)) + float(stats.entropy)
        return Candidate(stats, q, terms, value, None)

    def candidate(self, stats: SuffStats, changed: torch.Tensor, reorder: bool = True) -> Candidate:
        """Re-optimised globals and exact ELBO for statistics that differ from the current state's only in the
        component rows ``changed`` (and the entropy); with ``reorder`` the sticks are also tried in order of
        decreasing N_k (when the prior is shared) and the better of the two orders is returned."""
        state, prior = self._state, self._prior
        changed = torch.unique(changed)
        rows_prior = prior.components.rows(changed)
        rows_q = self.family.posterior(stats.rows(changed), rows_prior)
        components = state.q.components.put_rows(changed, rows_q)
        terms = state.terms.clone()
        terms[changed] = self.family.component_terms(stats.rows(changed), rows_q, rows_prior)
        orders = [None]
        if reorder and prior.shared and prior.weight_prior.ordered:
            order = torch.argsort(stats.counts, descending=True, stable=True)
            if not torch.equal(order, torch.arange(self.truncation, device=order.device)):
                orders.append(order)
        best = None
        for order in orders:
            s = stats if order is None else stats.permuted(order)
            c = components if order is None else components.rows(order)
            q = DPGMMParams(c, prior.weight_prior.update(s.counts, state.q.weights))
            value = float(terms.sum() + global_terms(s, q, prior)) + float(s.entropy)
            if best is None or value > best.value:
                best = Candidate(s, q, terms if order is None else terms[order], value, order)
        return best

    def commit(self, cand: Candidate, values: torch.Tensor | None = None, index: torch.Tensor | None = None) -> None:
        """Make ``cand`` the current state, with the top-k responsibilities (N, k) it came from (ids before its
        order is applied; default: unchanged); slots left empty lose their identity."""
        state = self._state
        values = state.values if values is None else values
        index = state.index if index is None else index
        origin = state.origin
        if cand.order is not None:
            new_id = torch.empty_like(cand.order)
            new_id[cand.order] = torch.arange(self.truncation, device=cand.order.device)
            index, origin = new_id[index], origin[cand.order]
        origin = torch.where(cand.stats.counts > 0, origin, -1)
        self._state = FitState(cand.stats, cand.q, cand.terms, cand.value, values, index, state.log_norm, origin)
        self.elbo_trace_.append(cand.value)

    # -- initialisation ----------------------------------------------------------------------------------------
    def _start(self, values: torch.Tensor, index: torch.Tensor, q_old: DPGMMParams | None = None) -> float:
        """State from given responsibilities: statistics, M-step, ELBO; returns the ELBO."""
        raw, entropy = self._sweeper.statistics(values, index)
        stats = self._reduce_stats(raw, entropy)
        cand = self._evaluate(stats, q_old)
        origin = torch.arange(self.truncation, device=values.device)
        self._state = FitState(stats, cand.q, cand.terms, cand.value, values, index, None,
                               torch.where(stats.counts > 0, origin, -1))
        self.elbo_trace_.append(cand.value)
        return cand.value

    def _initialize_warm(self, state: dict) -> None:
        """M-step of the previous responsibilities on the new features (and, for "prior", the pseudo-count prior).

        ``warm_start="prior"`` adds the previous posterior, re-expressed on the new features, to the prior as
        pseudo-counts scaled by rho. Those counts come from the same points that the likelihood counts again, so
        the data are counted (1 + rho) times: the fit is a heuristic damping of change between rounds, not the
        posterior of any model, and its ELBO is not comparable with other fits (``elbo_comparable_ = False``).
        """
        device = self._x.device
        values = torch.as_tensor(state["resp_values"], dtype=torch.float32).to(device)
        index = torch.as_tensor(state["resp_index"], dtype=torch.int64).to(device)
        carried = self.weight_prior.params_from_state(state, device)   # e.g. q(alpha) of the previous fit
        q_old = None if carried is None else DPGMMParams(None, carried)
        if self.warm_start == "prior":
            raw, entropy = self._sweeper.statistics(values, index)
            stats = self._reduce_stats(raw, entropy)
            pseudo = self.family.posterior(stats.scaled(self.prior_decay), self._base_prior.components)
            self._prior = replace(self._base_prior, components=pseudo, unit=None)
            self.elbo_comparable_ = False
        self.init_elbo_ = self._start(values, index, q_old)

    def _initialize_cold(self, seed: int) -> None:
        """k-means++ seeds on a random subsample of M points, hard assignment, then ``init_iter`` CAVI iterations
        (with moves) on the subsample alone; the full data start from the q found there.

        The subsample phase fits the posterior of the M points themselves, not of M points weighted N / M: scaled
        statistics would pretend each subsample point were N / M points, which makes every extra component (and
        the overfitted covariances of small ones) look N / M times better supported than the data support, so
        merges would never be accepted there. Fewer points support fewer components, so the subsample phase
        errs towards a small K; splits and births on the full data add what the full data support.
        The subsample is drawn from the global row ids (:meth:`_global_rows`), so every rank of a multi-process
        fit seeds identically, and as one process does.
        """
        x = self._x
        generator = torch.Generator().manual_seed(int(seed))
        m_total = min(self._n_total, self.init_subsample or max(20 * self.truncation, 5000))
        x_sub = self._global_rows(torch.randperm(self._n_total, generator=generator)[:m_total])
        centred = x_sub - self._shift
        # seeding needs a few points per component, not the whole subsample (the subsample is in random order)
        seeds = kmeanspp_seeds(centred[: max(10 * self.truncation, 2000)], self.truncation, generator)  # (T,)
        nearest = nearest_centre(centred, centred[seeds])                          # (M,)
        sub = DPGMM(**{**self._options(), "max_iter": max(1, self.init_iter), "warm_start": "none"})
        sub._attach(x_sub, self.family, self._shift, self._prior, n_total=x_sub.shape[0], stats_scale=1.0)
        sub._seed = self._seed
        ones = torch.ones(x_sub.shape[0], 1, dtype=torch.float32, device=x.device)
        sub._start(ones, nearest[:, None])
        # Merge the hard k-means++ partition down before the first E-step: merges need only the statistics, and
        # T seeds are usually far more components than the subsample supports (the E-step costs O(K d^2)).
        cheap = tuple(m for m in ("merge", "delete") if m in self.moves)
        for _ in range(INIT_MERGE_ROUNDS if cheap else 0):
            if not sub.move_round(cheap):
                break
        if self.init_iter > 0:
            sub._iterate(self.init_iter)
        self._state = FitState(sub._state.stats, sub._state.q, sub._state.terms, sub._state.value,
                               torch.empty(0), torch.empty(0, dtype=torch.int64), None,
                               torch.arange(self.truncation, device=x.device))
        for name, counts in sub.moves_.items():
            for key in counts:
                self.moves_[name][key] += counts[key]
        self.move_seconds_ += sub.move_seconds_
        self._prior = sub._prior

    # -- iterations ------------------------------------------------------------------------------------------
    def live_components(self) -> torch.Tensor:
        """Ids (K,) of the components that hold any responsibility (the only ones the E-step scores)."""
        return (self._state.stats.counts > 0).nonzero()[:, 0]

    def logit_operator(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The E-step operator for components ``ids`` under the current q."""
        q = self._state.q
        e_log_pi = self._prior.weight_prior.expected_log_weights(q.weights)[ids]
        return self.family.logit_operator(q.components.rows(ids), e_log_pi)

    def _e_step(self, live: torch.Tensor | None = None) -> None:
        live = self.live_components() if live is None else live
        state = self._state
        # the responsibilities this E-step replaces, if they belong to these points (the cold start's full-data phase
        # begins with those of the subsample only)
        known = state.values is not None and state.values.shape[0] == self._x.shape[0]
        result = self._sweeper.estep(self.logit_operator(live), live, self.topk,
                                     (state.values, state.index) if known else None)
        stats = self._reduce_stats(result.raw, result.entropy)
        moved = self._allreduce(result.moved.reshape(1)) if known else None
        self._moved_share = None if moved is None else float(moved[0]) / self._n_total
        origin = torch.where(stats.counts > 0, state.origin, -1)
        self._state = FitState(stats, state.q, state.terms, state.value, result.values, result.index,
                               result.log_norm, origin)

    def _m_step(self) -> None:
        state = self._state
        cand = self._evaluate(state.stats, state.q)
        if self.prior_scale_update:
            occupied = state.stats.counts > 0
            scale = updated_scale(self.family, cand.q.components, self._prior, occupied)
            self._prior = self._prior.with_scale(self.family, scale)
            cand = self._evaluate(state.stats, cand.q)
        self._state = replace(state, q=cand.q, terms=cand.terms, value=cand.value)
        self.elbo_trace_.append(cand.value)

    def _elbo(self) -> float:
        return self._state.value

    def _change(self) -> float | None:
        """Mean total-variation distance between each point's responsibilities before and after the last E-step:
        the share of the assignment mass that moved (0: nothing changed, 1: every point changed completely). It is
        a property of the partition, so it means the same on every data set, unlike a change of the ELBO, whose
        size per point depends on the units of the features and on d."""
        return self._moved_share

    def _after_iteration(self, iteration: int, value: float, converging: bool) -> tuple[float, bool]:
        if not self.moves:
            return value, False
        # while moves are being accepted the partition is still changing, so the next round comes sooner
        every = min(GROWING_MOVE_EVERY, self.move_every) if self._last_round_changed else self.move_every
        if iteration - self._last_round_iteration < every and not converging:
            return value, False
        start = time.perf_counter()
        self._move_round += 1
        changed = self.mover.run(self._move_round)
        self.move_seconds_ += time.perf_counter() - start
        self._last_round_iteration, self._last_round_changed = iteration, changed
        return self._state.value, changed

    # -- finalisation ----------------------------------------------------------------------------------------
    def _finalize(self) -> float:
        """Reset components with N_k < ``min_size`` to the prior, sort by N_k (largest first), refresh q.

        Pruning: a component with final N_k < ``min_size`` loses its responsibilities, and the affected rows are
        renormalised over their remaining top-k entries (removed entries stay in ``resp_index`` with value 0); a
        component is kept anyway if removing it would leave some point with no responsibility at all.
        Permutation convention: ``permutation_[old] = new`` for every initial id whose component survives in slot
        ``new``, where old ids are the ids of the fit's initial state (warm start: the previous round's ids; cold
        start: the slots after the subsample phase); ``permutation_[old] = -1`` when it was reset, emptied, or
        merged into another component (the survivor of a merge keeps its id). Components born during the fit
        (split children, births) have no predecessor. Kept components take new ids 0..K-1 by decreasing N_k,
        reset ones the ids K..T-1. The returned ELBO is that of the final, sorted and pruned state.
        """
        state = self._state
        self.elbo_before_finalize_ = state.value
        counts = state.stats.counts
        keep = counts >= self.min_size                                              # (T,)
        values, index = state.values, state.index
        orphans = ~(keep[index] & (values > 0)).any(1)
        keep[index[orphans, 0]] = True
        keep = self._allreduce(keep.to(torch.float64)) > 0
        values, index, stats = self.mover.remove_entries(~keep, values, index, state.stats)
        stats = SuffStats(stats.counts * keep, stats.sum_x * _rows_mask(keep, stats.sum_x),
                          stats.sum_xx * _rows_mask(keep, stats.sum_xx), stats.entropy)
        order = torch.argsort(torch.where(keep, stats.counts, -1.0), descending=True, stable=True)   # new -> old
        new_id = torch.empty_like(order)
        new_id[order] = torch.arange(self.truncation, device=order.device)
        prior = self._prior
        if not prior.shared:
            base = self._base_prior.components
            prior = replace(prior, components=prior.components.where(keep, base).rows(order))
            self._prior = prior
        stats = stats.permuted(order)
        origin = torch.where(keep, state.origin, -1)[order]                        # new slot -> old id
        cand = self._evaluate(stats, state.q)
        self._state = FitState(stats, cand.q, cand.terms, cand.value, values, new_id[index], state.log_norm, origin)
        permutation = torch.full((self.truncation,), -1, dtype=torch.int64)
        kept_slots = (origin >= 0).nonzero()[:, 0].cpu()
        permutation[origin[kept_slots].cpu()] = kept_slots
        self.permutation_ = permutation.numpy()
        self._set_fitted_attributes()
        self._warn_cluster_count()
        return cand.value

    def _set_fitted_attributes(self) -> None:
        state = self._state
        q = state.q
        self.weights_ = self._prior.weight_prior.expected_weights(q.weights)
        self.means_ = q.components.m + self._shift
        self.precisions_ = self.family.expected_precision(q.components)
        self.mean_precision_ = q.components.kappa
        self.counts_ = state.stats.counts
        self.alpha_ = expected_alpha(self._prior, q)
        self.prior_scale_ = self._prior.scale if self._prior.shared else None
        self.resp_values_, self.resp_index_ = state.values, state.index
        self.labels_ = state.index[:, 0]
        self.gemm_seconds_ = self._sweeper.gemm_seconds
        self.state_ = {
            "version": STATE_VERSION,
            "resp_values": state.values.cpu(),
            "resp_index": state.index.cpu(),
            "n_points": int(self._x.shape[0]),
            "dim": int(self._x.shape[1]),
            "truncation": self.truncation,
            **self._prior.weight_prior.state(q.weights),   # e.g. q(alpha), carried to the next warm start
        }

    def predictor(self) -> dict:
        """What :func:`predict_responsibilities` needs to score new points under the fitted q (CPU tensors):
        the covariance family, the E-step operator of the components holding any responsibility, their ids (K,)
        and the data shift. Small (K d^2 floats for full covariance) and checkpointable."""
        live = self.live_components()
        return {"covariance": self.covariance, "dim": int(self._x.shape[1]), "factors": self.factors, "live": live.cpu(),
                "shift": self._shift.cpu(), "operator": [t.cpu() for t in self.logit_operator(live)],
                "predictive": self._predictive(live)}

    def _predictive(self, live: torch.Tensor) -> dict:
        """What :func:`.predictive.new_component_probability` needs: the q rows (centred coordinates) and
        log E[pi_k] of the live components, the prior row a new component starts from (the base prior, without the
        pseudo-counts of ``warm_start="prior"``) and the log of the stick mass the live components leave over."""
        def rows(c: Components, ids: torch.Tensor) -> dict:
            return {f.name: getattr(c, f.name)[ids].cpu() for f in fields(c)}
        weights = self.weights_.to(torch.float64).clone()
        prior = self._prior if self._prior.shared else self._base_prior
        last = self.truncation - 1
        if bool((live == last).any()):
            # The last slot holds the whole tail of the sticks, prod_{j<T-1}(1 - v_j). When it is live, split that
            # tail as the untruncated DP would: a stick v ~ Beta(1 + N_last, E[alpha]) for the component, the rest,
            # E[1 - v] = E[alpha] / (1 + N_last + E[alpha]), for a new one; the weights still sum to 1.
            count, e_alpha = float(self._state.stats.counts[last]), float(self.alpha_)
            tail = float(weights[last])
            left = tail * e_alpha / (1.0 + count + e_alpha)
            weights[last] = tail - left
        else:
            left = float(1.0 - weights[live].sum())   # the dead components' mass, the tail among it
        left = max(left, 1e-300)
        return {"components": rows(self._state.q.components, live), "log_weights": weights[live].log().cpu(),
                "prior": rows(prior.components, torch.zeros(1, dtype=torch.int64, device=live.device)),
                "log_new_weight": math.log(left)}

    def _warn_cluster_count(self) -> None:
        k_active = int(active_mask(self.weights_.cpu().numpy()).sum())
        if k_active <= 2:
            scale = self._prior.scale if self._prior.shared else "per component"
            warnings.warn(ClusterCountWarning(
                f"the DP-GMM ended with only K_active={k_active} component(s). If the features hold more clusters, "
                f"the prior's expected cluster covariance is too wide for them: lower --prior-scale (now {scale})"
                + (", use --covariance full" if self.covariance != "full" else "")
                + ", or check the features (whitening, --pca-dim)"))
        elif k_active >= self.truncation:
            warnings.warn(ClusterCountWarning(
                f"the DP-GMM ended with every one of its T={self.truncation} components active, so the truncation "
                "capped K; raise --truncation, or raise --prior-scale if the clusters are finer than expected"))

    # -- direct access to a state (diagnostics, tests) -------------------------------------------------------
    def start_from(self, x: torch.Tensor, resp_values: torch.Tensor, resp_index: torch.Tensor) -> "DPGMM":
        """Set the state to given top-k responsibilities (N, k) of x (N, d) and its M-step, without iterating, so
        single move rounds (:meth:`move_round`) can be run and inspected. ``elbo_`` is then that state's ELBO."""
        x = check_features(x)
        self._seed, self.gemm_seconds_, self.elbo_comparable_, self.init_elbo_ = 0, 0.0, True, None
        self._setup(x)
        self._start(resp_values.to(x.device, torch.float32), resp_index.to(x.device, torch.int64))
        return self

    def move_round(self, moves: Iterable[str] | None = None) -> bool:
        """One round of ``moves`` (default: this model's) on the current state; returns whether one was accepted."""
        self._move_round += 1
        return self.mover.run(self._move_round, None if moves is None else parse_moves(list(moves)))

    @property
    def elbo_(self) -> float:
        """The ELBO of the current state."""
        return self._state.value

    # -- entry for posteriors fitted elsewhere (Pyro SVI, ``pyro_model.fit_svi``) ----------------------------
    def svi_start(self, x: torch.Tensor, *, seed: int = 0, warm_state: Any = None
                  ) -> tuple[DPGMMParams, DPGMMPrior, torch.Tensor, torch.Tensor]:
        """The start a CAVI fit would iterate from, for SVI: (q, prior, shift, live).

        Runs :meth:`fit`'s initialisation (cold: k-means++ seeding and CAVI with moves on the subsample; warm: the
        M-step of the previous responsibilities), scales the statistics to all N points (the cold start's come from
        the subsample) and takes one closed-form M-step. q and the prior are in coordinates centred on ``shift``
        (d,) (the data mean); ``live`` (K,) are the ids of the components holding any responsibility.
        """
        x = check_features(x)
        self._fit_start = time.perf_counter()
        self._initialize(x, seed, warm_state)
        stats = self._state.stats
        stats = stats.scaled(self._n_total / float(stats.counts.sum()))
        q = m_step(self.family, stats, self._prior, self._state.q)
        return q, self._prior, self._shift.double(), (stats.counts > 0).nonzero()[:, 0]

    def svi_finish(self, q: DPGMMParams, history: list[float], converged: bool) -> "DPGMM":
        """Finish from a posterior q fitted after :meth:`svi_start` (same coordinates): one top-k E-step over all
        T components, the closed-form M-step, then the same sort/prune as :meth:`fit`. ``history`` is stored as
        given (SVI's per-step ELBO estimates)."""
        state = self._state
        # only q and the origins of this state are read by the E-step; the responsibilities it replaces are those
        # of the start, so the change is not a convergence signal here
        self._state = FitState(None, q, None, math.nan, None, None, None, state.origin)
        self._e_step(live=torch.arange(self.truncation, device=self._x.device))
        self._m_step()
        self.history_, self.n_iter_, self.converged_ = list(history), len(history), bool(converged)
        self.lower_bound_ = self._finalize()
        self.fit_seconds_ = time.perf_counter() - self._fit_start
        return self

    def params_in_input_coordinates(self) -> DPGMMParams:
        """The fitted q with means in the input coordinates (to set a Pyro guide from it)."""
        q = self._state.q
        return replace(q, components=replace(q.components, m=q.components.m + self._shift))

    @property
    def prior_in_input_coordinates(self) -> DPGMMPrior:
        return _shift_prior(self._prior, self._shift.double())


def _shift_prior(prior: DPGMMPrior, shift: torch.Tensor) -> DPGMMPrior:
    """The prior with its means moved by ``shift`` (d,) (to or from coordinates centred on the data mean)."""
    def moved(c: Components | None) -> Components | None:
        return None if c is None else replace(c, m=c.m + shift)
    return replace(prior, components=moved(prior.components), unit=moved(prior.unit))


def _rows_mask(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return keep.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)



def predict_responsibilities(predictor: dict, x: torch.Tensor, topk: int,
                             allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k responsibilities (values, index) (B, k) of new points x (B, d) under a fitted q (``DPGMM.predictor``),
    the E-step a fit would run on them; ``allowed`` (T,) bool restricts the components that may be chosen.
    The points do not change q: this is the posterior predictive assignment used for targets on the fly
    (``--two-views``)."""
    family = make_family(predictor["covariance"], predictor["dim"], factors=predictor.get("factors"))
    device = x.device
    live = predictor["live"].to(device)
    op = tuple(t.to(device) for t in predictor["operator"])
    xc = x.float() - predictor["shift"].to(device)
    logits = family.logits(op, xc, family.design(xc) if family.logits_need_design else None)     # (B, K)
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(device)[live][None, :], float("-inf"))
    k = min(topk, live.shape[0])
    top, pos = torch.topk(logits, k, dim=1, sorted=True)
    return torch.softmax(top, dim=1), live[pos]
