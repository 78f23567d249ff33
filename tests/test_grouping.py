"""Clusters as groups of mixture components (bayes_dc.clustering.grouping): what merges, what does not, and the
invariants every consumer relies on (a partition, labels that follow it, ids that carry no meaning)."""
import typing
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import adjusted_rand_score

from bayes_dc.clustering.base import ClusterResult, active_mask
from bayes_dc.clustering.dpgmm import DPGMMBackend
from bayes_dc.clustering.grouping import (DEFAULT_CUTS, GROUPINGS, component_mass, group_components, grouped_result,
                                          merge_by_entropy, pair_overlap)
from bayes_dc.config.rules import OptionError
from bayes_dc.config.schema import GroupMethod

METHODS = list(DEFAULT_CUTS)


def fit_dp(x: np.ndarray, covariance: str, truncation: int = 20) -> ClusterResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPGMMBackend(truncation, covariance=covariance).fit(torch.tensor(x, dtype=torch.float32), seed=0)


def result_from(values: np.ndarray, index: np.ndarray, n_components: int) -> ClusterResult:
    """A ClusterResult around given top-k responsibilities (N, k), rows sorted descending."""
    order = np.argsort(-values, axis=1, kind="stable")
    values, index = np.take_along_axis(values, order, 1), np.take_along_axis(index, order, 1)
    weights = component_mass(values, index, n_components)
    weights /= weights.sum()
    return ClusterResult(labels=index[:, 0].copy(), resp_values=values.astype(np.float32), resp_index=index,
                         weights=weights, active=active_mask(weights), objective=0.0, history=[], n_iter=0,
                         seconds=0.0).validate()


def random_result(seed: int, n: int = 3000, blocks: int = 10, size: int = 4) -> ClusterResult:
    """Blocks of ``size`` components; a point's responsibility spreads over its own block only. The even blocks
    share it softly (each is one cluster), the odd ones hardly at all (each of their components is a cluster):
    the right grouping has ``blocks / 2 + size * blocks / 2`` groups."""
    rng = np.random.default_rng(seed)
    block = rng.integers(0, blocks, n)
    index = block[:, None] * size + (rng.integers(0, size, n)[:, None] + np.arange(size)[None, :]) % size
    soft = (block % 2 == 0)[:, None]
    values = rng.gamma(np.where(soft, [[3.0] + [1.0] * (size - 1)], [[300.0] + [0.01] * (size - 1)]))
    return result_from(values / values.sum(1, keepdims=True), index, blocks * size)


