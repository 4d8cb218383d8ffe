"""Independent generations, channel changes and prediction against hand-built references."""

import numpy as np
import torch

from indpred.config import ModelConfig
from indpred.eval.generations import (
    channel_change,
    factor_groups,
    independent_generations,
    predict,
    psnr,
)
from indpred.model import FactoredVAE


def tiny_model(K=2, d=3):
    torch.manual_seed(0)
    return FactoredVAE(ModelConfig(factors=K, factor_dim=d, width=0.125, transition_hidden=16)).eval()


def test_factor_groups():
    assert factor_groups(3, 2) == [[0, 1], [2, 3], [4, 5]]


def test_independent_generation_moves_only_one_factor():
    model = tiny_model()
    means = torch.randn(2, 4, 2, 3)
    gens = independent_generations(model, means, factor_groups(2, 3))
    assert gens.shape == (2, 2, 4, 3, 64, 64)
    for k in range(2):
        z = means[:, :1].repeat(1, 4, 1, 1)
        z[:, :, k] = means[:, :, k]
        with torch.no_grad():
            torch.testing.assert_close(gens[k], model.decode(z))
    # an arbitrary partition of units (entangled models)
    gens = independent_generations(model, means, [[0, 4], [1, 2, 3, 5]])
    z = means[:, :1].repeat(1, 4, 1, 1).reshape(2, 4, 6)
    z[:, :, [0, 4]] = means.reshape(2, 4, 6)[:, :, [0, 4]]
    with torch.no_grad():
        torch.testing.assert_close(gens[0], model.decode(z.reshape(2, 4, 2, 3)))


def test_channel_change_on_synthetic_generations():
    gens = torch.zeros(2, 1, 3, 3, 4, 4)  # (G, B, T, C, H, W)
    gens[0, 0, 1:, 0] = 1.0  # group 0 changes channel 0 everywhere after t = 0
    gens[1, 0, 2, 1, :2] = 0.5  # group 1 changes half of channel 1 at t = 2 only
    delta = channel_change(gens, objects=2)
    np.testing.assert_allclose(delta, [[1.0, 0.0], [0.0, 0.5 * 0.5 * 0.5]])


def test_prediction_shapes_and_best_of_n():
    model = tiny_model()
    frames = torch.rand(3, 6, 3, 64, 64)
    out = predict(model, frames, context=4, samples=5, generator=torch.Generator().manual_seed(0))
    assert out["mse_mean"].shape == out["mse_best"].shape == (3, 2)
    assert out["mean_frames"].shape == (3, 2, 3, 64, 64)
    # the mean rollout is deterministic, whatever the noise
    again = predict(model, frames, context=4, samples=5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["mse_mean"], again["mse_mean"])
    errs = out["mse_samples"]  # (B, S, h)
    assert errs.shape == (3, 5, 2)
    for b in range(3):
        best = min(range(5), key=lambda s: errs[b, s].mean().item())
        torch.testing.assert_close(out["mse_best"][b], errs[b, best])


def test_psnr():
    np.testing.assert_allclose(psnr(np.array([1.0, 0.01, 1e-4])), [0.0, 20.0, 40.0])
