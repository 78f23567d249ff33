"""The Pyro model is the same model as the closed-form engine (Trace_ELBO cross-check), its guide samples are
always valid, and minibatch Pyro SVI agrees with CAVI."""
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score as nmi

from bayes_dc.clustering import pyro_model
from bayes_dc.clustering.dpgmm import DPGMM, DPGMMBackend, elbo
from bayes_dc.clustering.dpgmm.engine import ConvergenceWarning

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


def _two_blobs(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shift = torch.zeros(d)
    shift[0] = 3.0
    return torch.randn(n, d, generator=g) + shift * torch.randint(2, (n, 1), generator=g)


@pytest.mark.filterwarnings("ignore:Singular sample")
@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
@pytest.mark.parametrize("alpha_prior", [None, (2.0, 1.0)])
def test_closed_form_elbo_matches_pyro_trace_elbo(covariance, alpha_prior):
    x, t = _two_blobs(), 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # topk = T: full responsibilities, so the guide's Categorical(r) is the engine's q(z) exactly
        engine = DPGMM(t, covariance=covariance, alpha_prior=alpha_prior, topk=t, max_iter=3, min_size=0.0,
                       moves="none").fit(x, seed=0)
    q, prior = engine.params_in_input_coordinates(), engine.prior_in_input_coordinates
    resp = torch.zeros(x.shape[0], t, dtype=torch.float64).scatter_(1, engine.resp_index_, engine.resp_values_.double())
    x64 = x.double()
    closed = elbo(engine.family, engine.family.stats_from_dense(x64, resp), q, prior)
    assert abs(closed - engine.lower_bound_) < 1e-4 * abs(closed)      # engine's own bookkeeping agrees
    mc, se = pyro_model.trace_elbo(x64, prior, q, resp, particles=500, batches=10, seed=1)
    assert abs(mc - closed) <= 3 * se, (mc, se, closed)
    # the check has teeth: dropping the Gaussian log-normaliser of one dimension is far outside 3 SE
    assert abs(mc - (closed - 0.5 * x.shape[0] * pyro_model.stick.LOG_2PI)) > 3 * se


def _seven_clusters(n=700, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(7, 8, generator=g) * 6.0
    labels = torch.randint(7, (n,), generator=g)
    x = centres[labels] + torch.randn(n, 8, generator=g) * (0.5 + torch.rand(7, 8, generator=g))[labels]
    return x, labels.numpy()


def test_wishart_root_density_is_the_wishart_density_of_its_square():
    """log q(G) = log Wishart(G G^T) + log |d(G G^T)/dG|, with the Jacobian 2^d prod_i G_ii^i of an upper-triangular
    root; and its samples are upper triangular with a positive diagonal."""
    g = torch.Generator().manual_seed(0)
    d = 4
    a = torch.randn(3, d, d, generator=g, dtype=torch.float64)
    psi_tril = torch.linalg.cholesky(a @ a.transpose(-1, -2) + d * torch.eye(d, dtype=torch.float64))
    dof = torch.tensor([d - 0.5, d + 2.0, 40.0], dtype=torch.float64)
    root = pyro_model.WishartRoot(dof, psi_tril)
    torch.manual_seed(0)
    sample = root.rsample((5,))                                                    # (5, 3, d, d)
    assert torch.equal(sample, sample.triu()) and bool((sample.diagonal(dim1=-2, dim2=-1) > 0).all())
    reference = torch.distributions.Wishart(dof, precision_matrix=psi_tril @ psi_tril.transpose(-1, -2))
    diag = sample.diagonal(dim1=-2, dim2=-1)
    jacobian = d * math.log(2) + (torch.arange(1, d + 1, dtype=torch.float64) * diag.log()).sum(-1)
    torch.testing.assert_close(root.log_prob(sample), reference.log_prob(sample @ sample.transpose(-1, -2)) + jacobian)


def test_wishart_root_samples_are_valid_at_extreme_parameters():
    """dof just above d - 1 and a Psi with condition number 1e12: torch's Wishart warns of singular samples there;
    every root drawn here is finite with a positive diagonal, so G G^T is positive definite."""
    d = 10
    psi_tril = torch.diag(torch.logspace(-6, 0, d, dtype=torch.float64))
    root = pyro_model.WishartRoot(torch.tensor([d - 1 + 1e-3, d - 1 + 0.5], dtype=torch.float64), psi_tril)
    torch.manual_seed(0)
    sample = root.rsample((2000,))
    diag = sample.diagonal(dim1=-2, dim2=-1)
    assert bool(torch.isfinite(sample).all()) and bool((diag > 0).all())


def _svi(x, t, covariance, *, steps, batch=256, seed=0, check_every=None, **kwargs):
    engine = DPGMM(t, covariance=covariance, **kwargs)
    return pyro_model.fit_svi(engine, x, seed=seed, steps=steps, batch_size=batch, lr=0.05, check_every=check_every)


def test_no_guide_sample_is_ever_invalid_over_a_fit_with_many_empty_components(monkeypatch):
    """T = 100 components for 2 blobs: almost all empty. Every precision root the guide draws in 60 steps of SVI is
    finite with a positive diagonal (so its precision is positive definite), and the empty components are not in
    the guide at all (they stay at their prior, which adds 0 to the ELBO)."""
    drawn = []
    original = pyro_model.WishartRoot.rsample

    def recording(self, sample_shape=torch.Size()):
        value = original(self, sample_shape)
        drawn.append(value.detach())
        return value
    monkeypatch.setattr(pyro_model.WishartRoot, "rsample", recording)
    x = _two_blobs(n=400, d=6)
    engine = _svi(x, 100, "full", steps=60, batch=64, check_every=1000)
    live = engine.svi_spec_.live.numel()
    assert len(drawn) >= 60 and live <= 10                # one draw per step, and those of the convergence checks
    roots = torch.cat([value.reshape(-1, live, 6, 6) for value in drawn])         # (draws, K, d, d)
    assert bool(torch.isfinite(roots).all()) and bool((roots.diagonal(dim1=-2, dim2=-1) > 0).all())
    assert int(torch.linalg.cholesky_ex(roots @ roots.transpose(-1, -2)).info.max()) == 0


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_svi_and_cavi_find_the_same_clusters_and_bound(covariance):
    """4,000 points, 7 true clusters, T = 50; SVI starts from a 500-point subsample and sees the rest in minibatches
    of 256. Same K as CAVI, labels agree (NMI >= 0.95), and SVI's ELBO (z collapsed, 100 particles, all points)
    is within 0.05 nats per point of CAVI's closed-form bound (measured when written: SVI 0.014 below
    it for full, 0.021 for diag)."""
    x, labels = _seven_clusters(n=4000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cavi = DPGMMBackend(50, covariance=covariance, init_subsample=500).fit(x, seed=0)
        engine = _svi(x, 50, covariance, steps=400, init_subsample=500)
    svi_labels = engine.labels_.numpy()
    assert int((engine.weights_ > 0.005).sum()) == cavi.k_active == 7
    assert nmi(cavi.labels, svi_labels) >= 0.95 and nmi(labels, svi_labels) >= 0.95
    svi_elbo = pyro_model.svi_objective(engine, x, particles=100)
    assert abs(svi_elbo / x.shape[0] - cavi.objective) < 0.05, (svi_elbo / x.shape[0], cavi.objective)


def test_svi_same_seed_same_result_and_warm_start_is_honoured():
    x, _ = _seven_clusters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = DPGMMBackend(30, inference="svi", covariance="diag", svi_steps=50, svi_batch=128)
        first, second = backend.fit(x, seed=3), backend.fit(x, seed=3)
        # a warm start from a fit that used only 3 components keeps SVI on those 3 (SVI has no moves)
        previous = DPGMMBackend(3, covariance="diag", moves="none").fit(x, seed=0)
        state = dict(previous.state, truncation=30)
        warm = backend.fit(x, seed=3, warm_state=state)
    assert first.history == second.history and (first.labels == second.labels).all()
    assert warm.k_active <= 3 and nmi(previous.labels, warm.labels) >= 0.95


def test_svi_warns_when_it_stops_on_its_step_budget():
    x, _ = _seven_clusters()
    with pytest.warns(ConvergenceWarning, match="--svi-steps"):
        engine = _svi(x, 20, "diag", steps=5)
    assert engine.n_iter_ == 5 and not engine.converged_


def test_non_finite_elbo_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(pyro_model.SVI, "step", lambda self, *args, **kwargs: float("nan"))
    x, _ = _seven_clusters()
    with pytest.raises(ValueError, match="non-finite at step 1; lower --svi-lr"):
        _svi(x, 20, "diag", steps=5)


def test_run_py_inference_svi_end_to_end_on_the_defaults(tmp_path):
    """experiments/run.py --inference svi with the default DP-GMM (T = 300, full covariance by default) on 300
    images. PCA-10 instead of the default UMAP space only to keep numba's compile time out of the test. The
    diagonal family takes the same path in process (the next test): one subprocess run is enough for the wiring."""
    out = subprocess.run([sys.executable, "experiments/run.py", "--dataset", "synthetic", "--subset", "300",
                          "--eval-subset", "100", "--width", "4", "--epochs", "1", "--inference", "svi",
                          "--reduce", "pca", "--pca-dim", "10", "--threads", "1",
                          "--out-dir", str(tmp_path), "--name", "svi", "--no-progress", "--no-figures"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Singular sample" not in out.stderr and "PositiveDefinite" not in out.stderr
    record = json.loads((tmp_path / "svi" / "metrics.jsonl").read_text().splitlines()[0])
    info = record["backend_info"]
    assert info["inference"] == "svi" and info["covariance"] == "full"
    assert 2 <= record["k_active"] < 300 and math.isfinite(record["objective"]) and math.isfinite(info["svi_elbo"])


def test_svi_on_the_default_diagonal_dp_gmm_through_the_pipelines_backend():
    """--inference svi --covariance diag with every other cluster option at its default (T = 300, SVI steps, batch,
    learning rate), built as the pipeline builds it (make_backend), on 300 whitened PCA-10 points of the synthetic
    images: no invalid sample, a finite bound, and K well inside the truncation."""
    from bayes_dc.clustering import make_backend
    from bayes_dc.config.schema import Config
    from bayes_dc.data import load_dataset
    from bayes_dc.spaces.pca import PCAReducer

    cluster = Config().cluster
    cluster.inference, cluster.covariance = "svi", "diag"
    images = load_dataset("synthetic", "train", subset=300, seed=0).images
    x = PCAReducer(10).reduce(images.reshape(300, -1).float() / 255.0, seed=0).points
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make_backend(cluster).fit(x, seed=0)
    texts = " ".join(str(w.message) for w in caught)
    assert "Singular sample" not in texts and "PositiveDefinite" not in texts
    assert result.info["inference"] == "svi" and result.info["covariance"] == "diag"
    assert 2 <= result.k_active < 300 and math.isfinite(result.objective) and math.isfinite(result.info["svi_elbo"])


def test_svi_uses_the_engine_prior():
    """fit_svi builds its prior through DPGMM.make_prior, so --prior-scale reaches the Pyro model."""
    x, _ = _seven_clusters()
    narrow, wide = (DPGMM(10, covariance="full", prior_scale=s).make_prior(x)[0] for s in (0.01, 1.0))
    psi = [p.components.scale[0] @ p.components.scale[0].T for p in (narrow, wide)]
    torch.testing.assert_close(psi[1], 100.0 * psi[0])
