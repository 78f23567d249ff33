"""Closed-form CAVI DP-GMM: monotone ELBO, recovery, scikit-learn parity, warm starts, identities, errors."""
import io
import warnings

import numpy as np
import pytest
import torch
from scipy.special import digamma, gammaln
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.mixture import BayesianGaussianMixture

from bayes_dc.clustering import make_backend
from bayes_dc.clustering.dpgmm import DPGMM, ClusterCountWarning, ConvergenceWarning, DPGMMBackend, make_family
from bayes_dc.clustering.dpgmm.prior import build_prior
from bayes_dc.config.rules import OptionError
from bayes_dc.config.schema import ClusterConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n, d, k, separation, seed):
    """Gaussian mixture with k clusters, per-cluster per-dimension scales in [0.5, 1.5]; returns (x, labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * separation
    labels = torch.randint(k, (n,), generator=g)
    scales = 0.5 + torch.rand(k, d, generator=g)
    return centres[labels] + torch.randn(n, d, generator=g) * scales[labels], labels.numpy()


def elongated(n, d, k, seed, condition=25.0):
    """k Gaussians with randomly rotated covariances of condition number ``condition`` (std ratio its square root),
    centres on a sphere of radius 4 sqrt(d) (reasonably separated); returns (x, labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    centres = centres / centres.norm(dim=1, keepdim=True) * 4.0 * d ** 0.5
    labels = torch.randint(k, (n,), generator=g)
    x = torch.empty(n, d)
    stds = torch.logspace(0, 0.5 * np.log10(condition), d)
    for j in range(k):
        rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        rows = (labels == j).nonzero()[:, 0]
        x[rows] = centres[j] + (torch.randn(len(rows), d, generator=g) * stds[torch.randperm(d, generator=g)]) @ rotation.T
    return x, labels.numpy()


def fit_quiet(model, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ClusterCountWarning)
        return model.fit(x, **kwargs)


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
@pytest.mark.parametrize("alpha_prior", [None, (1.0, 1.0)])
@pytest.mark.parametrize("seed,shape", [(0, (600, 5, 6)), (1, (900, 12, 4))])
def test_elbo_never_decreases_through_sweeps_and_moves(covariance, alpha_prior, seed, shape):
    n, d, k = shape
    x, _ = blobs(n, d, k, separation=1.2, seed=seed)          # overlapping clusters: many iterations and moves
    model = fit_quiet(DPGMM(20, covariance=covariance, alpha_prior=alpha_prior, topk=3, tol=1e-9, max_iter=25,
                            init_iter=2, move_every=2), x, seed=seed)
    history, trace = np.array(model.history_), np.array(model.elbo_trace_)
    assert len(history) >= 5
    assert np.all(np.diff(trace) >= -1e-6 * np.abs(trace[1:])), np.diff(trace).min()
    accepted = {name: counts["accepted"] for name, counts in model.moves_.items() if name != "sort"}
    assert sum(accepted.values()) > 0, model.moves_       # the trace covers accepted moves, not only sweeps


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_seven_well_separated_clusters(covariance):
    x, labels = blobs(2100, 8, 7, separation=6.0, seed=0)
    result = DPGMMBackend(50, covariance=covariance).fit(x, seed=0)          # default tol and max_iter
    assert result.k_active == 7
    assert nmi(labels, result.labels) >= 0.95
    assert np.isclose(result.weights.sum(), 1.0) and np.allclose(result.resp_values.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("n,d", [(10_000, 8), (10_000, 32), (60_000, 8), (60_000, 32)])
def test_full_dp_finds_ten_elongated_clusters_at_any_n_and_d(n, d):
    """K should not drift with N or d: ten rotated Gaussians of condition number 25, T = 100."""
    x, labels = elongated(n, d, 10, seed=0)
    result = DPGMMBackend(100, covariance="full").fit(x, seed=0)
    assert result.k_active == 10, result.info
    assert nmi(labels, result.labels) >= 0.95


def test_cold_start_seeds_cover_every_cluster_of_label_sorted_input():
    """Seeding from the first rows of a sorted subsample would see only the first classes of sorted data."""
    x, labels = blobs(8000, 4, 10, separation=10.0, seed=3)
    order = np.argsort(labels, kind="stable")
    x, labels = x[torch.from_numpy(order)], labels[order]
    model = fit_quiet(DPGMM(20, covariance="diag", moves="none", init_iter=0, max_iter=1), x, seed=0)
    found = model.labels_.numpy()
    majority = {k: np.bincount(labels[found == k], minlength=10).argmax() for k in np.unique(found)}
    assert set(majority.values()) == set(range(10))             # every class is some component's majority


class DiagonalGammaBGM(BayesianGaussianMixture):
    """scikit-learn's diag model with its two Wishart-only terms replaced by their per-dimension Gamma form.

    For covariance_type="diag", scikit-learn still uses the full-Wishart expectation
    E[log|Lambda|] = sum_{i<d} psi((nu - i)/2) + ... and normaliser sum_{i<d} lgamma((nu - i)/2); a product of
    d independent Gamma(nu/2, .) precisions has d psi(nu/2) and d lgamma(nu/2). Everything else is scikit-learn's.
    """

    def _estimate_log_prob(self, X, xp=None):
        nu, d = self.degrees_of_freedom_, X.shape[1]
        wishart = digamma(0.5 * (nu - np.arange(d)[:, None])).sum(0)
        return super()._estimate_log_prob(X) + 0.5 * (d * digamma(0.5 * nu) - wishart)

    def _compute_lower_bound(self, log_resp, log_prob_norm):
        nu, d = self.degrees_of_freedom_, self.mean_prior_.shape[0]
        wishart = gammaln(0.5 * (nu - np.arange(d)[:, None])).sum(0)
        return super()._compute_lower_bound(log_resp, log_prob_norm) - wishart.sum() + d * gammaln(0.5 * nu).sum()


def _sklearn_bounds(cls, covariance, x, resp0, iterations, prior):
    """Run scikit-learn's own E/M/bound loop from given initial responsibilities, with our prior."""
    bgm = cls(n_components=resp0.shape[1], covariance_type=covariance, weight_concentration_prior_type="dirichlet_process",
              weight_concentration_prior=1.0, reg_covar=0.0, **prior)
    bgm._check_parameters(x)
    bgm._initialize(x, resp0)
    bounds = []
    for _ in range(iterations):
        log_prob_norm, log_resp = bgm._e_step(x)
        bgm._m_step(x, log_resp)
        bounds.append(bgm._compute_lower_bound(log_resp, log_prob_norm))
    return np.array(bounds), np.exp(log_resp).argmax(1)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_parity_with_sklearn_bayesian_gaussian_mixture(covariance):
    """Same prior, same start: scikit-learn's bound and our ELBO differ by a constant over 100 iterations."""
    x, _ = blobs(600, 4, 3, separation=2.5, seed=3)
    n, d, t, iterations = 600, 4, 6, 100
    scale, dof, kappa0 = 0.3, 5.0, 0.5
    rng = np.random.default_rng(0)
    # Random soft start on the first 5 components; the last stays empty because scikit-learn gives it a stick of its
    # own (T sticks) while the truncation here lets it absorb the remainder (T-1 sticks).
    resp0 = np.zeros((n, t))
    resp0[:, :5] = rng.dirichlet(np.ones(5), size=n)
    state = {"version": 1, "resp_values": torch.tensor(resp0, dtype=torch.float32),
             "resp_index": torch.arange(t).repeat(n, 1), "n_points": n, "dim": d, "truncation": t, "alpha_posterior": None}
    ours = fit_quiet(DPGMM(t, covariance=covariance, topk=t, tol=1e-15, max_iter=iterations, min_size=0.0,
                           moves="none", prior_scale=scale, prior_dof=dof, kappa0=kappa0), x, seed=0, warm_state=state)
    x64 = x.double().numpy()
    data_cov = np.cov(x64.T)
    prior = dict(mean_precision_prior=kappa0, mean_prior=x64.mean(0))
    if covariance == "full":    # Psi0 = s (nu0 - d - 1) C with nu0 = d - 1 + dof
        prior.update(degrees_of_freedom_prior=d - 1 + dof, covariance_prior=scale * (dof - 2) * data_cov)
        cls = BayesianGaussianMixture
    else:                       # Gamma(a0 = dof / 2, b0 = s var (a0 - 1)) is scikit-learn's nu0 = dof, cov = 2 b0
        prior.update(degrees_of_freedom_prior=dof, covariance_prior=scale * (dof - 2) * np.diag(data_cov))
        cls = DiagonalGammaBGM
    theirs, their_labels = _sklearn_bounds(cls, covariance, x64, resp0, iterations, prior)
    difference = np.array(ours.history_) - theirs
    # constant offset = the constants scikit-learn drops; the remaining wobble is float32 E-step rounding
    assert np.ptp(difference) < 2e-5 * np.abs(theirs).max(), difference
    assert np.ptp(theirs) > 100 * np.ptp(difference)          # the bound moved far more than the offset did
    ours_labels = ours.state_["resp_index"][:, 0].numpy()     # final ids; NMI ignores the relabelling
    assert nmi(their_labels, ours_labels) >= 0.99


def _cold_and_state(x, **kwargs):
    backend = DPGMMBackend(30, tol=1e-4, max_iter=300, **kwargs)
    return backend, backend.fit(x, seed=0)


def test_warm_init_on_unchanged_features_converges_fast_to_cold_elbo():
    x, _ = blobs(1500, 6, 5, separation=3.0, seed=4)
    _, cold = _cold_and_state(x)
    warm = DPGMMBackend(30, tol=1e-4, max_iter=300, warm_start="init").fit(x, seed=1, warm_state=cold.state)
    assert warm.n_iter == 1          # the first E-step moves (almost) nothing, and a move round accepts nothing
    assert abs(warm.objective - cold.objective) <= 1e-5 * abs(cold.objective)
    assert np.allclose(warm.resp_values.sum(1), 1.0, atol=1e-5)


def test_prior_with_vanishing_decay_equals_init():
    x, _ = blobs(1500, 6, 5, separation=2.0, seed=5)
    _, cold = _cold_and_state(x)
    x_new = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    # no moves: a warm "prior" gives every component its own prior, so it never reorders the sticks
    init = DPGMMBackend(30, tol=1e-4, max_iter=300, warm_start="init", moves="none").fit(
        x_new, seed=0, warm_state=cold.state)
    prior = DPGMMBackend(30, tol=1e-4, max_iter=300, warm_start="prior", prior_decay=1e-12, moves="none").fit(
        x_new, seed=0, warm_state=cold.state)
    assert prior.n_iter == init.n_iter
    np.testing.assert_allclose(prior.history, init.history, rtol=1e-6)
    assert (prior.labels == init.labels).all()
    np.testing.assert_array_equal(prior.permutation, init.permutation)
    assert prior.info["elbo_comparable"] is False and init.info["elbo_comparable"] is True


def test_prior_warm_start_keeps_previous_components():
    x, _ = blobs(1500, 6, 5, separation=2.0, seed=6)
    _, cold = _cold_and_state(x)
    result = DPGMMBackend(30, tol=1e-4, max_iter=300, warm_start="prior", prior_decay=0.5).fit(x, seed=0,
                                                                                            warm_state=cold.state)
    assert nmi(cold.labels, result.labels) >= 0.99
    assert result.info["elbo_init"] is not None


def test_permutation_tracks_identities():
    x, _ = blobs(1500, 6, 5, separation=3.0, seed=7)
    _, first = _cold_and_state(x)
    shuffle = torch.randperm(30, generator=torch.Generator().manual_seed(3))       # first-round id j -> shuffle[j]
    state = dict(first.state, resp_index=shuffle[first.state["resp_index"]])
    second = DPGMMBackend(30, tol=1e-4, max_iter=300).fit(x, seed=0, warm_state=state)
    kept = first.active
    # the component called shuffle[j] in the warm state is first-round component j again
    assert (second.permutation[shuffle.numpy()[kept]] == np.arange(30)[kept]).all()
    assert (second.labels == first.labels).all()
    reset = second.permutation < 0
    assert reset.sum() == 30 - len(set(second.permutation[~reset]))
    assert np.all(second.weights[: (~reset).sum()] >= second.weights[(~reset).sum():].max() - 1e-12)


def test_same_seed_same_result_and_small_picklable_state():
    x, _ = blobs(1200, 6, 4, separation=2.0, seed=8)
    a = DPGMMBackend(25, topk=4).fit(x, seed=11)
    b = DPGMMBackend(25, topk=4).fit(x, seed=11)
    assert a.objective == b.objective and a.history == b.history and a.info["moves"] == b.info["moves"]
    np.testing.assert_array_equal(a.resp_values, b.resp_values)
    np.testing.assert_array_equal(a.resp_index, b.resp_index)
    np.testing.assert_array_equal(a.permutation, b.permutation)
    buffer = io.BytesIO()
    torch.save(a.state, buffer)
    assert buffer.tell() < 1200 * 4 * 12 + 4096              # top-k values + indices and a few scalars
    buffer.seek(0)
    restored = torch.load(buffer)
    torch.testing.assert_close(restored["resp_index"], a.state["resp_index"])


def test_backend_from_config_registry():
    cfg = ClusterConfig(prior="dp", truncation=12, topk=3, max_iter=300, tol=1e-6)
    backend = make_backend(cfg)
    assert isinstance(backend, DPGMMBackend) and backend.name == "dp" and backend.has_identities
    x, labels = blobs(800, 4, 3, separation=5.0, seed=2)
    result = backend.fit(x, seed=0)
    assert result.resp_values.shape == (800, 3) and result.k_active == 3 and nmi(labels, result.labels) > 0.95
    assert result.info["covariance"] == "full" and result.info["moves"]["merge"]["accepted"] >= 1
    assert result.info["move_seconds"] >= 0 and result.info["elbo_comparable"] is True


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_prior_scale_is_the_expected_cluster_covariance(covariance):
    x = torch.randn(500, 3, dtype=torch.float64) @ torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 0.2]],
                                                                 dtype=torch.float64)
    cov = torch.cov(x.T)
    family = make_family(covariance, 3)
    for dof in (3.0, 7.0):
        p = build_prior(family, x.mean(0), cov, 4, prior_scale=0.2, prior_dof=dof).components
        if covariance == "full":          # E[Sigma] = Psi0 / (nu0 - d - 1), nu0 = d + 2 by default
            expected = p.scale[0] @ p.scale[0].T / (p.dof[0] - 3 - 1)
            torch.testing.assert_close(expected, 0.2 * cov)
            assert float(p.dof[0]) == 3 - 1 + dof
        else:                             # E[sigma^2] = b0 / (a0 - 1), a0 = dof / 2
            target = torch.diag(cov) if covariance == "diag" else torch.diag(cov).mean()
            torch.testing.assert_close(p.scale[0] / (p.dof[0] - 1), 0.2 * target)
            assert torch.all(p.dof[0] == dof / 2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(truncation=1), "`truncation` must be >= 2"),
    (dict(alpha=0.0), "`alpha` must be > 0"),
    (dict(covariance="banded"), r"unknown covariance 'banded'.*\['full', 'diag', 'spherical', 'mfa'\].*`covariance`"),
    (dict(warm_start="hot"), r"unknown warm_start 'hot'.*\['none', 'init', 'prior'\]"),
    (dict(inference="mcmc"), r"unknown inference 'mcmc'.*\['cavi', 'svi'\]"),
    (dict(prior_decay=0.0), r"`prior_decay` must be > 0 and <= 1"),
    (dict(prior_decay=1.5), r"`prior_decay` must be > 0 and <= 1"),
    (dict(prior_scale=0.0), r"`prior_scale` must be > 0"),
    (dict(prior_scale=-1.0), r"`prior_scale` must be > 0"),
    (dict(prior_scale=torch.tensor([[1.0, 2.0], [2.0, 1.0]])), r"not positive definite.*`prior_scale`"),
    (dict(prior_scale=torch.tensor([1.0, -0.5])), r"must all be > 0.*`prior_scale`"),
    (dict(prior_dof=2.0), r"`prior_dof` must be > 2"),
    (dict(kappa0=0.0), r"`kappa0` must be > 0"),
    (dict(moves="merge,jump"), r"unknown move 'jump'.*`moves`"),
    (dict(tol=0.0), r"`tol` must be > 0 and < 1"),
    (dict(tol=1.0), r"`tol` must be > 0 and < 1"),
    (dict(prior_scale_update=True, warm_start="prior"), r"prior_scale_update=True needs one prior.*warm_start='init'"),
])
def test_bad_options_raise(kwargs, match):
    """The engine names its parameters (an OptionError naming the first key given), never command-line flags."""
    kwargs = {"truncation": 10, **kwargs}
    with pytest.raises(OptionError, match=match) as err:
        DPGMMBackend(**kwargs)
    assert err.value.option in kwargs and "--" not in str(err.value)


