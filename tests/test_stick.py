"""Stick-breaking math against its definition and Monte Carlo (the stick ELBO terms: tests/test_dp_math.py)."""
import math

import torch
from torch.distributions import Beta

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


def test_stick_update_maximises_the_stick_terms():
    counts = torch.tensor([30.0, 12.0, 5.0, 0.5, 0.0], dtype=torch.float64)
    alpha = torch.tensor(1.7, dtype=torch.float64)
    g1, g2 = stick.update_sticks(counts, alpha)
    best = stick.stick_elbo(counts, g1, g2, alpha, torch.log(alpha))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        noise = torch.exp(0.1 * torch.randn(2, 4, generator=generator, dtype=torch.float64))
        assert stick.stick_elbo(counts, g1 * noise[0], g2 * noise[1], alpha, torch.log(alpha)) < best
