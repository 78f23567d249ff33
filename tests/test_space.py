"""The parametric UMAP space (``--reduce pumap``): UMAP's graph maths against umap-learn, the encoder's warm start,
the map of new points, seeding."""
import warnings

import numpy as np
import pytest
import torch

from bayes_dc.config.schema import Config, merge
from bayes_dc.spaces.registry import make_reducer
from bayes_dc.config.rules import OptionError
from bayes_dc.spaces.knn import nearest_neighbors
from bayes_dc.spaces.parametric import (EdgeSampler, ParametricUMAPReducer, encode, fit_ab, fuzzy_graph, new_encoder,
                                        rebase_first_layer, smooth_knn, train_encoder)


def blobs(n_per: int = 60, k: int = 4, dim: int = 12, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=generator) * 6
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + torch.randn(len(labels), dim, generator=generator)
    return x, labels


def test_fuzzy_graph_equals_umap_learns():
    """Same kNN input, same fuzzy simplicial set as umap-learn's ``fuzzy_simplicial_set`` (the reference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from umap.umap_ import fuzzy_simplicial_set
    x, _ = blobs()
    distances, indices = nearest_neighbors(x, 10)
    ours = fuzzy_graph(distances, indices).tocsr()
    reference, _, _ = fuzzy_simplicial_set(x.numpy(), 10, np.random.RandomState(0), "euclidean",
                                           knn_indices=indices.numpy(), knn_dists=distances.numpy())
    reference = reference.tocsr()
    assert abs(ours - reference).max() < 1e-4
    assert (ours != ours.T).nnz == 0                                                   # symmetric


def test_smooth_knn_calibrates_each_row_to_log2_k():
    x, _ = blobs(dim=5)
    distances, _ = nearest_neighbors(x, 15)
    strengths = smooth_knn(distances)
    np.testing.assert_allclose(strengths.sum(1).numpy(), np.log2(15), rtol=1e-4)
    assert torch.all(strengths.max(1).values == 1.0)                                   # the nearest neighbour


def test_fit_ab_equals_umap_learns():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from umap.umap_ import find_ab_params
    for min_dist in (0.0, 0.1):
        np.testing.assert_allclose(fit_ab(min_dist), find_ab_params(1.0, min_dist), rtol=1e-3)


def test_edges_are_drawn_in_proportion_to_their_weight():
    import scipy.sparse
    graph = scipy.sparse.coo_matrix((np.array([1.0, 3.0]), (np.array([0, 1]), np.array([1, 0]))), shape=(2, 2))
    head, _ = EdgeSampler(graph).sample(40000, torch.Generator().manual_seed(0))
    assert (head == 1).float().mean().item() == pytest.approx(0.75, abs=0.01)


def test_rebased_first_layer_gives_the_same_outputs_in_a_rotated_frame():
    """A new PCA frame of the same span (rotated basis, moved mean): the rebased encoder maps every feature as the
    old one did."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 8, generator=generator, dtype=torch.float64).float()
    basis, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))
    old = {"mean": torch.zeros(8), "basis": basis.float(),
           "encoder": new_encoder(8, 16, 3, generator).state_dict()}
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))
    new_mean, new_basis = torch.ones(8), (basis @ rotation).float()
    rebased = rebase_first_layer(old, new_mean, new_basis)
    before = encode(old["encoder"], (features - old["mean"]) @ old["basis"])
    after = encode(rebased, (features - new_mean) @ new_basis)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def pumap_round():
    x, labels = blobs(n_per=80, k=4, dim=20)
    reducer = ParametricUMAPReducer(dim=2, pca_dim=8, n_neighbors=10, hidden=32, epochs=6, warm_epochs=6,
                                    batch_size=256)
    return x, labels, reducer, reducer.reduce(x, seed=3)


def test_transform_of_the_training_features_is_what_the_round_clustered(pumap_round):
    x, _, reducer, first = pumap_round
    assert torch.equal(reducer.transform(x, first.state), first.points)
    # and one new point is mapped on its own as it is within a batch
    torch.testing.assert_close(reducer.transform(x[5:6], first.state), first.points[5:6])