def test_a_warm_start_survives_a_change_of_dimension():
    """Warm starts go through responsibilities, so new features of the same points may have another dimension."""
    from sklearn.metrics import adjusted_rand_score
    x, _ = blobs(200, 4, 2, separation=6.0, seed=0)
    first = DPGMMBackend(10).fit(x, seed=0)
    warm = DPGMMBackend(10).fit(x[:, :3], seed=1, warm_state=first.state)
    assert warm.info["warm_start"] == "init"
    assert adjusted_rand_score(first.labels, warm.labels) > 0.9


def test_bad_inputs_raise():
    x, _ = blobs(200, 4, 2, separation=3.0, seed=0)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 of 200 rows"):
        DPGMMBackend(10).fit(bad, seed=0)
    with pytest.raises(OptionError, match="lower `truncation` to at most 200"):
        DPGMMBackend(300).fit(x, seed=0)
    state = DPGMMBackend(10).fit(x, seed=0).state
    with pytest.raises(ValueError, match="N=200 points but got N=150"):
        DPGMMBackend(10).fit(x[:150], seed=0, warm_state=state)
    with pytest.raises(ValueError, match="truncation T=10 but this model has T=12"):
        DPGMMBackend(12).fit(x, seed=0, warm_state=state)
    collinear = torch.cat([x, x[:, :1]], 1)                # a duplicated dimension: singular data covariance
    with pytest.raises(OptionError, match="singular.*`pca_dim`.*covariance='diag'"):
        DPGMMBackend(10).fit(collinear, seed=0)
    with pytest.raises(OptionError, match=r"prior scale tensor for covariance='full' must have shape \(4, 4\)"):
        DPGMMBackend(10, prior_scale=torch.ones(4)).fit(x, seed=0)


