"""Component lineage: the overlap matrix against a dense reference, and each event rule on hand-made rounds."""
import json

import numpy as np
import pytest

from bayes_dc.evaluation import lineage
from bayes_dc.clustering.base import ClusterResult
from bayes_dc.evaluation.lineage import lineage_events, overlap, round_lineage


def _random_topk(rng, n, k, t):
    """(n, k) distinct component ids per row and positive values summing to 1 per row."""
    index = np.argsort(rng.random((n, t)), axis=1)[:, :k]
    values = rng.random((n, k)) + 0.05
    return values / values.sum(axis=1, keepdims=True), index


def _densify(values, index, t):
    dense = np.zeros((values.shape[0], t))
    np.put_along_axis(dense, index, values, axis=1)
    return dense


def _hard(labels, t):
    """Round arrays for hard labels (k=1, k-means style); weights are the cluster fractions."""
    labels = np.asarray(labels)
    return {"labels": labels, "resp_values": np.ones((labels.size, 1), np.float32),
            "resp_index": labels[:, None], "weights": np.bincount(labels, minlength=t) / labels.size}


def _labels(*sizes_and_ids):
    """Concatenate blocks: _labels((300, 0), (200, 1)) -> 300 zeros then 200 ones."""
    return np.concatenate([np.full(size, cid) for size, cid in sizes_and_ids])


# ---------------------------------------------------------------- overlap

@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("dense_cells", [None, 0])
def test_overlap_matches_dense_einsum(monkeypatch, chunk, dense_cells):
    if chunk is not None:  # force several point chunks so their summation is exercised too
        monkeypatch.setattr(lineage, "_CHUNK_PRODUCTS", chunk)
    if dense_cells is not None:  # force the sparse (COO) accumulation used for very large T
        monkeypatch.setattr(lineage, "_DENSE_CELLS", dense_cells)
    rng = np.random.default_rng(0)
    n, t_prev, t_new = 200, 11, 9
    pv, pi = _random_topk(rng, n, 3, t_prev)
    nv, ni = _random_topk(rng, n, 3, t_new)
    M = overlap(pv, pi, nv, ni, t_prev, t_new)
    reference = np.einsum("ni,nj->ij", _densify(pv, pi, t_prev), _densify(nv, ni, t_new))
    assert M.shape == (t_prev, t_new) and M.format == "csr"
    np.testing.assert_allclose(M.toarray(), reference, rtol=1e-12, atol=1e-12)
    assert np.isclose(M.sum(), n)  # every point contributes exactly its unit mass


def test_overlap_rejects_mismatched_points_and_bad_ids():
    v, i = np.ones((5, 1)), np.zeros((5, 1), int)
    with pytest.raises(ValueError, match="different points"):
        overlap(v, i, v[:4], i[:4], 2, 2)
    with pytest.raises(ValueError, match="must lie in"):
        overlap(v, i + 3, v, i, 2, 2)


# ---------------------------------------------------------------- event rules (hard labels)

def test_renamed_ids_are_all_kept():
    prev = _labels((300, 0), (250, 1), (250, 2), (200, 3))
    permutation = np.array([2, 0, 3, 1])
    new = permutation[prev]  # same partition, k-means-style renumbering
    out = round_lineage(_hard(prev, 4), {**_hard(new, 4), "permutation": permutation})
    assert out["kept"] == [[0, 2], [1, 0], [2, 3], [3, 1]]
    assert out["n_kept_as_permuted"] == 4
    assert (out["split"], out["merged"], out["born"], out["died"]) == ([], [], [], [])
    assert out["n_active_prev"] == out["n_active_new"] == 4
    assert out["top_overlap"][0] == [0, 2, 1.0]  # largest block: old 0 -> new 2, all of old 0's mass


