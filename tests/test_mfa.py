"""The mfa covariance family (DP mixture of factor analysers): its E-step is the factor-analysis density, its bound
and its updates agree, CAVI never lowers the ELBO, and a fit recovers the clusters and factor counts of a known MFA."""
import warnings
from dataclasses import replace

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score as nmi

from bayes_dc.clustering.dpgmm import DPGMM, DPGMMBackend
from bayes_dc.clustering.dpgmm.engine import predict_responsibilities
from bayes_dc.clustering.dpgmm.families import make_family
from bayes_dc.clustering.dpgmm.mfa import FactorComponents, MFAFamily
from bayes_dc.config.rules import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 24
TRUE_FACTORS = (1, 2, 3, 2)


def sample_mfa(n_per=1000, dim=DIM, factors=TRUE_FACTORS, spread=4.0, seed=0):
    """Points (N, d) float32 and labels (N,) from a mixture of factor analysers, component j with factors[j]
    factors whose loadings have norms 2-4 noise standard deviations or more (so ARD should keep them all)."""
    g = torch.Generator().manual_seed(seed)
    points, labels = [], []
    for j, q in enumerate(factors):
        mean = spread * torch.randn(dim, generator=g)
        loadings = 1.5 * torch.randn(dim, q, generator=g)
        noise = 0.1 + 0.2 * torch.rand(dim, generator=g)
        x = mean + torch.randn(n_per, q, generator=g) @ loadings.T + torch.randn(n_per, dim, generator=g) * noise.sqrt()
        points.append(x)
        labels.append(torch.full((n_per,), j))
    return torch.cat(points).float(), torch.cat(labels)


def fit(x, *, truncation=12, seed=0, **options):
    """A CAVI fit of the mfa family (at most 5 factors per component unless ``options`` say otherwise)."""
    options = {"covariance": "mfa", "factors": 5, "max_iter": 100, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPGMM(truncation, **options).fit(x, seed=seed)


def point_mass(mean, loadings, noise, sharpness=1e9):
    """FactorComponents (K rows) whose q(theta) is (nearly) a point mass at (mean, loadings, noise variances)."""
    k, d, q = loadings.shape
    dof = torch.full((k,), sharpness, dtype=torch.float64)
    return FactorComponents(
        m=mean, kappa=torch.full((k,), sharpness, dtype=torch.float64), dof=dof, scale=dof[:, None] * noise,
        loadings=loadings, precision=sharpness * torch.eye(q + 1, dtype=torch.float64).expand(k, q + 1, q + 1).clone(),
        ard_shape=torch.ones(k, q, dtype=torch.float64), ard_rate=torch.ones(k, q, dtype=torch.float64))


def test_e_step_is_the_low_rank_normal_density_at_a_point_mass_posterior():
    g = torch.Generator().manual_seed(1)
    k, d, q = 3, 20, 3
    mean = torch.randn(k, d, generator=g, dtype=torch.float64)
    loadings = torch.randn(k, d, q, generator=g, dtype=torch.float64)
    noise = 0.2 + torch.rand(k, d, generator=g, dtype=torch.float64)
    x = torch.randn(50, d, generator=g)
    family = MFAFamily(d, factors=q)
    log_pi = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    op = family.logit_operator(point_mass(mean, loadings, noise), log_pi)
    logits = family.logits(op, x, None).double() - log_pi
    reference = torch.stack([torch.distributions.LowRankMultivariateNormal(mean[j], loadings[j], noise[j])
                             .log_prob(x.double()) for j in range(k)], 1)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-3)


def test_bound_from_statistics_equals_the_sum_of_e_step_logits():
    """expected_loglik (from N_k, sum x, sum x x^T) is sum_n r_nk (logit_nk - E log pi_k) under a q with real
    uncertainty (a fitted one): the bound the moves score and the E-step the sweeps run are the same function."""
    x, _ = sample_mfa(n_per=150, dim=12, factors=(1, 2))
    model = fit(x, truncation=6)
    q = model.params_in_input_coordinates().components
    live = (model.counts_ > 0).nonzero()[:, 0]
    q = q.rows(live)
    family = model.family
    resp = torch.softmax(torch.randn(x.shape[0], live.shape[0], generator=torch.Generator().manual_seed(0)), 1)
    stats = family.stats_from_dense(x.double(), resp.double())
    e_log_pi = torch.zeros(live.shape[0], dtype=torch.float64)
    logits = family.logits(family.logit_operator(q, e_log_pi), x, None).double()   # float32 E-step
    torch.testing.assert_close(family.expected_loglik(stats, q), (resp.double() * logits).sum(0), rtol=1e-5, atol=1e-2)


