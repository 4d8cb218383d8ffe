"""A dataset whose items are made a batch at a time (``get_batch``), for speed."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.utils.data import Dataset


class BatchedDataset(Dataset):
    """Derives ``__getitem__`` and ``__getitems__`` from ``get_batch``; subclasses set ``length``.

    ``get_batch(indices)`` returns a dict of tensors with a leading batch dimension;
    an item is the batch of one, unbatched, so both paths agree exactly. torch's
    DataLoader calls ``__getitems__`` for a whole batch when it exists.
    """

    length: int

    def get_batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        batch = self.get_batch([index])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        batch = self.get_batch(indices)
        return [{key: value[j] for key, value in batch.items()} for j in range(len(indices))]