def test_split_into_two_halves():
    prev = _labels((400, 0), (300, 1), (300, 2))
    new = _labels((200, 4), (200, 5), (300, 1), (300, 2))  # old 0 -> halves 4 and 5
    out = round_lineage(_hard(prev, 6), _hard(new, 6))
    assert out["split"] == [[0, [4, 5]]]
    assert out["n_split"] == 1 and out["merged"] == [] and out["born"] == [] and out["died"] == []
    assert [1, 1] in out["kept"] and [2, 2] in out["kept"]


def test_two_clusters_merged():
    prev = _labels((300, 0), (200, 1), (500, 2))
    new = _labels((300, 3), (200, 3), (500, 0))  # old 0 and 1 become new 3
    out = round_lineage(_hard(prev, 4), _hard(new, 4))
    assert out["merged"] == [[[0, 1], 3]]  # parents by decreasing share: 60 % then 40 %
    assert out["split"] == [] and out["born"] == [] and out["died"] == []
    assert out["kept"] == [[0, 3], [2, 0]]  # the majority parent is still "kept" with the merged cluster


def test_born_from_inactive_components():
    # At a 5 % threshold, old 2, 3, 4 (4 % each) are inactive; their points form active new 2 (12 %).
    prev = _labels((500, 0), (380, 1), (40, 2), (40, 3), (40, 4))
    new = _labels((500, 0), (380, 1), (120, 2))
    out = round_lineage(_hard(prev, 5), _hard(new, 5), active_threshold=0.05)
    assert out["born"] == [2] and out["n_born"] == 1
    assert out["died"] == [] and out["merged"] == []  # inactive parents do not make a merge
    assert out["n_active_prev"] == 2 and out["n_active_new"] == 3


def test_cluster_vanishing_dies():
    # Old 2 (12 %) dissolves into three new components of 4 % each, all inactive at a 5 % threshold.
    prev = _labels((500, 0), (380, 1), (120, 2))
    new = _labels((500, 0), (380, 1), (40, 2), (40, 3), (40, 4))
    out = round_lineage(_hard(prev, 5), _hard(new, 5), active_threshold=0.05)
    assert out["died"] == [2] and out["n_died"] == 1
    assert out["born"] == [] and out["split"] == []  # inactive children do not make a split
    assert out["kept"] == [[0, 0], [1, 1]]


def test_soft_spread_split_depends_on_share_unless_child_is_all_parent():
    # Every point of old 0 is 60 % new 0, 40 % new 1 (k=2); old 1 stays put as new 2.
    n0, n1 = 400, 600
    prev = _hard(_labels((n0, 0), (n1, 1)), 3)
    values = np.vstack([np.tile([0.6, 0.4], (n0, 1)), np.tile([1.0, 0.0], (n1, 1))])
    index = np.vstack([np.tile([0, 1], (n0, 1)), np.tile([2, 0], (n1, 1))])
    new = {"labels": index[:, 0], "resp_values": values, "resp_index": index,
           "weights": np.array([0.24, 0.16, 0.6])}
    loose = round_lineage(prev, new, share=0.2)
    assert loose["split"] == [[0, [0, 1]]]
    assert loose["kept"] == [[0, 0], [1, 2]]
    # At share 0.5 the 40 % branch still counts: new 1 is made of old 0's points only (its majority parent).
    strict = round_lineage(prev, new, share=0.5)
    assert strict["split"] == [[0, [0, 1]]] and strict["kept"] == loose["kept"]
    # ...but not when new 1 is mostly made of other points: then only the share decides.
    values2 = np.vstack([np.tile([0.6, 0.4], (n0, 1)), np.tile([0.7, 0.3], (n1, 1))])
    new2 = dict(new, resp_values=values2, resp_index=np.vstack([np.tile([0, 1], (n0, 1)), np.tile([2, 1], (n1, 1))]))
    assert 0 not in [i for i, _ in round_lineage(prev, new2, share=0.5)["split"]]
    assert [0, [0, 1]] in round_lineage(prev, new2, share=0.2)["split"]


