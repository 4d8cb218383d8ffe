"""Small shared pieces of the networks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """Bound ``x`` to (lo, hi) smoothly: identity-like well inside, saturating at the edges.

    Used on every predicted log-variance so that variances can neither vanish nor
    explode, while keeping a gradient everywhere (a hard clamp would cut it).
    """
    return hi - F.softplus(hi - lo - F.softplus(x - lo))


def channels(base: int, width: float) -> int:
    """Conv channel count ``base`` scaled by the width multiplier (at least 1)."""
    return max(1, round(base * width))


class GroupedLinear(nn.Module):
    """G independent linear maps applied at once: (B, G, in) → (B, G, out), weights (G, in, out).

    One batched product instead of a loop over groups (factors or slots); each group's
    output depends on its own input alone. Initialised like ``nn.Linear``.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bgi,gio->bgo", x, self.weight) + self.bias  # (B, G, out)
