"""Component lineage across clustering rounds: which clusters were kept, split, merged, born or died.

Every round the clustering backend assigns the *same* N points (same order every round) top-k
responsibilities over its T components. Lineage compares two consecutive rounds through the
**overlap matrix**

    M[i, j] = sum_n r_prev[n, i] * r_new[n, j]        shape (T_prev, T_new)

i.e. the responsibility mass that old component i and new component j share. With hard labels (k=1,
k-means) M[i, j] is simply the number of points labelled i before and j now. Each row of M sums to the
mass of old component i (``out_mass[i] = sum_j M[i, j]``, about N * weight_i), each column to the mass of
new component j (``in_mass[j] = sum_i M[i, j]``).

Rules (read by :func:`lineage_events`; "active" means ``weight >= active_threshold``, default
``clustering.base.active_threshold(T)``, the
same cut as K_active). Fractions are always taken of the component's *whole* mass in M (all partners,
active or not), and every comparison is inclusive (``>=`` / ``<`` exactly as written):

- **kept** ``[i, j]``: active old i and active new j with ``M[i, j] >= 0.5 * out_mass[i]`` *and*
  ``M[i, j] >= 0.5 * in_mass[j]`` -- a mutual majority. It is one-to-one except at an exact 50/50 tie,
  where both halves qualify. A component that split or absorbed another can still be kept with its
  majority partner (kept and split/merged are not exclusive).
- **split** ``[i, [j, ...]]``: active old i with at least two active children, a child j being one that
  gets ``>= share * out_mass[i]`` from i *or* takes the majority of its own mass from i
  (``M[i, j] >= 0.5 * in_mass[j]``, i fragmenting into small pieces); children by decreasing share of i
  (ties: lower id first).
- **merged** ``[[i, ...], j]``: active new j with at least two active parents, a parent i being one that
  gives ``>= share * in_mass[j]`` to j *or* sends the majority of its own mass there
  (``M[i, j] >= 0.5 * out_mass[i]``, i being absorbed); parents by decreasing share of j.
- **born** ``j``: active new j receiving ``< share * in_mass[j]`` from all active old components together
  (its points came from nothing or from components too small to count as active).
- **died** ``i``: active old i sending ``< share * out_mass[i]`` to all active new components together
  (its points went to inactive components).

An active component with no mass at all in M (possible only if its weight comes from the prior, not from
points) has fraction 0 and so counts as died / born.

The rules are **identity-free**: they never compare component ids across rounds, only shared points, so
they work for k-means, whose ids are renumbered every round. For the DP backend with warm starts ids do
carry identity (``ClusterResult.permutation[old_id] == new_id``), and the ``kept`` pairs should then
mostly be ``(i, permutation[i])``; :func:`round_lineage` reports how many are (``n_kept_as_permuted``)
when the new result carries a permutation.

Responsibilities loaded from a snapshot are float16, so rows sum to 1 only to ~1e-3; M is accumulated
in float64 and fractions use M's own row/column sums, so nothing needs renormalising.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from bayes_dc.clustering.base import active_threshold as _active_threshold

# Products per chunk in :func:`overlap`: bounds the temporary (row, col, value) arrays to ~100 MB
# however large N is, while keeping each chunk fully vectorised.
_CHUNK_PRODUCTS = 1 << 22

# Mutual-majority cut for "kept": more mass than all other partners together, on both sides.
KEEP_FRACTION = 0.5

# Up to this many (old, new) cells, M is accumulated densely (32 MB of float64) before going sparse.
_DENSE_CELLS = 1 << 22

# Largest overlap entries reported by :func:`round_lineage` (enough for a plot, small in JSON).
TOP_OVERLAP = 200


def overlap(prev_values: np.ndarray, prev_index: np.ndarray, new_values: np.ndarray, new_index: np.ndarray,
            t_prev: int, t_new: int) -> sp.csr_matrix:
    """Shared responsibility mass of every (old, new) component pair, from top-k arrays.

    Args:
        prev_values: (N, k_prev) float (float16 from a snapshot is fine), top-k responsibilities, previous round.
        prev_index: (N, k_prev) int, their component ids in [0, t_prev).
        new_values: (N, k_new) float, top-k responsibilities, new round (same N points, same order).
        new_index: (N, k_new) int, their component ids in [0, t_new).
        t_prev, t_new: number of components T of each round.

    Returns:
        (t_prev, t_new) float64 CSR matrix, ``M[i, j] = sum_n r_prev[n, i] * r_new[n, j]``; zero entries not stored.

    Never densifies the (N, T) responsibilities: each point contributes its k_prev * k_new products, which
    are summed per (i, j) cell -- as COO duplicates, or by a flat bincount when M itself is small (at most
    ``_DENSE_CELLS`` cells) -- in chunks of points, so temporary memory stays bounded whatever N is, and the
    time is linear in N k_prev k_new.
    """
    prev_values, prev_index = _as_2d(prev_values, "prev_values"), _as_2d(prev_index, "prev_index")
    new_values, new_index = _as_2d(new_values, "new_values"), _as_2d(new_index, "new_index")
    if prev_values.shape != prev_index.shape or new_values.shape != new_index.shape:
        raise ValueError(f"values/index shapes differ: prev {prev_values.shape} vs {prev_index.shape}, "
                         f"new {new_values.shape} vs {new_index.shape}")
    n_points = prev_values.shape[0]
    if new_values.shape[0] != n_points:
        raise ValueError(f"rounds cover different points: N_prev={n_points}, N_new={new_values.shape[0]} "
                         "(lineage needs the same points in the same order)")
    for name, index, t in (("prev_index", prev_index, t_prev), ("new_index", new_index, t_new)):
        if index.size and (index.min() < 0 or index.max() >= t):
            raise ValueError(f"{name} must lie in [0, {t}), got [{index.min()}, {index.max()}]")

    k_prev, k_new = prev_values.shape[1], new_values.shape[1]
    chunk = max(1, _CHUNK_PRODUCTS // max(1, k_prev * k_new))
    # Small M (the DP case, T ~ 300): a flat bincount into a dense (t_prev * t_new) accumulator is ~10x
    # faster than COO summation. Large M (k-means with many clusters): stay sparse throughout.
    dense_total = np.zeros(t_prev * t_new) if t_prev * t_new <= _DENSE_CELLS else None
    total = sp.csr_matrix((t_prev, t_new), dtype=np.float64)
    for start in range(0, n_points, chunk):
        stop = min(start + chunk, n_points)
        # (n, k_prev, 1) * (n, 1, k_new): all products of one point's old and new top-k entries.
        products = (prev_values[start:stop, :, None].astype(np.float64)
                    * new_values[start:stop, None, :].astype(np.float64))
        rows = np.broadcast_to(prev_index[start:stop, :, None], products.shape)
        cols = np.broadcast_to(new_index[start:stop, None, :], products.shape)
        # Padding slots of a top-k (value 0) add nothing; dropping them keeps M sparse and the arrays small.
        keep = products > 0
        if dense_total is not None:
            flat = rows[keep].astype(np.int64) * t_new + cols[keep]
            dense_total += np.bincount(flat, weights=products[keep], minlength=dense_total.size)
            continue
        part = sp.coo_matrix((products[keep], (rows[keep], cols[keep])), shape=(t_prev, t_new)).tocsr()
        total = total + part  # CSR addition sums duplicate (i, j) pairs
    if dense_total is not None:
        total = sp.csr_matrix(dense_total.reshape(t_prev, t_new))
    total.sum_duplicates()
    total.eliminate_zeros()
    return total


def lineage_events(M: sp.spmatrix | np.ndarray, prev_weights: np.ndarray, new_weights: np.ndarray, *,
                   active_threshold: float | None = None, share: float = 0.2) -> dict:
    """Kept / split / merged / born / died components between two rounds (rules in the module docstring).

    Args:
        M: (T_prev, T_new) overlap matrix from :func:`overlap` (sparse or dense).
        prev_weights: (T_prev,) mixture weights of the previous round (decide which components are active).
        new_weights: (T_new,) mixture weights of the new round.
        active_threshold: weight at or above which a component is active.
        share: minimum fraction of a component's mass that counts as a real split/merge branch, and below
            which a component counts as born/died.

    Returns:
        JSON-serialisable dict: ``kept`` [[i, j], ...], ``split`` [[i, [j, ...]], ...], ``merged``
        [[[i, ...], j], ...], ``born`` [j, ...], ``died`` [i, ...] (all sorted by the leading id),
        ``n_kept``, ``n_split``, ``n_merged``, ``n_born``, ``n_died``, ``n_active_prev``, ``n_active_new``,
        and the ``active_threshold`` and ``share`` used.
    """
    M = sp.coo_matrix(M, dtype=np.float64)
    prev_weights = np.asarray(prev_weights, dtype=np.float64).ravel()
    new_weights = np.asarray(new_weights, dtype=np.float64).ravel()
    if M.shape != (prev_weights.size, new_weights.size):
        raise ValueError(f"M has shape {M.shape} but the weights give (T_prev, T_new) = "
                         f"({prev_weights.size}, {new_weights.size})")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1], got {share}")

    if active_threshold is None:
        active_threshold = _active_threshold(max(prev_weights.shape[0], new_weights.shape[0]))
    active_prev = prev_weights >= active_threshold
    active_new = new_weights >= active_threshold
    M.sum_duplicates()
    rows, cols, mass = M.row.astype(np.int64), M.col.astype(np.int64), M.data
    out_mass = np.bincount(rows, weights=mass, minlength=M.shape[0])  # (T_prev,) whole mass of old i
    in_mass = np.bincount(cols, weights=mass, minlength=M.shape[1])   # (T_new,) whole mass of new j
    # Fractions per stored entry; a component with no mass gets 0 (it then counts as died/born).
    frac_of_old = mass / np.where(out_mass[rows] > 0, out_mass[rows], np.inf)
    frac_of_new = mass / np.where(in_mass[cols] > 0, in_mass[cols], np.inf)
    both_active = active_prev[rows] & active_new[cols]

    kept_mask = both_active & (frac_of_old >= KEEP_FRACTION) & (frac_of_new >= KEEP_FRACTION)
    order = np.lexsort((cols[kept_mask], rows[kept_mask]))
    kept = [[int(i), int(j)] for i, j in zip(rows[kept_mask][order], cols[kept_mask][order])]

    # A branch counts from either side: a real share of the parent, or the majority of the child. The
    # second clause catches fragmentation and absorption (e.g. 40 small components collapsing into 3: no
    # old one is a real share of its new home, but each sends its majority there).
    split_edge = both_active & ((frac_of_old >= share) | (frac_of_new >= KEEP_FRACTION))
    merge_edge = both_active & ((frac_of_new >= share) | (frac_of_old >= KEEP_FRACTION))
    split = _branches(rows, cols, frac_of_old, split_edge)
    merged = [[parents, j] for j, parents in _branches(cols, rows, frac_of_new, merge_edge)]

    # Mass each component exchanges with the *active* side of the other round, as a fraction of its own.
    to_active = np.bincount(rows, weights=np.where(active_new[cols], mass, 0.0), minlength=M.shape[0])
    from_active = np.bincount(cols, weights=np.where(active_prev[rows], mass, 0.0), minlength=M.shape[1])
    died_mask = active_prev & ((to_active < share * out_mass) | (out_mass <= 0))
    born_mask = active_new & ((from_active < share * in_mass) | (in_mass <= 0))
    died = [int(i) for i in np.flatnonzero(died_mask)]
    born = [int(j) for j in np.flatnonzero(born_mask)]

    return {
        "kept": kept, "split": split, "merged": merged, "born": born, "died": died,
        "n_kept": len(kept), "n_split": len(split), "n_merged": len(merged),
        "n_born": len(born), "n_died": len(died),
        "n_active_prev": int(active_prev.sum()), "n_active_new": int(active_new.sum()),
        "active_threshold": float(active_threshold), "share": float(share),
    }


def round_lineage(prev_result_arrays: Any, new_result_arrays: Any, *, active_threshold: float | None = None,
                  share: float = 0.2) -> dict:
    """Lineage between two rounds given as ClusterResults, dicts, or loaded snapshot npz files.

    Args:
        prev_result_arrays, new_result_arrays: anything with ``labels`` (N,), ``resp_values`` (N, k),
            ``resp_index`` (N, k) and ``weights`` (T,) as attributes (ClusterResult) or keys (dict,
            ``np.load`` of a ``clusters/round_XXXX.npz`` snapshot, float16 responsibilities).
        active_threshold, share: passed to :func:`lineage_events`.

    Returns:
        :func:`lineage_events`'s dict plus ``top_overlap``: up to 200 largest entries of M as
        ``[i, j, mass_fraction_of_i]`` (largest mass first), and, when the new round carries a
        ``permutation`` (DP warm start), ``n_kept_as_permuted``: kept pairs with ``j == permutation[i]``.
    """
    prev_labels, new_labels = _field(prev_result_arrays, "labels"), _field(new_result_arrays, "labels")
    if np.shape(prev_labels)[0] != np.shape(new_labels)[0]:
        raise ValueError(f"rounds cover different points: {np.shape(prev_labels)[0]} vs {np.shape(new_labels)[0]}")
    prev_weights = np.asarray(_field(prev_result_arrays, "weights"), dtype=np.float64)
    new_weights = np.asarray(_field(new_result_arrays, "weights"), dtype=np.float64)
    M = overlap(_field(prev_result_arrays, "resp_values"), _field(prev_result_arrays, "resp_index"),
                _field(new_result_arrays, "resp_values"), _field(new_result_arrays, "resp_index"),
                prev_weights.size, new_weights.size)
    events = lineage_events(M, prev_weights, new_weights, active_threshold=active_threshold, share=share)

    coo = M.tocoo()
    out_mass = np.asarray(M.sum(axis=1)).ravel()
    # Largest mass first; ties broken by (i, j) so the list is deterministic.
    order = np.lexsort((coo.col, coo.row, -coo.data))[:TOP_OVERLAP]
    events["top_overlap"] = [[int(coo.row[e]), int(coo.col[e]), float(coo.data[e] / out_mass[coo.row[e]])]
                             for e in order]

    permutation = _field(new_result_arrays, "permutation", default=None)
    if permutation is not None:
        permutation = np.asarray(permutation)
        events["n_kept_as_permuted"] = int(sum(1 for i, j in events["kept"]
                                               if i < permutation.size and permutation[i] == j))
    return events


def _branches(parent: np.ndarray, child: np.ndarray, fraction: np.ndarray, mask: np.ndarray) -> list:
    """Group masked entries by ``parent``; return ``[[parent, [children by decreasing fraction]], ...]``
    for parents with at least two children, sorted by parent id."""
    parent, child, fraction = parent[mask], child[mask], fraction[mask]
    order = np.lexsort((child, -fraction, parent))
    parent, child = parent[order], child[order]
    bounds = np.flatnonzero(np.diff(parent)) + 1
    return [[int(p[0]), [int(c) for c in ch]]
            for p, ch in zip(np.split(parent, bounds), np.split(child, bounds)) if p.size >= 2]


def _as_2d(array: Any, name: str) -> np.ndarray:
    """(N,) -> (N, 1) so hard labels can be passed directly; anything else must already be (N, k)."""
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be (N, k), got shape {array.shape}")
    return array


_MISSING = object()


def _field(source: Any, key: str, default: Any = _MISSING) -> Any:
    """``source[key]`` for dicts / npz files, ``source.key`` for ClusterResult-like objects."""
    if isinstance(source, Mapping) or hasattr(source, "files"):  # np.load(...npz) is an NpzFile, not a Mapping
        keys = source.keys() if isinstance(source, Mapping) else source.files
        if key in keys:
            return source[key]
    elif hasattr(source, key):
        return getattr(source, key)
    if default is _MISSING:
        raise KeyError(f"round arrays lack {key!r} (need labels, resp_values, resp_index, weights)")
    return default
