"""Per-item randomness: item ``index`` of (seed, split) draws from a generator of its own.

``PCG64(SeedSequence([seed, split_code, index]))``, split_code 0 for train and 1 for
test: the same draws in every process and DataLoader worker, whatever the dataset's
length, and no item's draws depend on another's.
"""

from __future__ import annotations

import numpy as np

from indpred.errors import UserError

__all__ = ["SPLIT_CODES", "check_split", "item_rng"]

SPLIT_CODES = {"train": 0, "test": 1}
"""The second word of the per-item SeedSequence."""


def check_split(split: str) -> str:
    """``split`` if it is "train" or "test", else a UserError."""
    if split not in SPLIT_CODES:
        raise UserError(f"unknown split {split!r}: use 'train' or 'test'")
    return split


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of item ``index`` of (``seed``, ``split``)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLIT_CODES[split], index])))