def test_the_encoder_separates_the_clusters_and_is_seeded(pumap_round):
    from sklearn.metrics import adjusted_rand_score
    from sklearn.cluster import KMeans
    x, labels, reducer, first = pumap_round
    found = KMeans(4, n_init=4, random_state=0).fit_predict(first.points.numpy())
    assert adjusted_rand_score(labels, found) > 0.95
    again = reducer.reduce(x, seed=3)
    assert torch.equal(again.points, first.points)
    assert not torch.equal(reducer.reduce(x, seed=4).points, first.points)


def test_a_warm_encoder_reaches_the_cold_loss_in_fewer_epochs(pumap_round):
    """Unchanged features: the warm start (the previous encoder, same graph) is at the cold run's final loss after
    its first epoch; the cold run needed all of its epochs to get there."""
    x, _, reducer, first = pumap_round
    cold = first.state["loss"]
    assert not first.info["pumap_warm"] and cold[-1] < cold[0]
    warm = reducer.reduce(x, seed=5, warm_state=first.state)
    assert warm.info["pumap_warm"]
    epochs_to_cold_loss = next(i + 1 for i, loss in enumerate(warm.state["loss"] + [-np.inf])
                               if loss <= cold[-1] * 1.02)
    assert epochs_to_cold_loss < len(cold)
    assert epochs_to_cold_loss <= 2, warm.state["loss"]


def test_a_warm_start_follows_a_rotated_pca_frame():
    """Features rotated between rounds (PCA refits a new basis): the rebased warm encoder starts at the loss the
    cold run ended with, where a cold encoder from random weights starts far above it (random: the spectral start
    would begin near the end loss too, and this test is about the rebase)."""
    x, _ = blobs(n_per=50, k=3, dim=10)
    reducer = ParametricUMAPReducer(dim=2, pca_dim=6, n_neighbors=10, hidden=32, epochs=6, warm_epochs=1,
                                    batch_size=256, init="random")
    first = reducer.reduce(x, seed=0)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(1)))
    warm = reducer.reduce(x @ rotation, seed=1, warm_state=first.state)
    assert warm.state["loss"][0] < first.state["loss"][0] * 0.8


def test_train_encoder_lowers_the_loss():
    x, _ = blobs(n_per=40, k=3, dim=6)
    distances, indices = nearest_neighbors(x, 8)
    generator = torch.Generator().manual_seed(0)
    encoder = new_encoder(6, 16, 2, generator)
    history = train_encoder(encoder, x, EdgeSampler(fuzzy_graph(distances, indices)), epochs=4, a=1.9, b=0.8,
                            negative_rate=5, batch_size=128, lr=1e-2, generator=generator)
    assert history[-1] < history[0]


def test_make_reducer_builds_pumap_from_the_config():
    cfg = merge(Config(), {"features": {"reduce": "pumap", "pumap_hidden": 24, "pumap_epochs": 2},
                           "cluster": {"prior": "dp"}})
    reducer = make_reducer(cfg)
    assert isinstance(reducer, ParametricUMAPReducer)
    assert (reducer.hidden, reducer.epochs, reducer.pca_dim) == (24, 2, 50)


@pytest.mark.parametrize("kwargs,parameter", [({"dim": 0}, "dim"), ({"n_neighbors": 1}, "n_neighbors"),
                                              ({"epochs": 0}, "epochs"), ({"warm_epochs": -1}, "warm_epochs"),
                                              ({"hidden": 0}, "hidden"), ({"min_dist": -1.0}, "min_dist")])
def test_bad_pumap_options_name_the_parameter(kwargs, parameter):
    with pytest.raises(OptionError, match=f"^{parameter} must be") as error:
        ParametricUMAPReducer(**kwargs)
    assert error.value.option == parameter and "--" not in str(error.value)


def test_transform_before_a_fit_is_refused_clearly():
    with pytest.raises(ValueError, match="no fitted encoder"):
        ParametricUMAPReducer().transform(torch.zeros(2, 3), None)


