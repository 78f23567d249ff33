"""Conjugate component math of the DP-GMM against Monte Carlo, direct formulas and the families' own E-step."""
import math

import pytest
import torch
from torch.distributions import Gamma, MultivariateNormal, Normal, Wishart

from bayes_dc.clustering import stick
from bayes_dc.clustering.dpgmm import math as nw
from bayes_dc.clustering.dpgmm.families import Components, make_family
from bayes_dc.clustering.dpgmm.prior import build_prior, updated_scale
from bayes_dc.clustering.dpgmm.sweep import moved_mass

DT = torch.float64


def _spd(d, generator, floor=0.5):
    a = torch.randn(d, d, generator=generator, dtype=DT)
    return a @ a.T / d + floor * torch.eye(d, dtype=DT)


def _normal_wishart(d, t, generator):
    """t random Normal-Wishart rows: m (t, d), kappa (t,), nu (t,), scale_tril (t, d, d)."""
    m = torch.randn(t, d, generator=generator, dtype=DT)
    kappa = 0.5 + torch.rand(t, generator=generator, dtype=DT) * 3
    nu = d + 1.0 + torch.rand(t, generator=generator, dtype=DT) * 6
    tril = torch.linalg.cholesky(torch.stack([_spd(d, generator) for _ in range(t)]))
    return m, kappa, nu, tril


def _mc(values):
    return float(values.mean()), float(values.std() / math.sqrt(values.shape[0]))


@pytest.mark.filterwarnings("ignore:Singular sample")
def test_normal_wishart_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    d, samples = 3, 200_000
    m, kappa, nu, tril = _normal_wishart(d, 1, g)
    # a prior near q keeps the Monte Carlo variance small enough to resolve a 0.05-nat error
    m0, kappa0, nu0 = m + 0.3 * torch.randn(1, d, generator=g, dtype=DT), 0.5 * kappa, nu - 1.0
    tril0 = torch.linalg.cholesky(tril @ tril.transpose(1, 2) * 1.3 + 0.2 * torch.eye(d, dtype=DT))
    closed = float(nw.normal_wishart_kl(m, kappa, nu, tril, m0, kappa0, nu0, tril0)[0])
    torch.manual_seed(1)

    def log_density(mm, kk, nn, ll, lam, mu):
        psi = ll[0] @ ll[0].T               # Lambda ~ Wishart(W = Psi^{-1}, nu): torch's precision_matrix is W^{-1}
        return (Wishart(nn[0], precision_matrix=psi).log_prob(lam)
                + MultivariateNormal(mm[0], precision_matrix=kk[0] * lam).log_prob(mu))

    lam = Wishart(nu[0], precision_matrix=tril[0] @ tril[0].T).sample((samples,))
    mu = MultivariateNormal(m[0].expand(samples, d), precision_matrix=kappa[0] * lam).sample()
    mc, se = _mc(log_density(m, kappa, nu, tril, lam, mu) - log_density(m0, kappa0, nu0, tril0, lam, mu))
    assert abs(closed - mc) < 4 * se, (closed, mc, se)
    assert abs((closed + 0.05) - mc) > 4 * se        # the check resolves a 0.05-nat error


@pytest.mark.filterwarnings("ignore:Singular sample")
def test_normal_wishart_expected_loglik_and_log_det_match_monte_carlo():
    g = torch.Generator().manual_seed(2)
    d, n, samples = 3, 7, 100_000
    m, kappa, nu, tril = _normal_wishart(d, 1, g)
    x = torch.randn(n, d, generator=g, dtype=DT) * 2
    r = torch.rand(n, generator=g, dtype=DT)
    stats = make_family("full", d).stats_from_dense(x, r[:, None])
    closed = float(nw.normal_wishart_expected_loglik(stats.counts, stats.sum_x, stats.sum_xx, m, kappa, nu, tril)[0])
    torch.manual_seed(3)
    lam = Wishart(nu[0], precision_matrix=tril[0] @ tril[0].T).sample((samples,))              # (S, d, d)
    mu = MultivariateNormal(m[0].expand(samples, d), precision_matrix=kappa[0] * lam).sample()  # (S, d)
    per_point = MultivariateNormal(mu[:, None, :], precision_matrix=lam[:, None]).log_prob(x)   # (S, n)
    mc, se = _mc(per_point @ r)
    assert abs(closed - mc) < 4 * se, (closed, mc, se)
    mc_logdet, se_logdet = _mc(torch.logdet(lam))
    assert abs(float(nw.expected_log_det_precision(nu, tril)[0]) - mc_logdet) < 4 * se_logdet


