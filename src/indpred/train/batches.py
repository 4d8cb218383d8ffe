"""The training batches, by step: step s of rank r takes a fixed slice of the endless training stream.

Rank r of R takes sequences (s·R + r)·B … (s·R + r + 1)·B − 1 at step s, so every step's
batch is a function of the step alone (a resumed run sees what an uninterrupted one
would) and R ranks together take what one process with batch R·B would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from indpred.data import MovingMNIST
from indpred.data.factory import TRAIN_STREAM_LENGTH
from indpred.distributed import SINGLE, Ranks


class StepBatches(Dataset):
    """Item s: what one rank trains on at step s: its frames (B, T, C, H, W), or with
    ``draws_only`` (Moving MNIST) just each sequence's random draws, rendered later on the
    training device by :meth:`MovingMNIST.render_draws`."""

    def __init__(self, dataset: Any, batch_size: int, ranks: Ranks = SINGLE, *,
                 draws_only: bool = False) -> None:
        self.dataset, self.batch_size, self.ranks = dataset, batch_size, ranks
        self.draws_only = draws_only

    def __len__(self) -> int:
        return TRAIN_STREAM_LENGTH // (self.batch_size * self.ranks.world)

    def __getitem__(self, step: int) -> Any:
        B, R, r = self.batch_size, self.ranks.world, self.ranks.rank
        indices = range((step * R + r) * B, (step * R + r + 1) * B)
        if self.draws_only:
            return self.dataset.draw_batch(indices)
        return self.dataset.get_batch(indices)["frames"]


def step_batches(dataset: Any, batch_size: int, start: int, stop: int, device: torch.device, *,
                 ranks: Ranks = SINGLE, workers: int = 0,
                 render_on_device: bool | None = None) -> Iterator[Tensor]:
    """The training frames of steps ``start`` … ``stop − 1`` on ``device``, in order.

    ``workers`` > 0 prepares them in that many DataLoader processes, ahead of the
    training (pinned memory and asynchronous copies on a GPU); 0 prepares each batch in
    this process when it is needed. Moving MNIST on a GPU (``render_on_device`` None:
    automatic) is rendered there, the workers making only each sequence's random draws,
    so no frame crosses the bus. Whichever way, step s gets the same frames.
    """
    if render_on_device is None:
        render_on_device = isinstance(dataset, MovingMNIST) and device.type == "cuda"
    items = StepBatches(dataset, batch_size, ranks, draws_only=render_on_device)
    if workers == 0:
        source: Iterator[Any] = (items[s] for s in range(start, stop))
    else:
        source = iter(DataLoader(items, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                 pin_memory=device.type == "cuda" and not render_on_device,
                                 prefetch_factor=4))
    for item in source:
        yield dataset.render_draws(item, device) if render_on_device else item.to(device, non_blocking=True)
