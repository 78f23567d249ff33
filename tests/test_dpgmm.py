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
from bayes_dc.clustering.dpgmm import DPGMM, DPGMMBackend, ConvergenceWarning
from bayes_dc.config import ClusterConfig

torch.set_num_threads(2)


def blobs(n, d, k, separation, seed):
    """Gaussian mixture with k clusters, per-cluster per-dimension scales in [0.5, 1.5]; returns (x, labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * separation
    labels = torch.randint(k, (n,), generator=g)
    scales = 0.5 + torch.rand(k, d, generator=g)
    return centres[labels] + torch.randn(n, d, generator=g) * scales[labels], labels.numpy()


def fit_quiet(model, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, **kwargs)


@pytest.mark.parametrize("covariance", ["diag", "spherical"])
@pytest.mark.parametrize("alpha_prior", [None, (1.0, 1.0)])
@pytest.mark.parametrize("seed,shape", [(0, (600, 5, 6)), (1, (900, 12, 4))])
def test_elbo_never_decreases(covariance, alpha_prior, seed, shape):
    n, d, k = shape
    x, _ = blobs(n, d, k, separation=1.2, seed=seed)          # overlapping clusters: many iterations
    model = fit_quiet(DPGMM(20, covariance=covariance, alpha_prior=alpha_prior, topk=3, tol=1e-9, max_iter=25,
                            init_iter=1), x, seed=seed)
    history = np.array(model.history_)
    assert len(history) >= 5
    assert np.all(np.diff(history) >= -1e-6 * np.abs(history[1:])), np.diff(history).min()


def test_seven_well_separated_clusters():
    x, labels = blobs(2100, 8, 7, separation=6.0, seed=0)
    result = DPGMMBackend(50, tol=1e-6, max_iter=300).fit(x, seed=0)
    assert result.k_active == 7
    assert nmi(labels, result.labels) >= 0.95
    assert np.isclose(result.weights.sum(), 1.0) and np.allclose(result.resp_values.sum(1), 1.0, atol=1e-5)


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


def _sklearn_bounds(cls, x, resp0, iterations):
    """Run scikit-learn's own E/M/bound loop from given initial responsibilities (priors = our defaults)."""
    bgm = cls(n_components=resp0.shape[1], covariance_type="diag", weight_concentration_prior_type="dirichlet_process",
              weight_concentration_prior=1.0, reg_covar=0.0)
    bgm._check_parameters(x)
    bgm._initialize(x, resp0)
    bounds = []
    for _ in range(iterations):
        log_prob_norm, log_resp = bgm._e_step(x)
        bgm._m_step(x, log_resp)
        bounds.append(bgm._compute_lower_bound(log_resp, log_prob_norm))
    return np.array(bounds), np.exp(log_resp).argmax(1)


def test_parity_with_sklearn_bayesian_gaussian_mixture():
    x, _ = blobs(600, 4, 3, separation=2.5, seed=3)
    n, t, iterations = 600, 6, 100
    rng = np.random.default_rng(0)
    # Random soft start on the first 4 components; the last stays empty because scikit-learn gives it a stick of its
    # own (T sticks) while the truncation here lets it absorb the remainder (T-1 sticks).
    resp0 = np.zeros((n, t))
    resp0[:, :4] = rng.dirichlet(np.ones(4), size=n)
    state = {"version": 1, "resp_values": torch.tensor(resp0, dtype=torch.float32),
             "resp_index": torch.arange(t).repeat(n, 1), "n_points": n, "dim": 4, "truncation": t, "alpha_posterior": None}
    ours = fit_quiet(DPGMM(t, topk=t, tol=1e-15, max_iter=iterations, min_size=0.0), x, seed=0, warm_state=state)
    ours_bounds = np.array(ours.history_)
    x64 = x.double().numpy()
    matched, matched_labels = _sklearn_bounds(DiagonalGammaBGM, x64, resp0, iterations)
    difference = ours_bounds - matched
    # constant offset = the constants scikit-learn drops; the remaining wobble is float32 E-step rounding
    assert np.ptp(difference) < 2e-5 * np.abs(matched).max(), difference
    stock, stock_labels = _sklearn_bounds(BayesianGaussianMixture, x64, resp0, iterations)
    ours_labels = ours.state_["resp_index"][:, 0].numpy()   # final ids; NMI ignores the relabelling
    assert nmi(matched_labels, ours_labels) >= 0.99
    assert nmi(stock_labels, ours_labels) >= 0.99


def _cold_and_state(x, **kwargs):
    backend = DPGMMBackend(30, tol=1e-7, max_iter=300, **kwargs)
    return backend, backend.fit(x, seed=0)


