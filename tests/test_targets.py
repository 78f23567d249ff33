"""Targets, losses and the cluster-balanced sampler."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bayes_dc.clustering.base import ClusterResult
from bayes_dc.loop.targets import ClusterLoss, balanced_weights, build_targets, sample_epoch, sharpen


def make_result(labels, resp_values=None, resp_index=None, t=None):
    labels = np.asarray(labels)
    t = t or labels.max() + 1
    if resp_values is None:
        resp_values, resp_index = np.ones((len(labels), 1), np.float32), labels[:, None]
    w = np.bincount(labels, minlength=t) / len(labels)
    return ClusterResult(labels=labels, resp_values=np.asarray(resp_values, np.float32),
                         resp_index=np.asarray(resp_index), weights=w, active=w > 0, objective=0.0, history=[],
                         n_iter=1, seconds=0.0)


def test_hard_sampler_gives_every_cluster_the_same_share():
    # Very unbalanced clusters: 900 / 90 / 10 points.
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    targets = build_targets(make_result(labels), "hard")
    idx = sample_epoch(targets, 30000, torch.Generator().manual_seed(0))
    share = np.bincount(labels[idx.numpy()], minlength=3) / 30000
    assert np.allclose(share, 1 / 3, atol=0.015)


def test_soft_sampler_gives_each_cluster_equal_weight_share():
    rng = np.random.default_rng(0)
    n, k, t = 2000, 3, 6
    index = np.stack([rng.choice(t, size=k, replace=False, p=[.5, .3, .1, .05, .03, .02]) for _ in range(n)])
    values = rng.dirichlet(np.full(k, 0.3), size=n).astype(np.float32)
    w = balanced_weights(values, index, t)
    assert np.isclose(w.sum(), 1.0)
    # w_n = sum_k r_nk / N_k: the part of the sampling weight owed to cluster k sums to 1/T for every k.
    sizes = np.bincount(index.ravel(), weights=values.ravel(), minlength=t)
    share = np.bincount(index.ravel(), weights=(values / sizes[index]).ravel(), minlength=t) / t
    assert np.allclose(share, 1 / t)
    # And the responsibility mass actually drawn is far more even than under uniform sampling.
    drawn = np.bincount(index.ravel(), weights=(w[:, None] * values).ravel(), minlength=t)
    assert drawn.max() / drawn.min() < 0.25 * sizes.max() / sizes.min()


def test_soft_loss_with_one_hot_targets_equals_cross_entropy():
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    used = torch.ones(5, dtype=torch.bool)
    soft = ClusterLoss("soft")(logits, F.one_hot(labels, 5).float(), used)
    hard = ClusterLoss("hard")(logits, labels, used)
    assert torch.allclose(soft, hard) and torch.allclose(hard, F.cross_entropy(logits, labels))


def test_unused_components_are_masked_out():
    logits = torch.randn(4, 6, requires_grad=True)
    used = torch.tensor([True, True, False, True, False, True])
    target = torch.tensor([0, 1, 3, 5])
    ClusterLoss("hard")(logits, target, used).backward()
    assert torch.all(logits.grad[:, ~used] == 0)
    # Equivalent to cross-entropy over the used components only.
    ref = F.cross_entropy(logits.detach()[:, used], torch.tensor([0, 1, 2, 3]))
    assert torch.isclose(ClusterLoss("hard")(logits.detach(), target, used), ref)


@pytest.mark.parametrize("kind", ["soft", "multilabel"])
def test_loss_gradient_raises_target_logit(kind):
    logits = torch.zeros(1, 4, requires_grad=True)
    target = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    ClusterLoss(kind)(logits, target, torch.ones(4, dtype=torch.bool)).backward()
    # Gradient descent moves logits toward the target: the most probable component's logit goes up.
    assert logits.grad[0, 0] < 0 and logits.grad[0, 2] > 0


def test_multilabel_loss_limit_matches_bce():
    logits = torch.randn(3, 4)
    target = torch.rand(3, 4)
    used = torch.tensor([True, False, True, True])
    got = ClusterLoss("multilabel")(logits, target, used)
    assert torch.isclose(got, F.binary_cross_entropy_with_logits(logits[:, used], target[:, used]))


def test_sharpen_limits():
    r = np.array([[0.6, 0.3, 0.1]])
    assert np.allclose(sharpen(r, 1.0), r)
    assert np.allclose(sharpen(r, 1e-3), [[1, 0, 0]], atol=1e-6)
    assert np.allclose(sharpen(r, 0.5).sum(1), 1)
    with pytest.raises(ValueError, match="sharpen"):
        sharpen(r, 0.0)


def test_batch_builds_dense_soft_targets():
    values = np.array([[0.75, 0.25], [1.0, 0.0]], np.float32)
    index = np.array([[2, 0], [1, 0]])
    targets = build_targets(make_result(np.array([2, 1]), values, index, t=3), "soft")
    dense = targets.batch(torch.tensor([0, 1]), "cpu")
    assert torch.allclose(dense, torch.tensor([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]]))
    assert targets.used.tolist() == [True, True, True]


def test_unknown_target_kind_lists_choices():
    with pytest.raises(ValueError, match="hard"):
        build_targets(make_result(np.array([0, 1])), "fuzzy")


def test_swapped_targets_are_the_other_views_responsibilities():
    from bayes_dc.loop.targets import swapped_targets
    values_a = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    index_a = torch.tensor([[2, 0], [1, 3]])
    values_b = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    index_b = torch.tensor([[0, 2], [3, 1]])
    hard_a, hard_b = swapped_targets("hard", values_a, index_a, values_b, index_b, 4)
    assert hard_a.tolist() == [0, 3] and hard_b.tolist() == [2, 1]          # each view gets the other's argmax
    soft_a, soft_b = swapped_targets("soft", values_a, index_a, values_b, index_b, 4)
    assert torch.allclose(soft_a, torch.tensor([[0.9, 0, 0.1, 0], [0, 0.5, 0, 0.5]]))
    assert torch.allclose(soft_b, torch.tensor([[0.3, 0, 0.7, 0], [0, 0.6, 0, 0.4]]))
    sharp_a, _ = swapped_targets("soft", values_a, index_a, values_b, index_b, 4, tau=0.5)
    assert torch.allclose(sharp_a[0], torch.tensor([0.81, 0, 0.01, 0]) / 0.82, atol=1e-6)   # r^2 renormalised
