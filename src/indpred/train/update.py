"""The optimiser update of one step, decided on the device: no host round-trip per step.

A step whose loss or gradient is not finite must leave the model as if it never ran (the
loop counts it at its next sync point). Instead of reading the loss back to decide, every
step runs ``optimizer.step()`` and then keeps, tensor by tensor, either the new values or
the ones before it: ``where(ok, new, old)`` for the parameters, Adam's state and batch
norm's statistics. A good step's values are kept exactly, so the training is the same bit
for bit; a bad step's are all put back (a state Adam created at this step goes back to its
fresh value, zeros, which Adam treats exactly as a state it has not made yet).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def finite(loss: Tensor, grad_norm: Tensor) -> Tensor:
    """() bool on the device: whether the step's loss and gradient norm are finite."""
    return torch.isfinite(loss).all() & torch.isfinite(grad_norm).all()


@torch.no_grad()
def masked_step(optimizer: torch.optim.Optimizer, ok: Tensor) -> None:
    """``optimizer.step()`` where ``ok`` (a () bool tensor on the parameters' device) holds,
    nothing at all where it does not, decided without reading ``ok`` on the host."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
              for p in params]
    optimizer.step()
    for p, old, state in zip(params, before, states):
        p.copy_(torch.where(ok, p, old))
        for key, value in optimizer.state[p].items():
            if torch.is_tensor(value):
                previous = state.get(key)
                if previous is None:  # created by this step: its fresh value
                    previous = torch.zeros_like(value)
                value.copy_(torch.where(ok.to(value.device), value, previous))


@torch.no_grad()
def masked_restore_buffers(net: nn.Module, snapshot: list[Tensor], ok: Tensor) -> None:
    """Batch norm's statistics as the step left them where ``ok``, as ``snapshot`` had them
    (:func:`indpred.model.snapshot_buffers`, taken before the step) where not."""
    buffers = list(net.buffers())
    if len(buffers) != len(snapshot):
        raise ValueError(f"a snapshot of {len(snapshot)} buffers cannot restore {len(buffers)}")
    for b, saved in zip(buffers, snapshot):
        b.copy_(torch.where(ok, b, saved))