def test_warm_init_on_unchanged_features_converges_fast_to_cold_elbo():
    x, _ = blobs(1500, 6, 5, separation=3.0, seed=4)
    _, cold = _cold_and_state(x)
    warm = DPGMMBackend(30, tol=1e-7, max_iter=300, warm_start="init").fit(x, seed=1, warm_state=cold.state)
    assert warm.n_iter <= 3
    assert abs(warm.objective - cold.objective) <= 1e-5 * abs(cold.objective)
    assert np.allclose(warm.resp_values.sum(1), 1.0, atol=1e-5)


def test_prior_with_vanishing_decay_equals_init():
    x, _ = blobs(1500, 6, 5, separation=2.0, seed=5)
    _, cold = _cold_and_state(x)
    x_new = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    init = DPGMMBackend(30, tol=1e-7, max_iter=300, warm_start="init").fit(x_new, seed=0, warm_state=cold.state)
    prior = DPGMMBackend(30, tol=1e-7, max_iter=300, warm_start="prior", prior_decay=1e-8).fit(
        x_new, seed=0, warm_state=cold.state)
    assert prior.n_iter == init.n_iter
    np.testing.assert_allclose(prior.history, init.history, rtol=1e-6)
    assert (prior.labels == init.labels).all()
    np.testing.assert_array_equal(prior.permutation, init.permutation)


def test_prior_warm_start_keeps_previous_components():
    x, _ = blobs(1500, 6, 5, separation=2.0, seed=6)
    _, cold = _cold_and_state(x)
    result = DPGMMBackend(30, tol=1e-7, max_iter=300, warm_start="prior", prior_decay=0.5).fit(x, seed=0,
                                                                                            warm_state=cold.state)
    assert nmi(cold.labels, result.labels) >= 0.99
    assert result.info["elbo_init"] is not None


def test_permutation_tracks_identities():
    x, _ = blobs(1500, 6, 5, separation=3.0, seed=7)
    _, first = _cold_and_state(x)
    shuffle = torch.randperm(30, generator=torch.Generator().manual_seed(3))       # first-round id j -> shuffle[j]
    state = dict(first.state, resp_index=shuffle[first.state["resp_index"]])
    second = DPGMMBackend(30, tol=1e-7, max_iter=300).fit(x, seed=0, warm_state=state)
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
    assert a.objective == b.objective and a.history == b.history
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


@pytest.mark.parametrize("kwargs,match", [
    (dict(truncation=1), "truncation T must be >= 2"),
    (dict(alpha=0.0), "alpha must be > 0"),
    (dict(covariance="full"), r"unknown covariance 'full'.*\['diag', 'spherical'\]"),
    (dict(warm_start="hot"), r"unknown warm_start 'hot'.*\['none', 'init', 'prior'\]"),
    (dict(inference="mcmc"), r"unknown inference 'mcmc'.*\['cavi', 'svi'\]"),
    (dict(prior_decay=0.0), r"prior_decay \(rho\) must be in \(0, 1\]"),
    (dict(prior_decay=1.5), r"prior_decay \(rho\) must be in \(0, 1\]"),
])
def test_bad_options_raise(kwargs, match):
    kwargs = {"truncation": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        DPGMMBackend(**kwargs)


def test_bad_inputs_raise():
    x, _ = blobs(200, 4, 2, separation=3.0, seed=0)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 of 200 rows"):
        DPGMMBackend(10).fit(bad, seed=0)
    with pytest.raises(ValueError, match="lower --truncation to at most 200"):
        DPGMMBackend(300).fit(x, seed=0)
    state = DPGMMBackend(10).fit(x, seed=0).state
    with pytest.raises(ValueError, match="fitted on d=4 features but these have d=3"):
        DPGMMBackend(10).fit(x[:, :3], seed=0, warm_state=state)
    with pytest.raises(ValueError, match="N=200 points but got N=150"):
        DPGMMBackend(10).fit(x[:150], seed=0, warm_state=state)
    with pytest.raises(ValueError, match="truncation T=10 but this model has T=12"):
        DPGMMBackend(12).fit(x, seed=0, warm_state=state)


def test_prior_strength_keeps_mean_precision_and_refuses_nonpositive():
    from bayes_dc.clustering.dpgmm import DPGMM, default_prior
    x = torch.randn(500, 6) * torch.arange(1, 7)
    weak, strong = default_prior(x, 10), default_prior(x, 10, strength=8.0)
    assert torch.allclose(strong.a0, 8 * weak.a0) and torch.allclose(strong.a0 / strong.b0, weak.a0 / weak.b0)
    with pytest.raises(ValueError, match="prior-strength"):
        DPGMM(10, prior_strength=0.0)
