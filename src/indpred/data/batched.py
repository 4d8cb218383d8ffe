"""A dataset whose items are made a batch at a time (``get_batch``), for speed."""

from __future__ import annotations

import operator
from collections.abc import Sequence

from torch import Tensor
from torch.utils.data import Dataset

from indpred.errors import UserError


class BatchedDataset(Dataset):
    """Derives ``__getitem__`` and ``__getitems__`` from ``get_batch``; subclasses set ``length``.

    ``get_batch(indices)`` returns a dict of tensors with a leading batch dimension;
    an item is the batch of one, unbatched, so both paths agree exactly. torch's
    DataLoader calls ``__getitems__`` for a whole batch when it exists.
    """

    length: int

    def get_batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        """A valid item index (negative counts from the end), else IndexError."""
        i = operator.index(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return i

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        batch = self.get_batch([index])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        batch = self.get_batch(indices)
        return [{key: value[j] for key, value in batch.items()} for j in range(len(indices))]


def check_int(name: str, value: int, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, else a UserError saying what is allowed."""
    allowed = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
    if isinstance(value, bool):
        raise UserError(f"{name} must be {allowed}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise UserError(f"{name} must be {allowed}, got {value!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise UserError(f"{name} must be {allowed}, got {v}")
    return v
