"""Shared fixtures: tiny configurations that keep the suite fast on two cores."""

from __future__ import annotations

import pytest
import torch

from indpred.config import RunConfig, apply_overrides, get_preset
from indpred.paths import shared_data_dir

TINY = [
    "model.width=0.125", "model.factor_dim=4", "model.transition_hidden=32",
    "data.seq_len=3", "data.test_sequences=8", "train.batch_size=4",
    "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
]


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_config() -> RunConfig:
    """The demo preset shrunk to seconds per run."""
    return apply_overrides(get_preset("demo"), list(TINY))


@pytest.fixture
def mnist_dir():
    folder = shared_data_dir() / "mnist"
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST files not found in {folder} (set INDPRED_TEST_DATA)")
    return folder
