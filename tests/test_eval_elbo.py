"""Test-set bounds: the importance-weighted bound against the ELBO, a closed form and a hand-computed
logsumexp."""

import math

import numpy as np
import pytest
import torch

from indpred.config import ModelConfig
from indpred.eval.elbo import importance_weighted_bound
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo
from tests.test_eval_reference import calibrate_batch_norm, log_weights, logsumexp


def model_and_frames():
    torch.manual_seed(0)
    model = FactoredVAE(ModelConfig(factors=2, factor_dim=3, width=0.125, transition_hidden=16)).eval()
    return model, torch.rand(3, 4, 3, 64, 64)


def repeats(x, n):
    """``n`` copies of each sequence of x (B, T, ...), copy-major: (n·B, T, ...)."""
    return x.repeat(n, *[1] * (x.dim() - 1))


def test_one_sample_bound_averages_to_the_analytic_kl_elbo():
    """With S = 1 the bound is a single-sample ELBO (Monte Carlo KL): same mean (100 draws each,
    drawn in one batch of copies of the sequences)."""
    model, x = model_and_frames()
    g = torch.Generator().manual_seed(3)
    one = importance_weighted_bound(model, repeats(x, 100), samples=1, generator=g).view(100, len(x))
    with torch.no_grad():
        analytic = sequence_elbo(model, repeats(x, 100), generator=g).elbo.view(100, len(x))
    diff = one.mean(0) - analytic.mean(0)
    stderr = (one.var(0) / 100 + analytic.var(0) / 100).sqrt()
    assert (diff.abs() < 4 * stderr + 1e-3).all(), (diff, stderr)


def test_more_samples_never_loosen_the_bound_on_average():
    model, x = model_and_frames()
    g = torch.Generator().manual_seed(1)
    one = importance_weighted_bound(model, repeats(x, 16), samples=1, generator=g).view(16, len(x))
    many = importance_weighted_bound(model, x, samples=64, generator=g)
    assert (many >= one.mean(0) - 1e-3).all()


@pytest.mark.parametrize("order", [1, 2])
def test_bound_is_the_logsumexp_of_hand_computed_log_weights(order):
    """log (1/S Σ_s p(x, z_s) / q(z_s | x)) / T per sequence, with z_s the filter's samples drawn
    from the same seed, every log density written out in NumPy and the logsumexp in math."""
    torch.manual_seed(0)
    model = FactoredVAE(ModelConfig(factors=2, factor_dim=3, width=0.125, transition_hidden=16,
                                    transition_order=order))
    model = calibrate_batch_norm(model, [torch.rand(6, 4, 3, 64, 64)])
    B, S, T = 3, 5, 4
    x = torch.rand(B, T, 3, 64, 64)
    bound = importance_weighted_bound(model, x, samples=S, generator=torch.Generator().manual_seed(9))
    repeated = x.repeat_interleave(S, dim=0)  # sequence-major: sequence b's samples side by side
    with torch.no_grad():
        f = model.filter(repeated, generator=torch.Generator().manual_seed(9))
    w = log_weights(model, repeated, f.z, f.post_mean, f.post_logvar, f.prior_mean, f.prior_logvar)
    expected = [(logsumexp(row) - math.log(S)) / T for row in w.reshape(B, S)]
    assert np.ptp(w.reshape(B, S), axis=1).min() > 1.0  # the weights differ: not a plain mean
    np.testing.assert_allclose(bound.numpy(), expected, rtol=1e-6)
    elbo_mc = w.reshape(B, S).mean(1) / T  # Jensen: the bound is never below the mean log weight
    assert (bound.numpy() >= elbo_mc - 1e-3).all()
