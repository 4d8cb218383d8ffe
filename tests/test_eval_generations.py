"""Independent generations, channel changes and prediction against hand-built references."""

import numpy as np
import pytest
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
from tests.test_eval_reference import calibrate_batch_norm, filter_means_step_by_step, prior_in


def tiny_model(K=2, d=3, order=1):
    torch.manual_seed(0)
    return FactoredVAE(ModelConfig(factors=K, factor_dim=d, width=0.125, transition_hidden=16,
                                   transition_order=order)).eval()


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


@pytest.mark.parametrize("order", [1, 2])
def test_prediction_is_filter_then_prior_rollout_then_decode_step_by_step(order):
    """Every number ``predict`` returns, from the model's pieces one step at a time: posterior
    means over the context, then the prior's mean (and, for the samples, mean + σ·ε with ε drawn
    in the same order from the same seed), each state decoded alone, errors in NumPy."""
    B, S, context, horizon = 3, 4, 3, 3
    frames = torch.rand(B, context + horizon, 3, 64, 64)
    model = calibrate_batch_norm(tiny_model(order=order), [torch.rand(8, 4, 3, 64, 64)])
    out = predict(model, frames, context=context, samples=S, generator=torch.Generator().manual_seed(5))
    truth = frames[:, context:].double().numpy()  # (B, h, C, H, W)

    def roll(states, noise):  # one rollout: (n, h, C, H, W) decoded frames
        decoded = []
        for _ in range(horizon):
            mean, logvar = model.transition(prior_in(states, order))
            eps = torch.randn(mean.shape, generator=noise) if noise is not None else 0.0
            states = [*states, mean + torch.exp(0.5 * logvar) * eps]
            decoded.append(model.decode(states[-1][:, None])[:, 0].double().numpy())
        return np.stack(decoded, axis=1)

    with torch.no_grad():
        observed = filter_means_step_by_step(model, frames[:, :context])
        mean_frames = roll(observed, None)
        sampled = roll([z.repeat_interleave(S, dim=0) for z in observed],
                       torch.Generator().manual_seed(5))  # (B·S, h, ...): sequence-major, as predict
    mse_mean = ((mean_frames - truth) ** 2).reshape(B, horizon, -1).mean(-1)
    err = ((sampled.reshape(B, S, *truth.shape[1:]) - truth[:, None]) ** 2)
    err = err.reshape(B, S, horizon, -1).mean(-1)  # (B, S, h)
    best = err.mean(-1).argmin(1)
    assert np.ptp(mean_frames) > 0.05 and np.ptp(err) > 1e-4  # frames and errors that vary
    np.testing.assert_allclose(out["mean_frames"].numpy(), mean_frames, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["mse_mean"].numpy(), mse_mean, rtol=1e-5)
    np.testing.assert_allclose(out["mse_samples"].numpy(), err, rtol=1e-5)
    np.testing.assert_allclose(out["mse_best"].numpy(), err[np.arange(B), best], rtol=1e-5)


def test_psnr():
    np.testing.assert_allclose(psnr(np.array([1.0, 0.01, 1e-4])), [0.0, 20.0, 40.0])
