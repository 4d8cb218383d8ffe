"""Approximate posterior q(z_t | z_{t-1}, x_t) = N(μ_q, diag σ_q²) (filtering form).

The combiner f sees the encoded frame and the prior's prediction for this step
(its mean and standard deviation), not z_{t-1} itself (SPEC §1).
Inputs: features (B, enc_dim), prior mean and std (B, z_dim); outputs (B, z_dim) each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from indpred.model.layers import GroupedLinear, soft_clamp


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


class AttentionPosterior(nn.Module):
    """Beyond the paper: slots that compete for the frame's locations, each owned by a factor.

    The encoder keeps an L-location feature map (L = 64, the 8 x 8 map). Each slot's query
    comes from its owning factor's prior prediction (plus a learned embedding per slot, so
    slots differ before anything is predicted); one more, background slot has a learned
    query only and is discarded. At every location a softmax over the slots shares the
    location out, so what one slot takes another loses. A slot reads the centroid of
    what it took, the mean of its linearly projected features, and its log share of the
    frame: a slot that takes two objects gets their blend, which cannot draw either, so
    an object is best read by one slot, and a factor by its own slots. Factor k's combiner
    (the paper's f, with per-factor weights) then sees its slots' readouts and its own
    prediction. With one factor owning all slots (the entangled twin) the attention is the
    same and only the latent state is not split.
    Shapes: feature map (B, L, c); keys (B, L, D); values (B, L, D + 2); queries (B, S + 1, D);
    readouts (B, S, D + 3); prior and posterior statistics (B, K·d).
    """

    def __init__(
        self, *, feature_dim: int, locations: int, factors: int, factor_dim: int, slots: int,
        dim: int = 32, iters: int = 1, logvar_bounds: tuple[float, float] = (-10.0, 5.0),
    ) -> None:
        super().__init__()
        side = math.isqrt(locations)
        axis = torch.linspace(-1.0, 1.0, side)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1)  # (side, side, 2): row, col
        self.register_buffer("grid", grid.reshape(locations, 2), persistent=False)  # (L, 2)
        self.factors, self.factor_dim, self.slots = factors, factor_dim, slots
        self.dim, self.iters = dim, iters
        self.norm = nn.LayerNorm(feature_dim)
        self.key = nn.Sequential(nn.Linear(feature_dim + 2, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))
        self.value = nn.Linear(feature_dim, dim)
        # Mutually orthogonal queries of norm √D to start (the last row: background), so that
        # no two slots start out looking for the same thing.
        self.embedding = nn.Parameter(nn.init.orthogonal_(torch.empty(slots + 1, dim)) * math.sqrt(dim))
        self.from_prediction = GroupedLinear(slots, 2 * factor_dim, dim)
        # Only with more than one round: a layer that no loss reaches would stall DDP.
        self.refine = nn.Linear(dim + 3, dim) if iters > 1 else None
        read = (slots // factors) * (dim + 3)  # one factor's slots, concatenated
        self.from_x = GroupedLinear(factors, read, factor_dim)
        self.from_mean = GroupedLinear(factors, factor_dim, factor_dim)
        self.from_std = GroupedLinear(factors, factor_dim, factor_dim)
        self.joint = GroupedLinear(factors, 3 * factor_dim, factor_dim)
        self.mean_head = GroupedLinear(factors, factor_dim, factor_dim)
        self.logvar_head = GroupedLinear(factors, factor_dim, factor_dim)
        self.logvar_bounds = logvar_bounds

    def forward(self, features: Tensor, prior_mean: Tensor, prior_std: Tensor) -> tuple[Tensor, Tensor]:
        """(μ_q, log σ_q²) for one step: feature map (B, L, c), prior mean and std (B, K·d)."""
        return self.step(self.frame_part(features), prior_mean, prior_std)

    def frame_part(self, features: Tensor) -> Tensor:
        """Keys and values of every location, [keys | values]: (..., L, c) → (..., L, 2D + 2).

        They do not depend on the past, so the filter computes them for every frame at once.
        """
        h = self.norm(features)  # (..., L, c)
        grid = self.grid.expand(*h.shape[:-1], 2)  # (..., L, 2)
        keys = self.key(torch.cat([h, grid], dim=-1))  # (..., L, D)
        return torch.cat([keys, grid, self.value(h)], dim=-1)  # (..., L, 2D + 2)

    def read(self, frame_part: Tensor, queries: Tensor) -> Tensor:
        """One round of attention: queries (B, S + 1, D) → the S slots' readouts (B, S, D + 3)."""
        keys, values = frame_part[..., : self.dim], frame_part[..., self.dim:]  # (B, L, D), (B, L, D + 2)
        logits = torch.einsum("bsd,bld->bsl", queries, keys) / math.sqrt(self.dim)  # (B, S + 1, L)
        share = torch.softmax(logits, dim=1)  # each location shared out over the slots
        mass = share.sum(-1, keepdim=True)  # (B, S + 1, 1)
        mean = torch.einsum("bsl,blv->bsv", share / (mass + 1e-6), values)  # (B, S + 1, D + 2)
        size = torch.log(mass / share.shape[-1] + 1e-6)  # the slot's log share of the frame
        return torch.cat([mean, size], dim=-1)[:, : self.slots]  # (B, S, D + 3)

    def step(self, frame_part: Tensor, prior_mean: Tensor, prior_std: Tensor) -> tuple[Tensor, Tensor]:
        """Attend to this step's frame (:meth:`frame_part`, (B, L, 2D + 2)) and combine, per factor."""
        B, K, d, S = frame_part.shape[0], self.factors, self.factor_dim, self.slots
        mean, std = prior_mean.unflatten(1, (K, d)), prior_std.unflatten(1, (K, d))  # (B, K, d)
        prediction = torch.cat([mean, std], dim=-1).repeat_interleave(S // K, dim=1)  # (B, S, 2d)
        queries = self.from_prediction(prediction)  # (B, S, D)
        queries = torch.cat([queries, queries.new_zeros(B, 1, self.dim)], dim=1)  # (B, S + 1, D)
        queries = queries + self.embedding
        for i in range(self.iters):
            slots = self.read(frame_part, queries)  # (B, S, D + 3)
            if self.refine is not None and i + 1 < self.iters:
                queries = queries + F.pad(self.refine(slots), (0, 0, 0, 1))  # background query kept
        hx = F.leaky_relu(self.from_x(slots.reshape(B, K, -1)), 0.2)  # (B, K, d)
        hm = F.leaky_relu(self.from_mean(mean), 0.2)  # (B, K, d)
        hs = F.leaky_relu(self.from_std(std), 0.2)  # (B, K, d)
        h = F.leaky_relu(self.joint(torch.cat([hx, hm, hs], dim=-1)), 0.2)  # (B, K, d)
        post_mean = self.mean_head(h).flatten(1)  # (B, K·d)
        post_logvar = soft_clamp(self.logvar_head(h), *self.logvar_bounds).flatten(1)  # (B, K·d)
        return post_mean, post_logvar