@pytest.mark.parametrize("method", METHODS)
def test_well_separated_gaussians_keep_every_component(method):
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [30, 0], [0, 30], [30, 30]])
    truth = np.repeat(np.arange(4), 300)
    x = rng.normal(size=(1200, 2)) + centres[truth]
    result = fit_dp(x, "full")
    grouping = group_components(result, method)
    assert result.k_active == 4
    assert grouping.n_groups == grouping.k_active == 4 and grouping.scores == []
    assert adjusted_rand_score(result.labels, grouping.labels) == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_components_tiling_one_elongated_gaussian_merge_into_one(method):
    """Diagonal components cannot follow a Gaussian elongated along the diagonal, so the DP tiles it."""
    rng = np.random.default_rng(0)
    rotation = np.array([[1.0, 1.0], [-1.0, 1.0]]) / np.sqrt(2)
    x = (rng.normal(size=(2000, 2)) * [4.0, 1.0]) @ rotation
    result = fit_dp(x, "diag")
    grouping = group_components(result, method)
    assert result.k_active >= 2
    assert grouping.n_groups == 1 and (grouping.labels == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_two_halves_of_one_gaussian_merge_and_two_far_gaussians_do_not(method):
    """Responsibilities built from known components: the two Gaussians fitted to the halves of N(0, 1) (means
    +-E|X| = +-0.798, sd 0.603) merge; two unit Gaussians 6 sd apart (DEMP Phi(-3) = 0.001) do not."""
    rng = np.random.default_rng(1)
    for means, sd, x, expected in (([-0.798, 0.798], 0.603, rng.normal(size=4000), 1),
                                   ([0.0, 6.0], 1.0, rng.normal(size=4000) + 6.0 * (rng.random(4000) < 0.5), 2)):
        log_lik = norm.logpdf(x[:, None], loc=np.array(means)[None, :], scale=sd)        # (N, 2)
        tau = np.exp(log_lik - np.logaddexp.reduce(log_lik, axis=1, keepdims=True))
        result = result_from(tau, np.tile([0, 1], (len(x), 1)), 2)
        assert group_components(result, method).n_groups == expected


def test_overlap_score_of_two_gaussians_is_their_misclassification_probability():
    """DEMP with exact posteriors estimates P(a point of one component is classified into the other): for equal
    unit Gaussians delta apart that is Phi(-delta / 2); the merge happens exactly when it exceeds the cut."""
    rng = np.random.default_rng(2)
    delta, n = 3.0, 40000
    x = rng.normal(size=n) + delta * (rng.random(n) < 0.5)
    log_lik = norm.logpdf(x[:, None], loc=np.array([0.0, delta])[None, :])
    tau = np.exp(log_lik - np.logaddexp.reduce(log_lik, axis=1, keepdims=True))
    result = result_from(tau, np.tile([0, 1], (n, 1)), 2)
    expected = norm.cdf(-delta / 2)                                    # 0.067
    grouping = group_components(result, "overlap", cut=0.05)
    assert grouping.n_groups == 1 and grouping.scores[0] == pytest.approx(expected, abs=4 * np.sqrt(expected / n * 2))
    assert group_components(result, "overlap", cut=0.08).n_groups == 2


def test_pair_overlap_is_the_dense_definition_and_adds_up_over_shards():
    result = random_result(0, n=500, blocks=3, size=4)
    dense = np.zeros((500, 12))
    np.put_along_axis(dense, result.resp_index, result.resp_values.astype(np.float64), axis=1)
    reference = np.stack([[dense[result.labels == j, i].sum() for j in range(12)] for i in range(12)])
    s = pair_overlap(result.resp_values, result.resp_index, result.labels, 12)
    np.testing.assert_allclose(s, reference, atol=1e-9)
    halves = [pair_overlap(result.resp_values[sl], result.resp_index[sl], result.labels[sl], 12)
              for sl in (slice(0, 200), slice(200, None))]
    np.testing.assert_allclose(halves[0] + halves[1], s, atol=1e-9)


def naive_entropy_merge(values: np.ndarray, index: np.ndarray, t: int, cut: float) -> list[set]:
    """Baudry et al.'s merging on the dense (N, T) responsibilities, recomputed from scratch at every merge."""
    dense = np.zeros((len(values), t))
    np.put_along_axis(dense, index, values.astype(np.float64), axis=1)
    groups = [{c} for c in range(t) if dense[:, c].sum() > 0]

    def f(p):
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum()

    while len(groups) > 1:
        cols = np.stack([dense[:, sorted(g)].sum(1) for g in groups], axis=1)
        best, pair = -1.0, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                drop = f(cols[:, a] + cols[:, b]) - f(cols[:, a]) - f(cols[:, b])
                score = drop / (np.log(2) * min(cols[:, a].sum(), cols[:, b].sum()))
                if score > best:
                    best, pair = score, (a, b)
        if best <= cut:
            break
        a, b = pair
        groups[a] |= groups.pop(b)
    return groups


def test_incremental_entropy_merging_matches_recomputing_everything():
    result = random_result(3, n=600, blocks=4, size=4)
    root, _ = merge_by_entropy(result.resp_values, result.resp_index, 16, DEFAULT_CUTS["entropy"])
    ours = {frozenset(np.flatnonzero(root == r).tolist()) for r in np.unique(root)}
    reference = {frozenset(g) for g in naive_entropy_merge(result.resp_values, result.resp_index, 16,
                                                           DEFAULT_CUTS["entropy"])}
    assert len(reference) == 2 + 2 * 4     # the soft blocks merge, the sharp ones do not
    assert ours == reference


@pytest.mark.parametrize("method", METHODS)
def test_groups_partition_the_components_and_labels_follow(method):
    result = random_result(4)
    grouping = group_components(result, method)
    mass = component_mass(result.resp_values, result.resp_index, result.n_components)
    g = grouping.component_group
    assert ((g >= 0) == (mass > 0)).all()                                # every component with mass in one group
    assert set(g[g >= 0].tolist()) == set(range(grouping.n_groups))      # ids 0..G-1, none empty
    assert grouping.n_groups == 5 + 5 * 4                               # the soft blocks merged, the sharp ones not
    assert all(len(set(np.flatnonzero(g == i) // 4)) == 1 for i in range(grouping.n_groups))   # within a block
    np.testing.assert_array_equal(grouping.labels, g[result.labels])
    np.testing.assert_allclose(grouping.weights, [result.weights[g == i].sum() for i in range(grouping.n_groups)])
    assert (np.diff(grouping.weights) <= 0).all() and grouping.weights.sum() == pytest.approx(1.0)
    assert all(s > grouping.cut for s in grouping.scores)


@pytest.mark.parametrize("method", METHODS)
def test_grouping_does_not_depend_on_component_ids(method):
    result = random_result(5)
    perm = np.random.default_rng(0).permutation(result.n_components)   # old id -> new id
    weights = np.empty_like(result.weights)
    weights[perm] = result.weights
    permuted = ClusterResult(labels=perm[result.labels], resp_values=result.resp_values,
                             resp_index=perm[result.resp_index], weights=weights, active=active_mask(weights),
                             objective=0.0, history=[], n_iter=0, seconds=0.0)
    a, b = group_components(result, method), group_components(permuted, method)
    np.testing.assert_array_equal(a.labels, b.labels)        # groups are numbered by weight, not by component id
    np.testing.assert_array_equal(b.component_group[perm], a.component_group)


def test_grouped_result_sums_responsibilities_within_groups():
    result = random_result(6, n=400, blocks=5, size=4)
    grouping = group_components(result, "overlap")
    coarse = grouped_result(result, grouping).validate()
    assert coarse.n_components == result.n_components                  # a head of T outputs trains on either level
    np.testing.assert_array_equal(coarse.labels, grouping.labels)
    dense = np.zeros((400, grouping.n_groups))
    np.add.at(dense, (np.arange(400)[:, None], grouping.component_group[result.resp_index]), result.resp_values)
    rebuilt = np.zeros((400, result.n_components))
    np.add.at(rebuilt, (np.arange(400)[:, None], coarse.resp_index), coarse.resp_values)
    np.testing.assert_allclose(rebuilt[:, : grouping.n_groups], dense, atol=1e-6)
    assert (np.diff(coarse.resp_values, axis=1) <= 0).all()


def test_bad_method_or_cut_names_the_parameter():
    result = random_result(7, n=100)
    with pytest.raises(OptionError, match="overlap") as err:
        group_components(result, "eigengap")
    assert err.value.option == "group"
    with pytest.raises(OptionError, match="group_cut") as err:
        group_components(result, "overlap", cut=1.5)
    assert err.value.option == "group_cut"


def test_the_group_option_lists_the_registry():
    assert list(typing.get_args(GroupMethod)) == list(GROUPINGS)
