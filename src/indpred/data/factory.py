"""One place that turns a :class:`~indpred.config.DataConfig` into datasets, for training and evaluation.

Every dataset serves ``get_batch(indices)`` with ``frames`` (B, T, C, S, S), S = ``data.image_size``,
and, for Moving MNIST, the ground truth (in pixels of that size).
"""

from __future__ import annotations

from typing import Any

from indpred.config import DataConfig
from indpred.errors import UserError

TRAIN_STREAM_LENGTH = 2**31 - 1  # the training stream is, in practice, endless


def make_dataset(data: DataConfig, split: str, length: int, *, seed: int | None = None,
                 seq_len: int | None = None) -> Any:
    """``length`` sequences of ``split`` ("train" or "test"): Moving MNIST, or windows of prepared
    video. ``seed`` and ``seq_len`` default to the config's (evaluation may ask for others)."""
    seed = data.seed if seed is None else seed
    seq_len = data.seq_len if seq_len is None else seq_len
    if data.dataset == "video":
        from indpred.data.video import VideoFrames

        if not data.path:
            raise UserError("this preset trains on prepared video: pass --data DIR "
                            "(made by indpred prepare-video)")
        frames = VideoFrames(data.path, split=split, seq_len=seq_len, seed=seed, length=length)
        if frames.image_size != data.image_size:
            raise UserError(f"{data.path} was prepared at {frames.image_size} x {frames.image_size} px; "
                            f"train on it with --set data.image_size={frames.image_size} (or prepare "
                            f"it again with --size {data.image_size})")
        return frames
    from indpred.data.moving_mnist import DIGIT_SIZE, MovingMNIST

    return MovingMNIST(split=split, length=length, n_digits=data.n_digits, seq_len=seq_len,
                       colour=data.colour, kinematics=data.kinematics, image_size=data.image_size,
                       digit_size=DIGIT_SIZE * data.image_size // 64, seed=seed, source=data.mnist)


def make_datasets(data: DataConfig) -> tuple[Any, Any]:
    """The endless training stream and the fixed test set (``data.test_sequences``) of ``data``."""
    return (make_dataset(data, "train", TRAIN_STREAM_LENGTH),
            make_dataset(data, "test", data.test_sequences))
