"""The Pyro model is the same model as the closed-form engine: Trace_ELBO cross-check, and Pyro SVI recovery."""
import warnings

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score as nmi

from bayes_dc.clustering import pyro_model
from bayes_dc.clustering.dpgmm import DPGMM, DPGMMBackend, elbo


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


def _seven_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(7, 8, generator=g) * 6.0
    labels = torch.randint(7, (700,), generator=g)
    x = centres[labels] + torch.randn(700, 8, generator=g) * (0.5 + torch.rand(7, 8, generator=g))[labels]
    return x, labels.numpy()


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_svi_engine_recovers_seven_clusters(covariance):
    """100 SVI steps from 50 seeded components: the clusters are found (NMI 0.885 diag, 0.886 full when written)
    though SVI, unlike CAVI with moves (NMI 1.0, K 7), has not pruned every spare component yet."""
    x, labels = _seven_clusters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = DPGMMBackend(50, inference="svi", covariance=covariance, svi_steps=100, svi_batch=128,
                              svi_lr=0.1).fit(x, seed=0)
    assert nmi(labels, result.labels) >= 0.85
    assert result.k_active < 25
    assert result.info["inference"] == "svi" and len(result.history) == 100
    assert result.history[-1] > result.history[0] + 0.3          # nats per point gained by the SVI steps


def test_svi_uses_the_engine_prior():
    """fit_svi builds its prior through DPGMM.make_prior, so --prior-scale reaches the Pyro model."""
    x, _ = _seven_clusters()
    narrow, wide = (DPGMM(10, covariance="full", prior_scale=s).make_prior(x)[0] for s in (0.01, 1.0))
    psi = [p.components.scale[0] @ p.components.scale[0].T for p in (narrow, wide)]
    torch.testing.assert_close(psi[1], 100.0 * psi[0])