def test_full_covariance_refused_beyond_the_memory_limit():
    x = torch.randn(300, 1024)
    with pytest.raises(OptionError, match=r"full covariance for T=300 components of d=1024.*GiB.*covariance='diag'"):
        DPGMMBackend(300, covariance="full").fit(x, seed=0)
    with pytest.raises(ValueError, match=r"d=64.*limit 0\.0 GiB"):
        DPGMMBackend(10, covariance="full", memory_limit=1000).fit(torch.randn(100, 64), seed=0)


def test_cluster_count_warning_names_the_fix():
    x, _ = blobs(500, 3, 1, separation=0.0, seed=1)              # one Gaussian: K_active ends at 1
    with pytest.warns(ClusterCountWarning, match="K_active=1.*--prior-scale"):
        DPGMM(10, covariance="full").fit(x, seed=0)


def test_predicted_responsibilities_are_the_fits_e_step_on_new_points():
    """The predictor scores new points exactly as the fitted q's E-step does (a fresh E-step over the same live
    components), and honours the allowed-components mask."""
    import torch as T

    from bayes_dc.clustering.dpgmm.engine import predict_responsibilities

    x, labels = blobs(3000, 5, 4, separation=5.0, seed=3)
    backend = DPGMMBackend(20, topk=3)
    result = backend.fit(x, seed=0)
    engine = DPGMM(20, topk=3).fit(x, seed=0)
    live = engine.live_components()
    sweep = engine._sweeper.estep(engine.logit_operator(live), live, 3)
    values, index = predict_responsibilities(engine.predictor(), x, 3)
    assert T.equal(index, sweep.index) and T.allclose(values, sweep.values, atol=1e-5)
    v2, i2 = backend.responsibilities(result.predictor, x)
    assert nmi(labels, i2[:, 0].numpy()) > 0.95
    allowed = T.zeros(20, dtype=T.bool)
    allowed[int(i2[0, 0])] = True
    _, only = backend.responsibilities(result.predictor, x[:10], allowed=allowed)
    assert set(only[:, 0].tolist()) == {int(i2[0, 0])}
