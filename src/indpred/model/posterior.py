"""Approximate posterior q(z_t | z_{t-1}, x_t) = N(μ_q, diag σ_q²) (filtering form).

The combiner f sees the encoded frame and the prior's prediction for this step
(its mean and standard deviation), not z_{t-1} itself (SPEC §1).
Inputs: features (B, enc_dim), prior mean and std (B, z_dim); outputs (B, z_dim) each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from indpred.model.layers import soft_clamp


class Posterior(nn.Module):
    """Combiner f(enc(x_t), μ_p, σ_p) → (μ_q, log σ_q²), LeakyReLU between layers."""

    def __init__(
        self, *, enc_dim: int, z_dim: int, logvar_bounds: tuple[float, float] = (-10.0, 5.0)
    ) -> None:
        super().__init__()
        self.from_x = nn.Linear(enc_dim, z_dim)
        self.from_mean = nn.Linear(z_dim, z_dim)
        self.from_std = nn.Linear(z_dim, z_dim)
        self.joint = nn.Linear(3 * z_dim, z_dim)
        self.mean_head = nn.Linear(z_dim, z_dim)
        self.logvar_head = nn.Linear(z_dim, z_dim)
        self.logvar_bounds = logvar_bounds

    def forward(self, features: Tensor, prior_mean: Tensor, prior_std: Tensor) -> tuple[Tensor, Tensor]:
        """(μ_q, log σ_q²) for one step: features (B, enc_dim), prior mean and std (B, z_dim)."""
        return self.step(self.frame_part(features), prior_mean, prior_std)

    def frame_part(self, features: Tensor) -> Tensor:
        """The frame's share of the joint layer, bias included: (..., enc_dim) → (..., z_dim).

        It does not depend on the past, so the filter computes it for every frame at once.
        """
        z_dim = self.from_x.out_features
        hx = F.leaky_relu(self.from_x(features), 0.2)  # (..., z_dim)
        return F.linear(hx, self.joint.weight[:, :z_dim], self.joint.bias)  # (..., z_dim)

    def step(self, frame_part: Tensor, prior_mean: Tensor, prior_std: Tensor) -> tuple[Tensor, Tensor]:
        """The rest of the combiner, given :meth:`frame_part` of this step's frame (B, z_dim)."""
        z_dim = self.from_x.out_features
        hm = F.leaky_relu(self.from_mean(prior_mean), 0.2)  # (B, z_dim)
        hs = F.leaky_relu(self.from_std(prior_std), 0.2)  # (B, z_dim)
        past = F.linear(torch.cat([hm, hs], dim=-1), self.joint.weight[:, z_dim:])  # (B, z_dim)
        h = F.leaky_relu(frame_part + past, 0.2)  # (B, z_dim)
        return self.mean_head(h), soft_clamp(self.logvar_head(h), *self.logvar_bounds)
