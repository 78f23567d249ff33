"""bayes_dc.spaces: the registry, the identity, PCA and UMAP spaces, UMAP's warm start and the spaces' errors."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.neighbors import NearestNeighbors

from bayes_dc.clustering import make_backend
from bayes_dc.config.schema import ClusterConfig, Config, merge
from bayes_dc.config.rules import OptionError
from bayes_dc.spaces.identity import IdentityReducer
from bayes_dc.spaces.pca import PCAReducer
from bayes_dc.spaces.registry import REDUCERS, make_reducer
from bayes_dc.spaces.umap import UMAP_WARM_EPOCHS, UMAPReducer, neighbor_overlap, other_neighbors
from bayes_dc.spaces.whiten import Whitener


def blobs(n=600, f=40, k=4, seed=0):
    """k well separated Gaussian blobs in f dimensions, with a random linear mixing (not axis aligned)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(k, size=n)
    centres = rng.normal(size=(k, f)) * 6.0
    x = centres[labels] + rng.normal(size=(n, f))
    return torch.tensor(x @ rng.normal(size=(f, f)) / np.sqrt(f), dtype=torch.float32), labels


def test_pca_reducer_is_the_whitener_and_maps_new_points_the_same_way():
    x, _ = blobs()
    reducer = PCAReducer(dim=8)
    out = reducer.reduce(x, seed=0)
    assert torch.equal(out.points, Whitener(dim=8).fit_transform(x)) and out.info["reduce_dim"] == 8
    assert torch.allclose(reducer.transform(x[:50], out.state), out.points[:50], atol=1e-5)


def test_identity_reducer_maps_points_as_they_are_and_umap_needs_a_fitted_state():
    x, _ = blobs(n=50)
    assert torch.equal(IdentityReducer().reduce(x, seed=0).points, x)
    with pytest.raises(ValueError, match="refit"):
        UMAPReducer().transform(x, {"embedding": torch.zeros(50, 2)})   # a state saved before transform existed


def test_umap_probe_neighbors_match_scikit_learn():
    x, _ = blobs(n=300, f=6, seed=1)
    rows = np.array([0, 5, 17, 299])
    ours = other_neighbors(x.numpy(), rows, 7)
    ref = NearestNeighbors(n_neighbors=8).fit(x.numpy()).kneighbors(x.numpy()[rows], return_distance=False)[:, 1:]
    assert [set(a) for a in ours] == [set(b) for b in ref]


def test_neighbor_overlap_counts_shared_ids():
    before = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    after = np.array([[4, 3, 9, 10], [8, 7, 6, 5]])
    assert neighbor_overlap(before, after) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert neighbor_overlap(before, after[:, :3]) == 0.0          # shapes differ: nothing to compare


@pytest.fixture(scope="module")
def umap_round():
    x, labels = blobs()
    reducer = UMAPReducer(dim=3, pca_dim=10, n_neighbors=10)
    return x, labels, reducer, reducer.reduce(x, seed=3)


def test_umap_embedding_keeps_the_clusters_and_is_seeded(umap_round):
    x, labels, reducer, first = umap_round
    assert first.points.shape == (600, 3) and first.points.dtype == torch.float32
    found = KMeans(4, n_init=4, random_state=0).fit_predict(first.points.numpy())
    assert nmi(labels, found) > 0.95
    again = reducer.reduce(x, seed=3)
    assert torch.equal(again.points, first.points)
    assert not first.info["umap_warm"] and first.info["umap_neighbor_overlap"] is None


def test_umap_transform_maps_training_points_onto_their_layout_and_keeps_their_clusters(umap_round):
    """The out-of-sample map (PCA, then the inverse-distance mean of the nearest training points' embeddings):
    training points land next to their own embedding, and a DP fitted on the layout assigns them (nearly) as it
    labelled them; perturbed copies of training points land in their blob's cluster."""
    x, labels, reducer, first = umap_round
    mapped = reducer.transform(x, first.state)
    spread = first.points.std(0).norm()
    assert mapped.shape == first.points.shape and mapped.dtype == torch.float32
    assert float((mapped - first.points).norm(dim=1).median()) < 0.05 * float(spread)
    backend = make_backend(ClusterConfig(prior="dp", truncation=10), "cpu")
    fit = backend.fit(first.points, seed=0)
    again = backend.responsibilities(fit.predictor, mapped)[1][:, 0].numpy()
    assert (again == fit.labels).mean() >= 0.95
    fresh = x[:200] + 0.3 * torch.randn(200, x.shape[1], generator=torch.Generator().manual_seed(5))
    found = backend.responsibilities(fit.predictor, reducer.transform(fresh, first.state))[1][:, 0].numpy()
    assert nmi(labels[:200], found) > 0.95


