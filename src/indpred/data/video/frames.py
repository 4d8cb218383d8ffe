"""Serving training windows of a prepared folder: :class:`VideoFrames`, a torch Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from indpred.data.batched import BatchedDataset, check_int
from indpred.data.seeding import check_split, item_rng
from indpred.data.video.manifest import load_manifest
from indpred.data.video.read import frames_to_tensor
from indpred.errors import UserError

__all__ = ["VideoFrames"]


@dataclass(frozen=True)
class _Segment:
    video: int  # index into the manifest's videos
    lo: int  # first frame of the segment
    hi: int  # one past its last frame


class VideoFrames(BatchedDataset):
    """T-frame windows of a prepared video folder, like :class:`~indpred.data.MovingMNIST`.

    A window is ``seq_len`` kept frames ``start, start + stride, ...`` of one video
    (so ``stride`` subsamples a prepared video further); it never crosses a video's
    end, nor the train/test boundary of a single video split by time. Item ``i`` of
    (seed, split) is a window drawn uniformly over all valid windows of the split by
    ``PCG64(SeedSequence([seed, split_code, i]))`` (split_code 0 train, 1 test): the
    same in every process and DataLoader worker. Frames are read from memory maps
    opened on first use in each process, so workers can fork.

    Items are dicts: ``frames`` float32 (T, 3, 64, 64) in [0, 1]; ``video`` int64
    (index into the manifest's ``videos``); ``start`` int64 (its first frame's index
    in that video).
    """

    channels = 3

    def __init__(self, data_dir: str | Path, *, split: str = "train", seq_len: int = 10, seed: int = 0,
                 length: int = 100_000, stride: int = 1) -> None:
        self.split = check_split(split)
        self.data_dir = Path(data_dir)
        self.seq_len = check_int("seq_len", seq_len, 1)
        self.seed = check_int("seed", seed, 0)
        self.length = check_int("length", length, 1)
        self.stride = check_int("stride", stride, 1)
        self.manifest = load_manifest(self.data_dir)
        self.videos: list[dict] = self.manifest["videos"]
        self.image_size = int(self.manifest["settings"]["size"])
        self.segments = self._segments()
        span = (self.seq_len - 1) * self.stride + 1  # frames a window covers
        counts = np.array([max(0, s.hi - s.lo - span + 1) for s in self.segments], dtype=np.int64)
        if counts.sum() == 0:
            longest = max((s.hi - s.lo for s in self.segments), default=0)
            raise UserError(
                f"no {split} window of {self.seq_len} frames (stride {self.stride}, {span} frames) in "
                f"{self.data_dir}: every {split} video is shorter (the longest has {longest}); "
                "use a shorter seq_len or stride, or prepare the videos at a higher fps")
        self._counts = counts
        self._ends = np.cumsum(counts)  # window w lies in the first segment whose end exceeds w
        self._maps: dict[int, np.memmap] = {}

    @property
    def n_windows(self) -> int:
        """How many distinct windows the split has."""
        return int(self._ends[-1])

    def _segments(self) -> list[_Segment]:
        segments = []
        for i, e in enumerate(self.videos):
            n = e["frames"]
            if e["split"] == self.split:
                segments.append(_Segment(i, 0, n))
            elif e["split"] == "train+test":
                lo, hi = (0, e["split_at"]) if self.split == "train" else (e["split_at"], n)
                segments.append(_Segment(i, lo, hi))
        return segments

    def window(self, index: int) -> tuple[int, int]:
        """Item ``index``'s window: (video index in the manifest, first frame)."""
        i = self._check_index(index)
        w = int(item_rng(self.seed, self.split, i).integers(0, self.n_windows))
        k = int(np.searchsorted(self._ends, w, side="right"))
        seg = self.segments[k]
        return seg.video, seg.lo + w - int(self._ends[k] - self._counts[k])

    def frames(self, video: int) -> np.memmap:
        """All kept frames of manifest video ``video``: uint8 (n, 64, 64, 3), memory-mapped."""
        m = self._maps.get(video)
        if m is None:
            e = self.videos[video]
            s = self.image_size
            m = np.memmap(self.data_dir / e["file"], dtype=np.uint8, mode="r", shape=(e["frames"], s, s, 3))
            self._maps[video] = m
        return m

    def get_batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """Items ``indices`` stacked: frames (B, T, 3, 64, 64) float32, video (B,), start (B,) int64."""
        if len(indices) == 0:
            raise UserError("get_batch needs at least one index")
        windows = [self.window(i) for i in indices]
        span = (self.seq_len - 1) * self.stride + 1
        clips = np.stack([self.frames(v)[s:s + span:self.stride] for v, s in windows])  # (B, T, H, W, 3)
        return {
            "frames": frames_to_tensor(clips),  # (B, T, 3, H, W)
            "video": torch.tensor([v for v, _ in windows], dtype=torch.int64),
            "start": torch.tensor([s for _, s in windows], dtype=torch.int64),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened in the receiving process
        return state

    def __repr__(self) -> str:
        return (f"VideoFrames({str(self.data_dir)!r}, split={self.split!r}, seq_len={self.seq_len}, "
                f"seed={self.seed}, length={self.length}, stride={self.stride}; "
                f"{len(self.segments)} videos, {self.n_windows} windows)")

