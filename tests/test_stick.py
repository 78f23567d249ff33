"""Stick-breaking and KL helpers against torch.distributions and Monte Carlo."""
import math

import torch
from torch.distributions import Beta, Gamma, kl_divergence

from bayes_dc.clustering import stick


def test_mix_weights_sum_to_one_and_match_definition():
    v = torch.rand(4, 6, dtype=torch.float64)                                    # (batch, T-1)
    w = stick.mix_weights(v)                                                     # (batch, T)
    assert w.shape == (4, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, dtype=torch.float64))
    expected = torch.stack([v[:, k] * torch.prod(1 - v[:, :k], dim=1) for k in range(6)]
                           + [torch.prod(1 - v, dim=1)], dim=1)
    torch.testing.assert_close(w, expected)


def test_expected_log_pi_and_weights_match_monte_carlo():
    g1 = torch.tensor([3.0, 1.5, 2.0, 1.0], dtype=torch.float64)
    g2 = torch.tensor([2.0, 4.0, 1.0, 0.7], dtype=torch.float64)
    torch.manual_seed(0)
    samples = stick.mix_weights(Beta(g1, g2).sample((200_000,)))                   # (S, T)
    mc_log = torch.log(samples).mean(0)
    se = torch.log(samples).std(0) / math.sqrt(samples.shape[0])
    assert (stick.expected_log_pi(g1, g2) - mc_log).abs().le(4 * se).all()
    weights = stick.expected_weights(g1, g2)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(weights, samples.mean(0), atol=3e-3, rtol=0)


def test_beta_and_gamma_kl_match_torch():
    g1, g2 = torch.tensor([2.0, 0.5, 7.0], dtype=torch.float64), torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)
    torch.testing.assert_close(stick.beta_kl(g1, g2, 1.0, 2.5), kl_divergence(Beta(g1, g2), Beta(torch.ones(3, dtype=torch.float64), torch.full((3,), 2.5, dtype=torch.float64))))
    a, b = torch.tensor([3.0, 0.4], dtype=torch.float64), torch.tensor([2.0, 5.0], dtype=torch.float64)
    a0, b0 = torch.tensor([1.5, 2.0], dtype=torch.float64), torch.tensor([0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(stick.gamma_kl(a, b, a0, b0), kl_divergence(Gamma(a, b), Gamma(a0, b0)))


def _normal_gamma_kl_mc(m, beta, a, b, m0, beta0, a0, b0, samples=100_000):
    """Monte Carlo E_q[log q - log p] for one component; a, b scalar (spherical) or (d,) (diag)."""
    lam = Gamma(a, b).sample((samples,))                                         # (S,) or (S, d)
    lam_d = lam[:, None] if a.dim() == 0 else lam
    mu = m + torch.randn(samples, m.shape[0], dtype=m.dtype) / (beta * lam_d).sqrt()
    def log_density(mm, bb, aa, rr):
        lp_lam = Gamma(aa, rr).log_prob(lam)
        lp_lam = lp_lam if aa.dim() == 0 else lp_lam.sum(-1)
        return lp_lam + torch.distributions.Normal(mm, (bb * lam_d).rsqrt()).log_prob(mu).sum(-1)
    diff = log_density(m, beta, a, b) - log_density(m0, beta0, a0, b0)
    return diff.mean(), diff.std() / math.sqrt(samples)


def test_normal_gamma_kl_matches_monte_carlo_diag_and_spherical():
    torch.manual_seed(1)
    dt = torch.float64
    m, m0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=dt), torch.tensor([[0.0, 0.0, 1.0]], dtype=dt)
    beta, beta0 = torch.tensor([4.0], dtype=dt), torch.tensor([1.0], dtype=dt)
    for a, b, a0, b0 in [(torch.tensor([[3.0, 2.0, 5.0]], dtype=dt), torch.tensor([[1.0, 2.0, 0.5]], dtype=dt),
                          torch.tensor([[1.5, 1.5, 1.5]], dtype=dt), torch.tensor([[0.7, 0.7, 0.7]], dtype=dt)),
                         (torch.tensor([6.0], dtype=dt), torch.tensor([2.0], dtype=dt),
                          torch.tensor([2.0], dtype=dt), torch.tensor([1.0], dtype=dt))]:
        closed = stick.normal_gamma_kl(m, beta, a, b, m0, beta0, a0, b0)           # (1,)
        mc, se = _normal_gamma_kl_mc(m[0], beta[0], a[0], b[0], m0[0], beta0[0], a0[0], b0[0])
        assert abs(float(closed[0]) - float(mc)) < 4 * float(se) + 1e-9