def test_update_is_a_stationary_point_of_the_bound():
    """Iterated to convergence, the M-step is a local maximum of expected log-likelihood - KL: small moves of any
    variational parameter lower it (checks the KL and the updates against each other)."""
    x, _ = sample_mfa(n_per=200, dim=10, factors=(2,), spread=0.0)
    family = MFAFamily(10, factors=3)
    model = fit(x, truncation=4, factors=3, moves="none")
    prior = model._prior.components.rows(torch.tensor([0]))
    stats = model._state.stats.rows(torch.tensor([0]))
    q = family.posterior(stats, prior)
    for _ in range(300):
        q = family.posterior(stats, prior, q)
    best = float(family.component_terms(stats, q, prior)[0])
    g = torch.Generator().manual_seed(0)
    eps = 1e-4
    moves = {
        "m": lambda c, s: replace(c, m=c.m + s * torch.randn(c.m.shape, generator=g, dtype=torch.float64)),
        "loadings": lambda c, s: replace(c, loadings=c.loadings + s * torch.randn(c.loadings.shape, generator=g,
                                                                                  dtype=torch.float64)),
        "scale": lambda c, s: replace(c, scale=c.scale * (1 + s * torch.randn(c.scale.shape, generator=g,
                                                                              dtype=torch.float64))),
        "dof": lambda c, s: replace(c, dof=c.dof * (1 + s)),
        "precision": lambda c, s: replace(c, precision=c.precision * (1 + s)),
        "ard_rate": lambda c, s: replace(c, ard_rate=c.ard_rate * (1 + s * torch.randn(c.ard_rate.shape, generator=g,
                                                                                         dtype=torch.float64))),
        "ard_shape": lambda c, s: replace(c, ard_shape=c.ard_shape * (1 + s)),
    }
    for name, move in moves.items():
        for sign in (1.0, -1.0):
            moved = float(family.component_terms(stats, move(q, sign * eps), prior)[0])
            assert moved <= best + 1e-7 * abs(best), (name, sign, moved - best)


def test_cavi_elbo_never_decreases():
    x, _ = sample_mfa(n_per=400, spread=1.0, seed=3)
    model = fit(x, moves="none", tol=1e-6, max_iter=15)
    trace = torch.tensor(model.elbo_trace_, dtype=torch.float64)
    assert trace.numel() == 15
    # the engine's ELBO is summed in float32 in places: allow its rounding, not a real decrease
    assert bool((trace.diff() >= -1e-6 * trace.abs().max()).all()), trace.diff().min()


def _start(x, labels, t=10):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPGMM(t, covariance="mfa", factors=4).start_from(x, torch.ones(x.shape[0], 1), labels[:, None])


@pytest.mark.parametrize("start,moves,expected", [("halves", "merge", 4), ("joined", "split", 4)])
def test_moves_scored_by_the_bound_repair_a_wrong_partition(start, moves, expected):
    """From each true cluster cut in two (merges must join them) or from two clusters joined (a split must cut
    them), rounds of one move reach the true K and every accepted move raises the ELBO."""
    x, labels = sample_mfa(n_per=300, seed=4)
    if start == "halves":
        labels = 2 * labels + (torch.arange(labels.shape[0]) % 2)
    else:
        labels = labels.clamp_max(2)
    model = _start(x, labels)
    values = [model.elbo_]
    for _ in range(8):
        if not model.move_round([moves]):
            break
        values.append(model.elbo_)
    assert len(values) > 1 and all(b > a for a, b in zip(values, values[1:]))
    assert int((model._state.stats.counts > 1).sum()) == expected


def test_recovers_the_clusters_and_the_factor_count_of_each():
    x, labels = sample_mfa()
    model = fit(x)
    active = model.counts_ > 1.0
    assert int(active.sum()) == len(TRUE_FACTORS)
    assert nmi(labels.numpy(), model.labels_.numpy()) > 0.99
    found = model.family.active_factors(model.params_in_input_coordinates().components)
    for j, q in enumerate(TRUE_FACTORS):
        component = int(torch.mode(model.labels_[labels == j]).values)
        assert int(found[component]) == q, (j, found[component], q)


def test_same_seed_same_fit_and_predictor_agrees_with_labels():
    x, _ = sample_mfa(n_per=300, spread=2.0, seed=5)
    a, b = fit(x, seed=7), fit(x, seed=7)
    assert torch.equal(a.labels_, b.labels_) and a.lower_bound_ == b.lower_bound_
    _, index = predict_responsibilities(a.predictor(), x, topk=2)
    assert float((index[:, 0] == a.labels_).float().mean()) > 0.99


@pytest.mark.parametrize("factors", [0, -2, 2.5, True])
def test_bad_factors_name_the_option(factors):
    with pytest.raises(OptionError, match="factors"):
        DPGMM(4, covariance="mfa", factors=factors)


def test_more_factors_than_dimensions_is_refused_at_fit():
    x, _ = sample_mfa(n_per=20, dim=6, factors=(1,))
    with pytest.raises(OptionError, match=r"factors.*at most the feature dimension d = 6.*pca_dim"):
        DPGMM(4, covariance="mfa", factors=7).fit(x)
    with pytest.raises(OptionError, match="factors"):
        make_family("mfa", 6, factors=7)


def test_novelty_is_refused_not_approximated():
    x, _ = sample_mfa(n_per=100, dim=8, factors=(1, 1))
    backend = DPGMMBackend(truncation=4, covariance="mfa", factors=2)
    model = fit(x, truncation=4, factors=2)
    with pytest.raises(ValueError, match="novelty.*not available for covariance mfa"):
        backend.novelty(model.predictor(), x)


def test_svi_has_no_mfa_model():
    with pytest.raises(OptionError, match="inference.*cavi"):
        DPGMMBackend(truncation=4, inference="svi", covariance="mfa")
