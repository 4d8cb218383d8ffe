"""Small shared pieces of the networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """Bound ``x`` to (lo, hi) smoothly: identity-like well inside, saturating at the edges.

    Used on every predicted log-variance so that variances can neither vanish nor
    explode, while keeping a gradient everywhere (a hard clamp would cut it).
    """
    return hi - F.softplus(hi - lo - F.softplus(x - lo))


def channels(base: int, width: float) -> int:
    """Conv channel count ``base`` scaled by the width multiplier (at least 1)."""
    return max(1, round(base * width))
