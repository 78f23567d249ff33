"""bayes_dc.evaluation.metrics against hand-computed values and brute-force references, on tiny data."""
import math

import numpy as np
import pytest
import torch

from bayes_dc.evaluation import metrics

# Six points, two classes, three clusters. Contingency table (classes x clusters): [[2, 1, 0], [0, 1, 2]].
TRUE6 = np.array([0, 0, 0, 1, 1, 1])
PRED6 = np.array([0, 0, 1, 1, 2, 2])


# ----------------------------------------------------------------------------- NMI / ARI


def test_nmi_hand_computed():
    # H(Y) = ln 2, H(C) = ln 3, I(Y; C) = 2 * (1/3) ln 2 (the two off-diagonal 1s carry no information).
    expected = (2 / 3 * math.log(2)) / ((math.log(2) + math.log(3)) / 2)
    assert metrics.nmi(TRUE6, PRED6) == pytest.approx(expected, abs=1e-12)


def test_ari_hand_computed():
    # sum C(n_ij, 2) = 2; rows: C(3,2)*2 = 6; cols: C(2,2)*3 = 3; C(6,2) = 15.
    index, expected_index, max_index = 2.0, 6 * 3 / 15, (6 + 3) / 2
    expected = (index - expected_index) / (max_index - expected_index)
    assert metrics.ari(TRUE6, PRED6) == pytest.approx(expected, abs=1e-12)


def test_perfect_and_permuted_labels_score_one():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    permuted = np.array([5, 5, 9, 9, 1, 1, 1])  # same partition, other ids
    for fn in (metrics.nmi, metrics.ari, metrics.acc, metrics.purity):
        assert fn(y, y) == pytest.approx(1.0)
        assert fn(y, permuted) == pytest.approx(1.0)


def test_independent_labelling():
    y, c = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    assert metrics.nmi(y, c) == pytest.approx(0.0, abs=1e-12)
    # sum C(n_ij,2) = 0, expected index = 2*2/6, max index = 2  ->  ARI = -0.5
    assert metrics.ari(y, c) == pytest.approx(-0.5)


def test_accepts_torch_and_lists():
    assert metrics.nmi(torch.tensor(TRUE6), PRED6.tolist()) == pytest.approx(metrics.nmi(TRUE6, PRED6))


# ----------------------------------------------------------------------------- ACC / purity


def test_acc_and_purity_hand_computed():
    assert metrics.acc(TRUE6, PRED6) == pytest.approx(4 / 6)     # class0<->c0 (2), class1<->c2 (2)
    assert metrics.purity(TRUE6, PRED6) == pytest.approx(5 / 6)  # majorities 2 + 1 + 2


def test_acc_penalises_over_clustering():
    true, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 2, 2, 3]
    # Only two clusters can be matched one-to-one: c0 -> class 0 (2 points), c2 -> class 1 (2 points).
    assert metrics.acc(true, pred) == pytest.approx(4 / 6)
    assert metrics.purity(true, pred) == pytest.approx(1.0)  # many-to-one: every cluster is pure


def test_acc_singleton_clusters():
    true = np.repeat(np.arange(10), 2)  # 10 classes x 2 points
    pred = np.arange(20)                # every point its own cluster
    assert metrics.acc(true, pred) == pytest.approx(10 / 20)
    assert metrics.purity(true, pred) == pytest.approx(1.0)


def test_acc_fewer_clusters_than_classes():
    true, pred = [0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]
    assert metrics.acc(true, pred) == pytest.approx(4 / 6)
    assert metrics.purity(true, pred) == pytest.approx(4 / 6)


# ----------------------------------------------------------------------------- K_used / K_active / K_eff


def test_k_counts():
    assert metrics.k_used([3, 3, 7, -1, 7]) == 3
    for k in (1, 4, 300):
        assert metrics.k_eff(np.full(k, 1 / k)) == pytest.approx(k)
    assert metrics.k_eff([0.5, 0.5, 0.0, 0.0]) == pytest.approx(2.0)  # zeros ignored
    assert metrics.k_eff([10, 10]) == pytest.approx(2.0)              # counts are normalised
    w = np.array([0.5, 0.49, 0.005, 0.004, 0.001])
    assert metrics.k_active(w) == 3                                   # >= 0.5 %
    assert metrics.k_active(w, threshold=0.1) == 2


