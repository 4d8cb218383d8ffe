"""Independent generations (SPEC §3.4) and prior rollouts (prediction).

Independent generation: infer the posterior over a sequence, hold every group of
units at its first-step value, let exactly one group follow its posterior, decode.
For a factored model the groups are its factors; for an entangled one, any
partition of its units (e.g. the best MI partition).
Shapes: posterior means (B, T, K, d); unit groups index the flattened K·d units.
"""

from __future__ import annotations

import numpy as np
import torch

from indpred.model import FactoredVAE


def factor_groups(factors: int, factor_dim: int) -> list[list[int]]:
    """The units of each factor, as indices into the flattened (K·d) state."""
    return [list(range(k * factor_dim, (k + 1) * factor_dim)) for k in range(factors)]


@torch.no_grad()
def independent_generations(
    model: FactoredVAE, means: torch.Tensor, groups: list[list[int]]
) -> torch.Tensor:
    """Decode, for each group g, the state held at t = 1 except group g: (G, B, T, C, H, W)."""
    B, T, K, d = means.shape
    flat = means.reshape(B, T, K * d)  # (B, T, D)
    held = flat[:, :1].expand(B, T, K * d)  # (B, T, D) every unit at its first-step value
    G = len(groups)
    mask = torch.zeros(G, K * d, dtype=torch.bool, device=means.device)
    for g, units in enumerate(groups):
        mask[g, units] = True
    z = torch.where(mask[:, None, None, :], flat[None], held[None])  # (G, B, T, D)
    x = model.decode(z.reshape(G * B, T, K, d))  # (G·B, T, C, H, W)
    return x.unflatten(0, (G, B))


def channel_change(generations: torch.Tensor, objects: int) -> np.ndarray:
    """Δ[g, j]: mean absolute change of channel j over time when only group g moves.

    generations: (G, B, T, C, H, W); the change is measured against each
    sequence's first frame (where nothing has moved yet). Returns (G, objects).
    """
    change = (generations[:, :, 1:] - generations[:, :, :1]).abs()  # (G, B, T-1, C, H, W)
    per_channel = change.mean(dim=(1, 2, 4, 5))  # (G, C)
    return per_channel[:, :objects].cpu().numpy()


@torch.no_grad()
def predict(
    model: FactoredVAE,
    frames: torch.Tensor,
    *,
    context: int,
    samples: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Observe ``context`` frames, roll the learned prior forward over the rest, decode.

    frames: (B, T, C, H, W). Returns per-sequence, per-step squared errors (B, h) of the
    mean rollout and of the best of ``samples`` sampled rollouts (best by mean error
    over the horizon, as in the stochastic video prediction literature), every sample's
    errors (B, S, h), and the decoded mean rollout (B, h, C, H, W).
    """
    B, T = frames.shape[:2]
    horizon = T - context
    observed = model.filter(frames[:, :context], sample=False)
    z_last = observed.z  # (B, context, K, d): the rollout reads the last states its prior does
    truth = frames[:, context:]  # (B, h, C, H, W)
    mean_frames = model.decode(model.rollout(z_last, horizon, sample=False))  # (B, h, C, H, W)
    mse_mean = (mean_frames - truth).square().flatten(2).mean(-1)  # (B, h)
    z_rep = z_last.repeat_interleave(samples, dim=0)  # (B·S, context, K, d)
    sampled = model.decode(model.rollout(z_rep, horizon, sample=True, generator=generator))
    err = (sampled - truth.repeat_interleave(samples, dim=0)).square().flatten(2).mean(-1)
    err = err.view(B, samples, horizon)  # (B, S, h)
    best = err.mean(-1).argmin(1)  # (B,)
    mse_best = err[torch.arange(B), best]  # (B, h)
    return {"mse_mean": mse_mean, "mse_best": mse_best, "mse_samples": err, "mean_frames": mean_frames}


def psnr(mse: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))
