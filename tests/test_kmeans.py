"""The faiss k-means baseline behind the seam."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from bayes_dc.evaluation import metrics
from bayes_dc.clustering import make_backend
from bayes_dc.clustering.kmeans import KMeansBackend
from bayes_dc.config.schema import ClusterConfig


def blobs(n=3000, k=8, d=16, seed=0):
    x, y = make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=1.0, center_box=(-10, 10), random_state=seed)
    return torch.from_numpy(x.astype(np.float32)), y


def test_recovers_known_clusters_like_sklearn():
    x, y = blobs()
    result = KMeansBackend(k=8).fit(x, seed=0)
    reference = KMeans(8, n_init=1, random_state=0).fit_predict(x.numpy())
    assert metrics.nmi(y, result.labels) >= 0.95
    assert metrics.nmi(reference, result.labels) >= 0.95
    assert result.k_used == 8 and np.isclose(result.weights.sum(), 1)
    assert result.history[-1] <= result.history[0]


def test_result_satisfies_seam_contract():
    x, _ = blobs(n=500, k=4)
    r = KMeansBackend(k=6, niter=5).fit(x, seed=1)
    assert r.resp_values.shape == (500, 1) and np.all(r.resp_values == 1)
    assert np.array_equal(r.resp_index[:, 0], r.labels)
    assert np.allclose(r.weights, np.bincount(r.labels, minlength=6) / 500)
    assert r.permutation is None and r.state is None and "empty_clusters" in r.info


def test_same_seed_same_labels_and_seed_matters():
    # Unstructured data: k-means has many local optima, so the seed (the initial centroids) decides the result.
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2000, 8)).astype(np.float32))
    a = KMeansBackend(k=20).fit(x, seed=5)
    b = KMeansBackend(k=20).fit(x, seed=5)
    c = KMeansBackend(k=20).fit(x, seed=6)
    assert np.array_equal(a.labels, b.labels) and a.objective == b.objective
    assert metrics.nmi(a.labels, c.labels) < 0.95 and a.objective != c.objective


def test_registry_and_errors():
    assert isinstance(make_backend(ClusterConfig(prior="kmeans", k=3)), KMeansBackend)
    with pytest.raises(ValueError, match="kmeans"):
        make_backend(ClusterConfig(prior="hdbscan"))
    with pytest.raises(ValueError, match="k >= 2"):
        KMeansBackend(k=1)
    with pytest.raises(ValueError, match="at least k points"):
        KMeansBackend(k=50).fit(torch.randn(10, 3), seed=0)
    bad = torch.randn(20, 3)
    bad[[3, 7]] = float("nan")
    with pytest.raises(ValueError, match="2 of 20 rows"):
        KMeansBackend(k=2).fit(bad, seed=0)