@pytest.mark.parametrize("spherical", [False, True])
def test_normal_gamma_kl_matches_monte_carlo(spherical):
    torch.manual_seed(1)
    m, m0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=DT), torch.tensor([[0.0, 0.0, 1.0]], dtype=DT)
    kappa, kappa0 = torch.tensor([4.0], dtype=DT), torch.tensor([1.0], dtype=DT)
    if spherical:
        a, b, a0, b0 = (torch.tensor([v], dtype=DT) for v in (6.0, 2.0, 2.0, 1.0))
    else:
        a, b = torch.tensor([[3.0, 2.0, 5.0]], dtype=DT), torch.tensor([[1.0, 2.0, 0.5]], dtype=DT)
        a0, b0 = torch.full((1, 3), 1.5, dtype=DT), torch.full((1, 3), 0.7, dtype=DT)
    closed = float(nw.normal_gamma_kl(m, kappa, a, b, m0, kappa0, a0, b0)[0])
    samples = 100_000
    lam = Gamma(a[0], b[0]).sample((samples,))                                      # (S,) or (S, d)
    lam_d = lam[:, None] if spherical else lam

    def log_density(mm, kk, aa, bb, mu):
        lp = Gamma(aa[0], bb[0]).log_prob(lam)
        return (lp if spherical else lp.sum(-1)) + Normal(mm[0], (kk[0] * lam_d).rsqrt()).log_prob(mu).sum(-1)

    mu = m[0] + torch.randn(samples, 3, dtype=DT) / (kappa[0] * lam_d).sqrt()
    mc, se = _mc(log_density(m, kappa, a, b, mu) - log_density(m0, kappa0, a0, b0, mu))
    assert abs(closed - mc) < 4 * se + 1e-9


