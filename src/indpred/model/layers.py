"""Small shared pieces of the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """Bound ``x`` to (lo, hi) smoothly: identity-like well inside, saturating at the edges.

    Used on every predicted log-variance so that variances can neither vanish nor
    explode, while keeping a gradient everywhere (a hard clamp would cut it).
    """
    return hi - F.softplus(hi - lo - F.softplus(x - lo))


def snapshot_buffers(net: nn.Module) -> list[Tensor]:
    """Copies of every buffer of ``net``: batch norm's running statistics and step counters.

    With :func:`restore_buffers`, undoes what a forward pass in training mode did to
    them: a recomputation under activation checkpointing, or a step that is skipped.
    """
    return [b.clone() for b in net.buffers()]


def restore_buffers(net: nn.Module, snapshot: list[Tensor]) -> None:
    """Put back the buffers of ``net`` that :func:`snapshot_buffers` copied, in place."""
    buffers = list(net.buffers())
    if len(buffers) != len(snapshot):
        raise ValueError(f"a snapshot of {len(snapshot)} buffers cannot restore {len(buffers)}")
    with torch.no_grad():
        for b, saved in zip(buffers, snapshot):
            b.copy_(saved)
