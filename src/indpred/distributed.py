"""Data-parallel training with PyTorch's own engine: torchrun, a process group, DDP.

``torchrun --nproc_per_node=N -m indpred train …`` starts N processes and describes
them in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`process_group` reads it and joins them (NCCL for CUDA tensors,
gloo for CPU tensors). Without those variables, or with ``WORLD_SIZE=1``, nothing
changes: one process, no group.

What each rank does is decided in :mod:`indpred.train`; this module holds the pieces:
who this process is (:class:`Ranks`), the group's lifetime, sharing a Python object
from rank 0, and batch norm whose training statistics cover the whole global batch
(:func:`sync_batch_norm`), so that R ranks of B sequences compute what one process
computes on R·B.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from indpred.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0  # global rank, 0 .. world - 1
    world: int = 1  # number of processes
    local_rank: int = 0  # rank on this node: the CUDA device it uses

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes the run folder."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: gradients, statistics and decisions are shared."""
        return self.world > 1


SINGLE = Ranks()


def from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (one process when it describes none)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return Ranks(rank=rank, world=world, local_rank=local_rank)


@contextmanager
def process_group() -> Iterator[Ranks]:
    """Join the training processes for the duration of the block (a no-op for one process).

    A group that the caller already initialised is used as it is and left open.
    """
    if dist.is_available() and dist.is_initialized():
        yield Ranks(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        return
    ranks = from_environment()
    if not ranks.active:
        yield ranks
        return
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; train with one process")
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def training_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Under several processes each rank trains on its own GPU, ``cuda:LOCAL_RANK``."""
    if ranks.active and device.type == "cuda":
        index = ranks.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def share(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank (pickled through the CPU backend); as is for one process."""
    if not ranks.active:
        return obj
    box = [obj if ranks.main else None]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def all_reduce_sum(t: Tensor, ranks: Ranks) -> Tensor:
    """Sum ``t`` over the ranks, in place (nothing for one process)."""
    if ranks.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_r x_r on every rank; the gradient of x_r is Σ_r of the gradients of y."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over every rank's batch; any backend, CPU included.

    ``torch.nn.SyncBatchNorm`` does the same on GPUs but refuses CPU tensors, so CPU
    ranks (gloo) use this: per-channel sums, sums of squares and counts are added
    across ranks with a differentiable all-reduce, so gradients flow through the
    global statistics as they do through a single process's. Parameters, buffers and
    state-dict keys are those of BatchNorm2d; in eval mode it is BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        C = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.square().sum(dim=(0, 2, 3)),
                           xf.new_full((1,), x.numel() // C)])  # (2C + 1,)
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:C] / n  # (C,)
        var = (total[C:2 * C] / n - mean.square()).clamp_min(0.0)  # (C,) biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                count = float(n)
                unbiased = var * (count / max(count - 1.0, 1.0))
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(unbiased.detach(), m)
        y = (xf - mean[:, None, None]) * torch.rsqrt(var + self.eps)[:, None, None]
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y.to(x.dtype)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d in ``module`` normalise over the global batch of all ranks.

    CUDA: ``torch.nn.SyncBatchNorm``; CPU: :class:`GlobalBatchNorm`. Both keep the same
    parameter and buffer objects, so optimisers and checkpoints are unaffected.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                          affine=child.affine,
                                          track_running_stats=child.track_running_stats)
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias
            if child.track_running_stats:
                replacement.running_mean = child.running_mean
                replacement.running_var = child.running_var
                replacement.num_batches_tracked = child.num_batches_tracked
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            sync_batch_norm(child, device)
    return module
