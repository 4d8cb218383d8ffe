"""The ELBO's terms against torch.distributions and the closed-form Gaussian constant."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from indpred.objective import elbo_terms, gaussian_log_likelihood, normal_kl


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    lv1, lv2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-5, atol=1e-6)


def test_normal_kl_zero_for_identical_and_closed_form_against_standard_normal():
    m, lv = torch.tensor([0.3, -1.2]), torch.tensor([0.5, -0.7])
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-7
    # KL(N(m, s²) || N(0, 1)) = ½ (s² + m² − 1 − ln s²)
    expected = 0.5 * (lv.exp() + m**2 - 1 - lv)
    torch.testing.assert_close(normal_kl(m, lv, torch.zeros(2), torch.zeros(2)), expected)


@pytest.mark.parametrize("var", [0.25, 0.05, 1.0])
def test_log_likelihood_matches_torch_normal(var):
    g = torch.Generator().manual_seed(1)
    x, mu = torch.rand(3, 4, generator=g), torch.rand(3, 4, generator=g)
    expected = Normal(mu, math.sqrt(var)).log_prob(x)
    torch.testing.assert_close(gaussian_log_likelihood(x, mu, math.log(var)), expected)


@pytest.mark.parametrize("var", [0.25, 0.05])
def test_elbo_constant_for_perfect_reconstruction_and_zero_kl(var):
    B, T, C, H, W, K, d = 2, 3, 3, 64, 64, 2, 4
    x = torch.rand(B, T, C, H, W)
    stats = torch.randn(B, T, K, d)
    terms = elbo_terms(x, x.clone(), math.log(var), stats, stats, stats, stats)
    n = C * H * W
    constant = -0.5 * n * math.log(2 * math.pi * var)  # per frame
    torch.testing.assert_close(terms.elbo, torch.full((B,), constant), rtol=1e-6, atol=1e-3)
    assert terms.kl.shape == (B, K) and terms.kl.abs().max() < 1e-5
    if var == 0.25:  # SPEC §1: about −2775 nats for 64x64x3 frames
        assert round(constant) == -2775


def test_elbo_terms_are_per_frame_sums():
    B, T, K, d = 2, 4, 3, 2
    x = torch.zeros(B, T, 1, 64, 64)
    xm = torch.full_like(x, 0.5)
    qm, qv = torch.randn(B, T, K, d), torch.randn(B, T, K, d)
    pm, pv = torch.randn(B, T, K, d), torch.randn(B, T, K, d)
    terms = elbo_terms(x, xm, 0.0, qm, qv, pm, pv)
    ll_expected = (-0.5 * (math.log(2 * math.pi) + 0.25)) * 64 * 64  # every pixel off by 0.5
    torch.testing.assert_close(terms.log_likelihood, torch.full((B,), ll_expected))
    kl_expected = kl_divergence(Normal(qm, (0.5 * qv).exp()), Normal(pm, (0.5 * pv).exp()))
    torch.testing.assert_close(terms.kl, kl_expected.sum(dim=(1, 3)) / T)
    torch.testing.assert_close(terms.elbo, terms.log_likelihood - terms.kl.sum(-1))
