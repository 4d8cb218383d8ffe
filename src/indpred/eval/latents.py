"""Run the inference network over a dataset and keep what the metrics need.

Shapes: frames (N, T, C, H, W); latents (N, T, K, d); ground truth (N, T, J, 2), labels (N, J).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from indpred.model import FactoredVAE


@dataclass
class Latents:
    """Posterior samples and means along every sequence, with the data's ground truth."""

    samples: np.ndarray  # (N, T, K, d) z_t drawn from the filtering posterior
    means: np.ndarray  # (N, T, K, d) posterior means (state carried forward: the mean)
    variances: np.ndarray  # (N, T, K, d) posterior variances along the same path
    prior_means: np.ndarray  # (N, T, K, d) the prior's mean of z_t given the means before t
    positions: np.ndarray | None  # (N, T, J, 2), Moving MNIST only
    velocities: np.ndarray | None  # (N, T, J, 2)
    labels: np.ndarray | None  # (N, J) each digit's class

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Consecutive posterior samples (z_t, z_{t+1}) of every sequence: (N·(T−1), K, d) each."""
        K, d = self.samples.shape[2:]
        return (self.samples[:, :-1].reshape(-1, K, d), self.samples[:, 1:].reshape(-1, K, d))

    def pair_sequences(self) -> np.ndarray:
        """The sequence each pair of :meth:`pairs` comes from: (N·(T−1),)."""
        N, T = self.samples.shape[:2]
        return np.repeat(np.arange(N), T - 1)


@torch.no_grad()
def collect_latents(
    model: FactoredVAE,
    dataset,
    *,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Latents:
    """Filter every sequence of ``dataset`` (in eval mode), sampling with a seeded generator."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    samples, means, variances, prior_means, positions, velocities, labels = [], [], [], [], [], [], []
    n = len(dataset)
    for start in range(0, n, batch_size):
        batch = dataset.get_batch(range(start, min(n, start + batch_size)))
        frames = batch["frames"].to(device)  # (b, T, C, H, W)
        samples.append(model.filter(frames, generator=generator).z.cpu().numpy())
        by_means = model.filter(frames, sample=False)
        means.append(by_means.post_mean.cpu().numpy())
        variances.append(by_means.post_logvar.exp().cpu().numpy())
        prior_means.append(by_means.prior_mean.cpu().numpy())
        if "positions" in batch:
            positions.append(batch["positions"].numpy())
            velocities.append(batch["velocities"].numpy())
            labels.append(batch["labels"].numpy())
    return Latents(
        samples=np.concatenate(samples),
        means=np.concatenate(means),
        variances=np.concatenate(variances),
        prior_means=np.concatenate(prior_means),
        positions=np.concatenate(positions) if positions else None,
        velocities=np.concatenate(velocities) if velocities else None,
        labels=np.concatenate(labels) if labels else None,
    )