def test_normal_wishart_posterior_is_bishop_and_prior_when_empty():
    g = torch.Generator().manual_seed(4)
    d, t = 4, 3
    family = make_family("full", d)
    m0, kappa0, nu0, tril0 = _normal_wishart(d, t, g)
    prior = Components(m0, kappa0, nu0, tril0)
    x = torch.randn(50, d, generator=g, dtype=DT) + 3
    resp = torch.rand(50, t, generator=g, dtype=DT)
    resp[:, 2] = 0.0                                                                # component 2 is empty
    stats = family.stats_from_dense(x, resp)
    q = family.posterior(stats, prior)
    for k in range(2):
        n_k = resp[:, k].sum()
        xbar = resp[:, k] @ x / n_k
        scatter = (resp[:, k, None] * (x - xbar)).T @ (x - xbar)                    # N_k S_k
        diff = (xbar - m0[k])[:, None]
        psi = tril0[k] @ tril0[k].T + scatter + kappa0[k] * n_k / (kappa0[k] + n_k) * diff @ diff.T   # eq. 10.62
        torch.testing.assert_close(q.scale[k] @ q.scale[k].T, psi)
        torch.testing.assert_close(q.m[k], (kappa0[k] * m0[k] + n_k * xbar) / (kappa0[k] + n_k))
        torch.testing.assert_close(q.dof[k], nu0[k] + n_k)
    for name in ("m", "kappa", "dof", "scale"):
        assert torch.equal(getattr(q, name)[2], getattr(prior, name)[2])
    assert float(family.kl(q, prior)[2]) == 0.0


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_terms_on_occupied_rows_equal_the_terms_of_every_row(covariance):
    """The M-step computes q and the bound's component terms on occupied rows only; empty rows are the prior, whose
    KL is 0, so the sum matches the all-rows formula."""
    g = torch.Generator().manual_seed(8)
    d, t = 3, 6
    family = make_family(covariance, d)
    x = torch.randn(80, d, generator=g, dtype=DT)
    prior = build_prior(family, x.mean(0), torch.cov(x.T), t, prior_scale=0.3).components
    resp = torch.softmax(torch.randn(80, t, generator=g, dtype=DT), 1)
    resp[:, [1, 4]] = 0.0
    stats = family.stats_from_dense(x, resp / resp.sum(1, keepdim=True))
    q = family.posterior(stats, prior)
    every_row = family._posterior(stats, prior)
    for name in ("m", "kappa", "dof", "scale"):
        torch.testing.assert_close(getattr(q, name)[[0, 2, 3, 5]], getattr(every_row, name)[[0, 2, 3, 5]])
        assert torch.equal(getattr(q, name)[[1, 4]], getattr(prior, name)[[1, 4]])
    terms = family.posterior_terms(stats, q, prior)
    torch.testing.assert_close(terms, family.component_terms(stats, q, prior), rtol=1e-12, atol=1e-9)
    assert float(terms[1]) == float(terms[4]) == 0.0 and bool((terms[[0, 2, 3, 5]] != 0).all())


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_estep_logits_equal_the_bound_per_point(covariance):
    """The chunked E-step's float32 GEMM gives, per point and component, exactly the bound's expected log-likelihood
    of that point alone plus E[log pi] (checked against the float64 formula used in the ELBO)."""
    g = torch.Generator().manual_seed(5)
    d, t, n = 5, 4, 30
    family = make_family(covariance, d)
    x = torch.randn(200, d, generator=g, dtype=DT)
    prior = build_prior(family, x.mean(0), torch.cov(x.T), t, prior_scale=0.3).components
    resp = torch.softmax(torch.randn(200, t, generator=g, dtype=DT) * 3, 1)
    q = family.posterior(family.stats_from_dense(x, resp), prior)
    e_log_pi = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=DT))
    points = torch.randn(n, d, generator=g, dtype=DT)
    xc = points.float()
    logits = family.logits(family.logit_operator(q, e_log_pi), xc, family.design(xc))      # (n, t) float32
    reference = torch.stack([family.expected_loglik(family.stats_from_dense(points[i:i + 1], torch.ones(1, t, dtype=DT)), q)
                             for i in range(n)]) + e_log_pi                                  # (n, t) float64
    torch.testing.assert_close(logits.double(), reference, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
@pytest.mark.parametrize("t", [5, 9])       # full covariance: one GEMM over all components / one per component
def test_sparse_weighted_sums_match_dense_statistics(covariance, t):
    g = torch.Generator().manual_seed(6)
    d, n, k = 4, 60, 3
    family = make_family(covariance, d)
    x = torch.randn(n, d, generator=g)
    values = torch.softmax(torch.randn(n, k, generator=g), 1)
    values[:5, 1:] = 0.0                                                             # zero-valued padding entries
    index = torch.stack([torch.randperm(t, generator=g)[:k] for _ in range(n)])
    raw = family.weighted_sums(values, index, x, t)
    dense = torch.zeros(n, t, dtype=DT).scatter_add_(1, index, values.double())
    expected = family.stats_from_dense(x.double(), dense)
    got = family.stats_from_raw(raw, expected.entropy)
    for name in ("counts", "sum_x", "sum_xx"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_empirical_bayes_scale_maximises_the_bound(covariance):
    g = torch.Generator().manual_seed(7)
    d, t = 3, 5
    family = make_family(covariance, d)
    x = torch.randn(300, d, generator=g, dtype=DT) * torch.tensor([1.0, 2.0, 0.5], dtype=DT)
    prior = build_prior(family, x.mean(0), torch.cov(x.T), t, prior_scale=0.5)
    resp = torch.softmax(torch.randn(300, t, generator=g, dtype=DT) * 2, 1)
    resp[:, 4] = 0.0
    resp = resp / resp.sum(1, keepdim=True)
    stats = family.stats_from_dense(x, resp)
    q = family.posterior(stats, prior.components)
    occupied = stats.counts > 0
    best = updated_scale(family, q, prior, occupied)

    def bound(scale):      # the part of the ELBO that depends on the prior scale, with q fixed
        return float(family.component_terms(stats, q, prior.with_scale(family, scale).components)[occupied].sum())

    assert best != pytest.approx(0.5)
    for factor in (0.9, 1.1, 0.5, 2.0):
        assert bound(best) > bound(best * factor)


def test_moved_mass_is_the_total_variation_between_top_k_rows():
    g = torch.Generator().manual_seed(9)
    n, t = 40, 7
    old_index = torch.stack([torch.randperm(t, generator=g)[:3] for _ in range(n)])          # (n, 3)
    new_index = torch.stack([torch.randperm(t, generator=g)[:4] for _ in range(n)])          # (n, 4)
    old_values = torch.softmax(torch.randn(n, 3, generator=g) * 2, 1)
    new_values = torch.softmax(torch.randn(n, 4, generator=g) * 2, 1)
    new_values[:5, 2:] = 0.0                                                                  # zero-valued padding
    new_values = new_values / new_values.sum(1, keepdim=True)
    new_index[0], new_values[0] = torch.cat([old_index[0], new_index[0, 3:]]), torch.cat([old_values[0], torch.zeros(1)])

    def dense(values, index):
        return torch.zeros(n, t, dtype=DT).scatter_add_(1, index, values.double())

    reference = 0.5 * (dense(old_values, old_index) - dense(new_values, new_index)).abs().sum(1)
    torch.testing.assert_close(moved_mass(old_values, old_index, new_values, new_index).double(), reference,
                               rtol=1e-5, atol=1e-6)
    assert float(moved_mass(old_values, old_index, new_values, new_index)[0]) < 1e-6   # the same row moved nothing


def test_stick_elbo_matches_monte_carlo_with_random_alpha():
    g1 = torch.tensor([3.0, 1.5, 2.0], dtype=DT)
    g2 = torch.tensor([2.0, 4.0, 1.0], dtype=DT)
    counts = torch.tensor([10.0, 4.0, 2.5, 1.0], dtype=DT)
    shape, rate, prior = torch.tensor(3.0, dtype=DT), torch.tensor(2.0, dtype=DT), (2.0, 1.5)
    e_alpha, e_log_alpha = shape / rate, torch.special.digamma(shape) - torch.log(rate)
    closed = float(stick.stick_elbo(counts, g1, g2, e_alpha, e_log_alpha) - stick.alpha_kl(shape, rate, prior))
    torch.manual_seed(8)
    samples = 400_000
    alpha = Gamma(shape, rate).sample((samples,))                                          # (S,)
    v = torch.distributions.Beta(g1, g2).sample((samples,))                                # (S, T-1)
    log_pi = torch.log(stick.mix_weights(v))
    log_p = (log_pi @ counts + torch.distributions.Beta(torch.ones_like(v), alpha[:, None].expand_as(v)).log_prob(v).sum(1)
             + Gamma(torch.tensor(prior[0], dtype=DT), torch.tensor(prior[1], dtype=DT)).log_prob(alpha))
    log_q = torch.distributions.Beta(g1, g2).log_prob(v).sum(1) + Gamma(shape, rate).log_prob(alpha)
    mc, se = _mc(log_p - log_q)
    assert abs(closed - mc) < 4 * se, (closed, mc, se)
