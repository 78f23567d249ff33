"""The finite Bayesian GMM (``--prior dirichlet``): monotone ELBO, weights, K recovered by pruning, its weight ELBO
terms against an independent reference, determinism, clear refusals, and an end-to-end run."""
import warnings

import numpy as np
import pytest
import torch
from scipy.special import digamma, gammaln
from scipy.stats import dirichlet as scipy_dirichlet
from sklearn.metrics import normalized_mutual_info_score as nmi

from bayes_dc.clustering import make_backend
from bayes_dc.clustering.dirichlet import DirichletGMMBackend, SymmetricDirichlet
from bayes_dc.clustering.dpgmm import DPGMM, ClusterCountWarning, ConvergenceWarning
from bayes_dc.config.cli import config_from_args
from bayes_dc.config.rules import OptionError
from bayes_dc.config.schema import ClusterConfig, unused_options
from bayes_dc.loop import pipeline
from test_dpgmm import blobs   # k Gaussian clusters: (x (n, d), labels (n,))

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(fit, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ClusterCountWarning)
        return fit(*args, **kwargs)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_elbo_never_decreases_through_sweeps_and_moves(covariance):
    x, _ = blobs(600, 5, 6, separation=1.2, seed=0)     # overlapping clusters: many iterations and moves
    model = DPGMM(20, covariance=covariance, alpha=0.5, topk=3, tol=1e-9, max_iter=25, init_iter=2, move_every=2,
                  weights=SymmetricDirichlet.from_options)
    quiet(model.fit, x, seed=0)
    trace = np.array(model.elbo_trace_)
    assert len(model.history_) >= 5
    assert np.all(np.diff(trace) >= -1e-6 * np.abs(trace[1:])), np.diff(trace).min()


def test_recovers_k_of_a_well_separated_mixture_with_t_well_above_k():
    """T = 40 components for 5 clusters: a small concentration (alpha / T = 0.0025 each) prunes the other 35."""
    x, labels = blobs(1500, 6, 5, separation=8.0, seed=1)
    result = quiet(DirichletGMMBackend(40, alpha=0.1, covariance="full").fit, x, seed=0)
    assert result.k_active == 5 and result.k_used == 5
    assert nmi(labels, result.labels) >= 0.95
    assert np.isclose(result.weights.sum(), 1.0, atol=1e-9) and np.all(result.weights >= 0)
    assert np.allclose(result.resp_values.sum(1), 1.0, atol=1e-5)
    assert result.info["alpha_mean"] == 0.1


def test_weight_elbo_terms_match_an_independent_reference():
    """sum_k N_k E[log pi_k] + E[log p(pi)] + H[q(pi)] for q = Dirichlet(alpha / T + N): E[log pi] by Monte Carlo
    (numpy's Dirichlet sampler), the log-normaliser and the entropy by scipy, against the closed form in torch."""
    counts = np.array([40.0, 25.5, 3.0, 0.7, 0.0, 0.0])
    prior = SymmetricDirichlet(alpha=1.5, truncation=counts.size)
    a0 = 1.5 / counts.size
    gamma = prior.update(torch.tensor(counts, dtype=torch.float64), None)
    np.testing.assert_allclose(gamma.numpy(), a0 + counts)                  # Bishop (2006) eq. 10.58

    samples = np.random.default_rng(0).dirichlet(a0 + counts, size=400_000)
    log_pi = np.log(np.clip(samples, 1e-300, None))
    mc, se = log_pi.mean(0), log_pi.std(0) / np.sqrt(len(samples))
    closed = prior.expected_log_weights(gamma).numpy()
    assert np.all(np.abs(closed - mc) < 5 * se + 1e-9), (closed, mc, se)

    e_log_pi = digamma(a0 + counts) - digamma((a0 + counts).sum())
    log_prior = gammaln(a0 * counts.size) - counts.size * gammaln(a0) + (a0 - 1) * e_log_pi.sum()
    reference = (counts * e_log_pi).sum() + log_prior + scipy_dirichlet(a0 + counts).entropy()
    assert float(prior.elbo(torch.tensor(counts, dtype=torch.float64), gamma)) == pytest.approx(reference, rel=1e-10)
    weights = prior.expected_weights(gamma)
    assert float(weights.sum()) == pytest.approx(1.0) and np.allclose(weights.numpy(), samples.mean(0), atol=1e-3)


def test_the_optimal_weights_maximise_their_elbo_terms():
    """gamma = alpha / T + N is the coordinate optimum: any other Dirichlet scores lower."""
    counts = torch.tensor([30.0, 10.0, 2.0, 0.0], dtype=torch.float64)
    prior = SymmetricDirichlet(alpha=0.4, truncation=4)
    best = float(prior.elbo(counts, prior.update(counts, None)))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = prior.update(counts, None) * torch.exp(0.3 * torch.randn(4, generator=g, dtype=torch.float64))
        assert float(prior.elbo(counts, other)) < best


def test_same_seed_same_result():
    x, _ = blobs(500, 4, 4, separation=3.0, seed=2)
    cfg = ClusterConfig(prior="dirichlet", truncation=15, alpha=0.5, covariance="diag", max_iter=20)
    first, second = (quiet(make_backend(cfg).fit, x, seed=3) for _ in range(2))
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.weights, second.weights)
    assert first.objective == second.objective and first.history == second.history


def test_the_dps_own_options_are_refused_or_unused():
    with pytest.raises(OptionError, match="alpha_prior") as err:
        make_backend(ClusterConfig(prior="dirichlet", alpha_prior=(1.0, 1.0)))
    assert err.value.option == "alpha_prior"
    with pytest.raises(OptionError, match="CAVI only") as err:
        make_backend(ClusterConfig(prior="dirichlet", inference="svi"))
    assert err.value.option == "inference"
    assert unused_options({"prior": "dirichlet", "alpha_prior": (1.0, 1.0), "inference": "svi", "svi_steps": 5,
                           "k": 5, "truncation": 10, "covariance": "diag", "alpha": 0.1}) \
        == {"alpha_prior", "inference", "svi_steps", "k"}


def test_run_py_prior_dirichlet_end_to_end(tmp_path):
    """The command line to the run directory, as experiments/run.py does, with soft targets and a kept head."""
    cfg = config_from_args([
        "--dataset", "synthetic", "--subset", "300", "--width", "4", "--pca-dim", "6",
        "--reduce", "pca", "--extract-batch", "300", "--prior", "dirichlet", "--truncation", "20", "--alpha", "0.5",
        "--max-iter", "30", "--targets", "soft", "--head", "keep", "--epochs", "1", "--eval-split", "none",
        "--batch-size", "64", "--out-dir", str(tmp_path), "--name", "dirichlet", "--no-progress", "--no-figures"])
    assert cfg.cluster.prior == "dirichlet" and cfg.default_name().startswith("synthetic-dirichlet-T20-init-soft-e1")
    final = quiet(pipeline.run, cfg)
    assert final["phase"] == "final" and 1 <= final["k_active"] <= 20
    assert (tmp_path / "dirichlet" / "metrics.jsonl").exists()