def test_umap_warm_starts_only_when_neighbourhoods_survive(umap_round, monkeypatch):
    x, labels, reducer, first = umap_round
    seen = {}
    import umap

    original = umap.UMAP.__init__

    def spy(self, *args, **kwargs):
        seen.update(init=kwargs.get("init"), n_epochs=kwargs.get("n_epochs"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(umap.UMAP, "__init__", spy)
    # Slightly perturbed features: same neighbourhoods, so the previous layout is the starting point.
    noisy = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    warm = reducer.reduce(noisy, seed=4, warm_state=first.state)
    assert warm.info["umap_warm"] and warm.info["umap_neighbor_overlap"] > 0.8
    assert isinstance(seen["init"], np.ndarray) and np.array_equal(seen["init"], first.state["embedding"].numpy())
    assert seen["n_epochs"] == UMAP_WARM_EPOCHS
    assert nmi(labels, KMeans(4, n_init=4, random_state=0).fit_predict(warm.points.numpy())) > 0.95
    # Rows shuffled: every point's neighbourhood changed, so the old layout would mislead: spectral start.
    shuffled = x[torch.randperm(600, generator=torch.Generator().manual_seed(1))]
    cold = reducer.reduce(shuffled, seed=4, warm_state=first.state)
    assert not cold.info["umap_warm"] and cold.info["umap_neighbor_overlap"] < 0.2
    assert seen["init"] == "spectral"


def test_make_reducer_resolves_defaults_and_names_bad_choices():
    cfg = merge(Config(), {"features": {"reduce": "umap"}, "cluster": {"prior": "dp"}})
    reducer = make_reducer(cfg)
    assert isinstance(reducer, UMAPReducer) and reducer.pca_dim == 50 and reducer.dim == 10
    assert make_reducer(merge(Config(), {"cluster": {"prior": "kmeans"}})).whitener.dim == 256
    with pytest.raises(OptionError, match="unknown reduce 'tsne'; choose one of") as error:
        make_reducer(merge(Config(), {"features": {"reduce": "tsne"}}))
    assert error.value.option == "reduce" and all(name in str(error.value) for name in REDUCERS)


@pytest.mark.parametrize("kwargs,parameter", [({"dim": 0}, "dim"), ({"pca_dim": 0}, "pca_dim"),
                                              ({"n_neighbors": 1}, "n_neighbors"), ({"min_dist": -1.0}, "min_dist")])
def test_bad_umap_options_name_the_parameter(kwargs, parameter):
    with pytest.raises(OptionError, match=f"^{parameter} must be") as error:
        UMAPReducer(**kwargs)
    assert error.value.option == parameter and "--" not in str(error.value)


def test_umap_refuses_too_few_points():
    with pytest.raises(ValueError, match="needs more than"):
        UMAPReducer(n_neighbors=20).reduce(torch.randn(15, 4), seed=0)


def test_a_layout_on_fewer_directions_keeps_the_ones_it_uses_and_the_dp_can_fit_it():
    """A 10-d layout whose points lie on 4 directions (the rest at ~1e-14 of the variance, as umap-learn's layout of
    CIFAR-10 pixels did at ~1e-7): the DP's prior cannot be built on it, and after drop_flat_directions it is 4-d with
    every pairwise distance kept, and the DP fits it. A full-rank layout comes back as the same tensor."""
    import warnings

    from bayes_dc.clustering.dpgmm import DPGMMBackend
    from bayes_dc.spaces.umap import drop_flat_directions

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 4, generator=generator) * 4
    low = centres[torch.arange(300) % 3] + torch.randn(300, 4, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=generator))
    layout = torch.cat([low, 1e-7 * torch.randn(300, 6, generator=generator)], 1) @ rotation.T + 3.0
    with pytest.raises(ValueError, match="singular"):
        DPGMMBackend(truncation=10).fit(layout, seed=0)
    points, flat = drop_flat_directions(layout)
    assert points.shape == (300, 4) and flat["flat_basis"].shape == (10, 4)
    distances = [torch.cdist(x.double(), x.double()) for x in (points, layout)]
    torch.testing.assert_close(distances[0], distances[1], atol=1e-4, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert DPGMMBackend(truncation=10).fit(points, seed=0).k_active >= 3
    same, none = drop_flat_directions(low)
    assert same is low and none is None


def test_the_umap_map_of_new_points_follows_the_dropped_directions():
    """With flat directions dropped, UMAPReducer.transform maps a training point (nearly) onto its clustered point, in
    the reduced coordinates: the Shepard interpolation of the layout, then the same centring and basis."""
    from bayes_dc.spaces.umap import drop_flat_directions

    generator = torch.Generator().manual_seed(1)
    pcs = torch.randn(200, 6, generator=generator)
    layout = torch.cat([pcs[:, :3] * 3, torch.zeros(200, 7)], 1) + 1.0             # 10-d layout on 3 directions
    points, flat = drop_flat_directions(layout)
    state = {"pca_mean": torch.zeros(6), "pca_projection": torch.eye(6), "pcs": pcs, "embedding": layout, **flat}
    mapped = UMAPReducer(dim=10, pca_dim=6, n_neighbors=5).transform(pcs[:20], state)
    assert mapped.shape == (20, 3)
    torch.testing.assert_close(mapped, points[:20], atol=0.05, rtol=0.0)