def test_cluster_metrics_keys_and_default_weights():
    out = metrics.cluster_metrics(TRUE6, PRED6)
    assert set(out) == {"nmi", "ari", "acc", "purity", "k_used", "k_active", "k_eff"}
    assert out["k_used"] == 3 and out["k_active"] == 3 and out["k_eff"] == pytest.approx(3.0)
    out = metrics.cluster_metrics(TRUE6, PRED6, weights=np.array([0.7, 0.3, 0.0, 0.0]))
    assert out["k_active"] == 2 and out["acc"] == pytest.approx(4 / 6)


# ----------------------------------------------------------------------------- input validation


def test_length_mismatch_and_empty_errors():
    for fn in (metrics.nmi, metrics.ari, metrics.acc, metrics.purity, metrics.cluster_metrics):
        with pytest.raises(ValueError, match=r"has 3 entries .* has 2"):
            fn([0, 1, 1], [0, 1])
        with pytest.raises(ValueError, match="empty"):
            fn([], [])
    with pytest.raises(ValueError, match="empty"):
        metrics.k_eff([])
    with pytest.raises(ValueError, match="10 rows .* 9"):
        metrics.knn_accuracy(np.zeros((10, 3)), np.zeros(9, int), np.zeros((4, 3)), np.zeros(4, int))
    with pytest.raises(ValueError, match="10 entries .* 9"):
        metrics.linear_probe(np.zeros((9, 3)), np.zeros(10, int), np.zeros((4, 3)), np.zeros(4, int))


# ----------------------------------------------------------------------------- kNN


def _knn_reference(train, y_train, test, k, temperature, num_classes):
    """Brute-force weighted kNN in float64 numpy, one test point at a time."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    predictions = []
    for x in test:
        sim = train @ x
        nearest = np.argsort(-sim)[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[y_train[j]] += np.exp(sim[j] / temperature)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


@pytest.mark.parametrize("k,batch_size", [(20, 1024), (5, 7), (1, 50), (500, 33)])
def test_knn_matches_bruteforce_reference(k, batch_size):
    rng = np.random.default_rng(0)
    # Weakly structured data, so the answer is neither 0 nor 1 and the votes matter.
    centres = rng.normal(size=(4, 16))
    y_train, y_test = rng.integers(0, 4, 300), rng.integers(0, 4, 120)
    train = centres[y_train] * 0.4 + rng.normal(size=(300, 16))
    test = centres[y_test] * 0.4 + rng.normal(size=(120, 16))
    pred = _knn_reference(train, y_train, test, min(k, 300), 0.07, 4)
    expected = float((pred == y_test).mean())
    assert 0.3 < expected < 1.0
    got = metrics.knn_accuracy(torch.tensor(train, dtype=torch.float32), y_train,
                               torch.tensor(test, dtype=torch.float32), torch.tensor(y_test),
                               k=k, batch_size=batch_size)
    assert got == expected


def test_knn_well_separated_classes():
    rng = np.random.default_rng(1)
    centres = np.eye(5, 32) * 10
    y_train, y_test = np.repeat(np.arange(5), 40), np.repeat(np.arange(5), 10)
    train = centres[y_train] + 0.1 * rng.normal(size=(200, 32))
    test = centres[y_test] + 0.1 * rng.normal(size=(50, 32))
    assert metrics.knn_accuracy(train, y_train, test, y_test) == 1.0


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_separable():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 20)) * 3
    y_train, y_test = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    train = centres[y_train] + rng.normal(size=(300, 20))
    test = centres[y_test] + rng.normal(size=(100, 20))
    assert metrics.linear_probe(torch.tensor(train), y_train, test, y_test) > 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_on_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    train, test = rng.normal(size=(500, 8)).astype(np.float32), rng.normal(size=(100, 8)).astype(np.float32)
    y_train, y_test = rng.integers(0, 3, 500), rng.integers(0, 3, 100)
    cpu = metrics.knn_accuracy(torch.tensor(train), y_train, torch.tensor(test), y_test)
    gpu = metrics.knn_accuracy(torch.tensor(train).cuda(), y_train, torch.tensor(test).cuda(), y_test)
    assert gpu == pytest.approx(cpu)