def test_lineage_events_accepts_dense_M_and_checks_shapes():
    M = np.array([[10.0, 0.0], [0.0, 5.0]])
    out = lineage_events(M, [2 / 3, 1 / 3], [2 / 3, 1 / 3])
    assert out["kept"] == [[0, 0], [1, 1]]
    with pytest.raises(ValueError, match="shape"):
        lineage_events(M, [1.0], [0.5, 0.5])


# ---------------------------------------------------------------- inputs: ClusterResult and float16 snapshots

def test_cluster_result_and_float16_snapshot_agree(tmp_path):
    rng = np.random.default_rng(1)
    n, t, k = 3000, 12, 3
    # Points in 4 blocks; each round puts most of a block's mass on one component (ids shuffled per round).
    block = rng.integers(0, 4, n)
    results = []
    for round_idx in range(2):
        ids = rng.permutation(t)
        values, index = _random_topk(rng, n, k, t)
        values = np.sort(values, axis=1)[:, ::-1] * 0.3
        values[:, 0] += 0.7  # dominant entry -> rows still sum to 1
        index[:, 0] = ids[block]
        index[:, 1:] = np.where(index[:, 1:] == index[:, :1], ids[(block + 4) % t][:, None], index[:, 1:])
        weights = np.bincount(index.ravel(), weights=values.ravel(), minlength=t) / n
        results.append(ClusterResult(labels=index[:, 0], resp_values=values.astype(np.float32), resp_index=index,
                                     weights=weights, active=weights >= 0.005, objective=0.0, history=[], n_iter=0,
                                     seconds=0.0))
    paths = []
    for round_idx, result in enumerate(results):  # the same dtypes as RunDir.save_snapshot
        paths.append(tmp_path / f"round_{round_idx:04d}.npz")
        np.savez(paths[-1], labels=result.labels.astype(np.int32), resp_values=result.resp_values.astype(np.float16),
                 resp_index=result.resp_index.astype(np.int32), weights=result.weights.astype(np.float32))
    from_results = round_lineage(results[0], results[1])
    with np.load(paths[0]) as prev, np.load(paths[1]) as new:
        assert new["resp_values"].dtype == np.float16
        from_snapshots = round_lineage(prev, new)
    for key in ("kept", "split", "merged", "born", "died", "n_active_prev", "n_active_new"):
        assert from_snapshots[key] == from_results[key], key
    assert from_results["n_kept"] == 4  # each block's dominant component is kept under its new id
    np.testing.assert_allclose([e[2] for e in from_snapshots["top_overlap"]],
                               [e[2] for e in from_results["top_overlap"]], atol=5e-3)
    assert len(from_results["top_overlap"]) <= 200
    json.loads(json.dumps(from_snapshots))  # plain ints / floats / lists only


def test_collapse_of_many_small_components_is_a_merge():
    # 40 equal components collapse into 2: each old one is only 1/20 of its new home (below `share`), but
    # sends all its mass there, so both new components are merges of 20 parents.
    from bayes_dc.evaluation.lineage import lineage_events, overlap
    n = 4000
    prev = np.arange(n) % 40
    new = (prev >= 20).astype(np.int64)
    M = overlap(np.ones((n, 1)), prev[:, None], np.ones((n, 1)), new[:, None], 40, 2)
    ev = lineage_events(M, np.full(40, 1 / 40), np.array([0.5, 0.5]))
    assert ev["n_merged"] == 2 and sorted(len(p) for p, _ in ev["merged"]) == [20, 20]
    assert ev["n_died"] == 0 and ev["n_kept"] == 0
    # The reverse direction (2 -> 40) is a fragmentation: two splits of 20 children each.
    ev = lineage_events(M.T.tocsr(), np.array([0.5, 0.5]), np.full(40, 1 / 40))
    assert ev["n_split"] == 2 and sorted(len(c) for _, c in ev["split"]) == [20, 20]
