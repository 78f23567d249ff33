"""Merge, split, birth and delete moves: taken exactly when the full ELBO rises, refused otherwise, ids tracked."""
import warnings

import numpy as np
import pytest
import torch

from bayes_dc.clustering.dpgmm import DPGMM, ClusterCountWarning, ConvergenceWarning
from bayes_dc.clustering.dpgmm.moves import merge_rows, pair_tables, responsibility_entropy

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n, centre, seed, spread=(1.0, 0.3)):
    g = torch.Generator().manual_seed(seed)
    rotation = torch.tensor([[0.8, -0.6], [0.6, 0.8]])
    return torch.tensor(centre) + (torch.randn(n, 2, generator=g) * torch.tensor(spread)) @ rotation.T


def hard(labels, t):
    """Top-2 responsibilities (N, 2) giving each point wholly to ``labels`` (N,), with a zero-valued second entry."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    values = torch.zeros(len(labels), 2)
    values[:, 0] = 1.0
    return values, torch.stack([labels, (labels + 1) % t], 1)


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_merge_of_two_halves_of_one_gaussian_is_taken(covariance):
    x = gaussian(2000, (0.0, 0.0), seed=0, spread=(1.0, 1.0))     # isotropic: one component fits every family
    model = DPGMM(4, covariance=covariance).start_from(x, *hard((x[:, 0] > 0).long(), 4))
    before = model.elbo_
    assert model.mover.try_merge(0, 1) is not None
    assert model.elbo_ > before
    assert model.moves_["merge"] == {"tried": 1, "accepted": 1}
    assert model.live_components().tolist() == [0]
    # the merged state is exactly the state built from the merged responsibilities
    rebuilt = DPGMM(4, covariance=covariance).start_from(x, *hard(torch.zeros(2000), 4))
    assert model.elbo_ == pytest.approx(rebuilt.elbo_, rel=1e-6)       # statistics are float32 chunk sums


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_merge_of_two_separated_gaussians_is_refused(covariance):
    x = torch.cat([gaussian(1000, (0.0, 0.0), seed=1), gaussian(1000, (6.0, 0.0), seed=2)])
    labels = torch.arange(2000) >= 1000
    model = DPGMM(4, covariance=covariance).start_from(x, *hard(labels.long(), 4))
    before = model.elbo_
    assert model.mover.try_merge(0, 1) is None
    assert model.elbo_ == before and model.moves_["merge"] == {"tried": 1, "accepted": 0}
    assert model.live_components().tolist() == [0, 1]


def test_merge_entropy_change_equals_entropy_of_merged_responsibilities():
    g = torch.Generator().manual_seed(3)
    n, k, t = 300, 3, 6
    values = torch.softmax(torch.randn(n, k, generator=g) * 2, 1).sort(1, descending=True).values
    index = torch.stack([torch.randperm(t, generator=g)[:k] for _ in range(n)])
    _, gain = pair_tables(values, index, t)
    entropy = float(-torch.special.xlogy(values.double(), values.double()).sum())
    merged_values, merged_index = merge_rows(values, index, 2, 4)
    merged = float(-torch.special.xlogy(merged_values.double(), merged_values.double()).sum())
    assert merged - entropy == pytest.approx(float(gain[2, 4]), rel=1e-6)
    assert merged - entropy == pytest.approx(float(responsibility_entropy(merged_values) - responsibility_entropy(values)),
                                             rel=1e-6)
    assert not ((merged_index == 4) & (merged_values > 0)).any() and torch.allclose(merged_values.sum(1), torch.ones(n))
    assert (merged_values[:, :-1] >= merged_values[:, 1:]).all()       # rows stay sorted


def _fit(x, t, warm_labels, **kwargs):
    values, index = hard(warm_labels, t)
    state = {"version": 1, "resp_values": values, "resp_index": index, "n_points": x.shape[0], "dim": x.shape[1],
             "truncation": t, "alpha_posterior": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ClusterCountWarning)
        return DPGMM(t, **kwargs).fit(x, seed=0, warm_state=state)


def test_merge_keeps_the_larger_components_id():
    x = torch.cat([gaussian(1200, (0.0, 0.0), seed=4), gaussian(600, (8.0, 0.0), seed=5)])
    # old id 3 holds 2/3 of the first cluster, old id 1 the other third, old id 2 the second cluster
    labels = torch.where(torch.arange(1800) < 800, 3, torch.where(torch.arange(1800) < 1200, 1, 2))
    model = _fit(x, 6, labels, moves="merge")
    assert model.moves_["merge"]["accepted"] == 1
    perm = model.permutation_
    assert perm[1] == -1 and perm[3] >= 0 and perm[2] >= 0
    assert (model.labels_[:1200] == perm[3]).all() and (model.labels_[1200:] == perm[2]).all()


def test_split_separates_two_clusters_and_keeps_the_parent_id():
    x = torch.cat([gaussian(900, (0.0, 0.0), seed=6), gaussian(900, (7.0, 3.0), seed=7)])
    model = _fit(x, 6, torch.full((1800,), 4), moves="split")
    assert model.moves_["split"]["accepted"] >= 1
    perm = model.permutation_
    assert (perm >= 0).sum() == 1 and perm[4] >= 0                     # one child is the parent, one is new
    first, second = model.labels_[:900].numpy(), model.labels_[900:].numpy()
    assert len(set(first)) == 1 and len(set(second)) == 1 and first[0] != second[0]
    assert perm[4] in (first[0], second[0])


def test_birth_finds_an_unmodelled_cluster():
    x = torch.cat([gaussian(800, (0.0, 0.0), seed=8), gaussian(800, (8.0, 0.0), seed=9),
                   gaussian(400, (4.0, 9.0), seed=10)])
    labels = torch.cat([torch.zeros(800), torch.ones(800), torch.zeros(400)])    # the third cluster is in comp 0
    model = _fit(x, 6, labels, moves="birth", move_every=1)
    assert model.moves_["birth"]["accepted"] >= 1
    groups = [set(model.labels_[a:b].tolist()) for a, b in ((0, 800), (800, 1600), (1600, 2000))]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3


def test_delete_removes_a_spurious_component():
    x = gaussian(1500, (0.0, 0.0), seed=11)
    labels = torch.zeros(1500, dtype=torch.int64)
    labels[torch.argsort(x[:, 0])[:6]] = 2          # six tail points in a component of their own
    model = DPGMM(4, covariance="full").start_from(x, *hard(labels, 4))
    before = model.elbo_
    assert model.move_round(["delete"])
    assert model.elbo_ > before and model.live_components().tolist() == [0]
    assert model.moves_["delete"]["accepted"] == 1


def test_moves_leave_responsibilities_consistent_with_statistics():
    """After a round of every move, the cached statistics equal those recomputed from the responsibilities."""
    x = torch.cat([gaussian(500, (0.0, 0.0), seed=13), gaussian(500, (5.0, 1.0), seed=14),
                   gaussian(500, (1.0, 6.0), seed=15)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DPGMM(8, covariance="full", max_iter=3, move_every=1).fit(x, seed=0)
    state = model._state
    resp = torch.zeros(1500, 8, dtype=torch.float64).scatter_add_(1, state.index, state.values.double())
    rebuilt = model.family.stats_from_dense(x.double() - model._shift.double(), resp)
    torch.testing.assert_close(state.stats.counts, rebuilt.counts, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(state.stats.sum_xx, rebuilt.sum_xx, rtol=1e-5, atol=1e-3)
    assert state.stats.entropy == pytest.approx(rebuilt.entropy, rel=1e-5, abs=1e-3)
    assert np.allclose(model.resp_values_.sum(1).numpy(), 1.0, atol=1e-5)
    assert sum(c["accepted"] for c in model.moves_.values()) > 0