def test_output_whitening_gives_identity_covariance_and_drops_collapsed_directions():
    """An encoder output that collapsed onto fewer than d directions (clusters pulled onto points) gives points on
    the directions it uses, with identity covariance (positive definite, as the DP's prior needs)."""
    from bayes_dc.spaces.parametric import output_whitening
    generator = torch.Generator().manual_seed(0)
    full = torch.randn(500, 4, generator=generator) @ torch.randn(4, 4, generator=generator)
    mean, whiten = output_whitening(full)
    torch.testing.assert_close(torch.cov(((full - mean) @ whiten).T), torch.eye(4), atol=1e-4, rtol=0)
    collapsed = torch.cat([full[:, :2], full[:, :1] * 2, torch.zeros(500, 1)], 1)    # rank 2 in 4 dimensions
    mean, whiten = output_whitening(collapsed)
    assert whiten.shape == (4, 2)
    torch.testing.assert_close(torch.cov(((collapsed - mean) @ whiten).T), torch.eye(2), atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch", [256, 1000, 2048, 37])
def test_negative_partners_are_a_shuffle_within_each_block(batch):
    """Every row of negative positions permutes each block of NEGATIVE_BLOCK edges onto itself, so a rank that holds
    whole blocks holds every partner of its edges."""
    from bayes_dc.spaces.parametric import NEGATIVE_BLOCK, negative_positions

    positions = negative_positions(batch, 5, torch.Generator().manual_seed(0))
    assert positions.shape == (5, batch)
    for row in positions:
        assert torch.equal(torch.sort(row).values, torch.arange(batch))            # a permutation
        assert torch.equal(row // NEGATIVE_BLOCK, torch.arange(batch) // NEGATIVE_BLOCK)   # within blocks
    assert not torch.equal(positions[0], positions[1])


@pytest.mark.parametrize("batch, world", [(2048, 2), (2048, 3), (1000, 4), (300, 2), (200, 3)])
def test_ranks_blocks_cover_the_batch_and_their_summed_gradient_is_the_one_process_gradient(batch, world):
    """The data-parallel encoder step: ranks take contiguous whole blocks of the global batch (together all of it,
    none twice; a rank may get none), and the sum of their losses and gradients, as the all-reduce forms it, equals
    the one-process loss and gradient of the whole batch."""
    from bayes_dc.spaces.parametric import negative_positions, rank_blocks, umap_loss

    spans = [rank_blocks(batch, r, world) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == batch
    assert all(spans[r][1] == spans[r + 1][0] for r in range(world - 1))
    generator = torch.Generator().manual_seed(0)
    encoder = new_encoder(6, 16, 3, generator)
    inputs = torch.randn(500, 6, generator=generator)
    head, tail = torch.randint(0, 500, (batch,), generator=generator), torch.randint(0, 500, (batch,), generator=generator)
    negatives = negative_positions(batch, 5, generator)

    def loss_and_grad(lo: int, hi: int) -> tuple[float, list[torch.Tensor]]:
        encoder.zero_grad(set_to_none=True)
        if hi == lo:
            return 0.0, [torch.zeros_like(p) for p in encoder.parameters()]
        both = encoder(inputs[torch.cat([head[lo:hi], tail[lo:hi]])])
        loss = umap_loss(both[:hi - lo], both[hi - lo:], 1.9, 0.8, negatives[:, lo:hi] - lo, batch)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in encoder.parameters()]

    whole_loss, whole_grad = loss_and_grad(0, batch)
    parts = [loss_and_grad(lo, hi) for lo, hi in spans]
    assert sum(loss for loss, _ in parts) == pytest.approx(whole_loss, rel=1e-5)
    for i, grad in enumerate(whole_grad):
        torch.testing.assert_close(sum(g[i] for _, g in parts), grad, rtol=1e-4, atol=1e-6)


def test_a_spectral_start_begins_where_a_random_start_ends():
    """The cold encoder regressed onto the graph's spectral embedding (umap-learn's layout init) fits it closely,
    and its first UMAP-loss epoch is already at or below the loss a random-weight encoder reaches after all of its
    epochs; the whole spectral fit ends lower."""
    x, labels = blobs(n_per=60, k=5, dim=20)
    kwargs = dict(dim=3, pca_dim=8, n_neighbors=10, hidden=32, epochs=4, batch_size=256)
    spectral = ParametricUMAPReducer(**kwargs).reduce(x, seed=0)
    random = ParametricUMAPReducer(init="random", **kwargs).reduce(x, seed=0)
    assert spectral.info["pumap_init_error"] < 0.1 and random.info["pumap_init_error"] is None
    assert spectral.state["loss"][0] <= random.state["loss"][-1]
    assert spectral.state["loss"][-1] < random.state["loss"][-1]


def test_distill_encoder_fits_a_smooth_target():
    """Regression onto a smooth function of the inputs: the relative squared error it reports is small and is the
    error of the returned encoder."""
    from bayes_dc.spaces.parametric import distill_encoder

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(600, 4, generator=generator)
    targets = torch.stack([inputs[:, 0] - inputs[:, 1], torch.tanh(inputs[:, 2]) * 2], 1)
    encoder = new_encoder(4, 32, 2, generator)
    error = distill_encoder(encoder, inputs, targets, steps=600, lr=1e-2, generator=generator)
    with torch.no_grad():
        direct = (encoder(inputs) - targets).pow(2).sum() / (targets - targets.mean(0)).pow(2).sum()
    assert error == pytest.approx(float(direct), rel=1e-5) and error < 0.02


def test_an_unknown_pumap_init_is_named():
    with pytest.raises(OptionError, match="^init must be one of spectral, random") as error:
        ParametricUMAPReducer(init="pca")
    assert error.value.option == "init"


def test_the_pair_loss_is_umaps_cross_entropy_of_the_two_views(pumap_round):
    """The parametric space's pair loss against the fuzzy-set cross-entropy written out (q = 1 / (1 + a d^2b)):
    -log q of each image's two views, -log(1 - q) of each view with the negatives' partners, over the batch; the
    gradient reaches the views (the trunk), and a space without a pair loss says so with None."""
    from bayes_dc.spaces.identity import IdentityReducer
    from bayes_dc.spaces.parametric import negative_positions
    from bayes_dc.spaces.pca import PCAReducer
    from bayes_dc.spaces.umap import UMAPReducer

    x, _, reducer, reduction = pumap_round
    view_a = x[:40].clone().requires_grad_(True)
    view_b = x[:40] + 0.1 * torch.randn(40, x.shape[1], generator=torch.Generator().manual_seed(1))
    loss = reducer.pair_loss(view_a, view_b, reduction.state, torch.Generator().manual_seed(5))
    negatives = negative_positions(40, reducer.negative_rate, torch.Generator().manual_seed(5))   # the same draw
    y_a, y_b = (reducer.transform(v, reduction.state).double() for v in (view_a, view_b))
    q = lambda u, v: 1 / (1 + reducer.a * ((u - v).pow(2).sum(1) + 1e-6) ** reducer.b)
    expected = -torch.log(q(y_a, y_b)).sum() - sum(torch.log1p(-q(y_a, y_b[row])).sum() for row in negatives)
    assert loss.item() == pytest.approx(expected.item() / 40, rel=1e-4)
    loss.backward()
    assert view_a.grad is not None and view_a.grad.abs().sum() > 0
    for space in (IdentityReducer(), PCAReducer(dim=4), UMAPReducer()):
        assert space.pair_loss(view_a, view_b, None, torch.Generator()) is None


def test_the_trainer_names_space_weight_when_the_space_has_no_pair_loss():
    from types import SimpleNamespace

    from bayes_dc.loop.trainer import SwappedViews, space_loss
    from bayes_dc.spaces.pca import PCAReducer

    ctx = SimpleNamespace(reducer=PCAReducer(dim=4))
    z = torch.randn(8, 6)
    with pytest.raises(OptionError, match="space_weight > 0 needs a space with a pair loss") as error:
        space_loss(ctx, z, z, SwappedViews(predictor={}, reduce_state=None), torch.Generator())
    assert error.value.option == "space_weight"
