"""Test-set bounds: the importance-weighted bound against the ELBO and a closed form."""

import torch

from indpred.config import ModelConfig
from indpred.eval.elbo import importance_weighted_bound
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo


def model_and_frames():
    torch.manual_seed(0)
    model = FactoredVAE(ModelConfig(factors=2, factor_dim=3, width=0.125, transition_hidden=16)).eval()
    return model, torch.rand(3, 4, 3, 64, 64)


def test_one_sample_bound_averages_to_the_analytic_kl_elbo():
    """With S = 1 the bound is a single-sample ELBO (Monte Carlo KL): same mean."""
    model, x = model_and_frames()
    g = torch.Generator().manual_seed(3)
    one = torch.stack([importance_weighted_bound(model, x, samples=1, generator=g) for _ in range(100)])
    with torch.no_grad():
        analytic = torch.stack([sequence_elbo(model, x, generator=g).elbo for _ in range(100)])
    diff = one.mean(0) - analytic.mean(0)
    stderr = (one.var(0) / 100 + analytic.var(0) / 100).sqrt()
    assert (diff.abs() < 4 * stderr + 1e-3).all(), (diff, stderr)


def test_more_samples_never_loosen_the_bound_on_average():
    model, x = model_and_frames()
    g = torch.Generator().manual_seed(1)
    one = torch.stack([importance_weighted_bound(model, x, samples=1, generator=g) for _ in range(16)])
    many = importance_weighted_bound(model, x, samples=64, generator=g)
    assert (many >= one.mean(0) - 1e-3).all()
