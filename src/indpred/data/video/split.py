"""The train/test split of a prepared folder: by video, never by frame (one video: by time).

* ``test_videos`` names the test videos (file names or stems); otherwise
  ``test_fraction`` (default :data:`DEFAULT_TEST_FRACTION`) of the videos, rounded half
  up, at least one and leaving at least one for training, are test: the last ones in
  sorted name order.
* A single video is split in time: its leading part is train, its trailing
  ``test_fraction`` of frames is test (``"split": "train+test"``, ``split_at`` the first
  test frame).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indpred.errors import UserError

__all__ = ["DEFAULT_TEST_FRACTION", "assign_splits", "match_names"]

DEFAULT_TEST_FRACTION = 0.2


def match_names(names: Sequence[str], wanted: Sequence[str], what: str) -> set[str]:
    """The source names ``wanted`` refers to (by file name or by stem); UserError for unknowns."""
    by_stem: dict[str, list[str]] = {}
    for n in names:
        by_stem.setdefault(Path(n).stem, []).append(n)
    chosen: set[str] = set()
    for w in wanted:
        if w in names:
            chosen.add(w)
        elif len(by_stem.get(w, [])) == 1:
            chosen.add(by_stem[w][0])
        else:
            raise UserError(f"{what}: no video named {w!r} among {', '.join(names)}")
    return chosen


def assign_splits(entries: list[dict], *, test_videos: Sequence[str] | None,
                  test_fraction: float | None, notes: list[str]) -> dict[str, Any]:
    """Set ``split`` (and ``split_at``) on every entry; returns the split rule for the manifest."""
    if len(entries) == 1:
        return _split_in_time(entries[0], test_videos=test_videos, test_fraction=test_fraction, notes=notes)
    names = [e["name"] for e in entries]
    if test_videos is not None:
        chosen = match_names(names, test_videos, "test_videos")
        rule: dict[str, Any] = {"rule": "test_videos", "test_videos": sorted(chosen)}
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        n_test = min(len(entries) - 1, max(1, math.floor(fraction * len(entries) + 0.5)))
        chosen = set(names[-n_test:])
        rule = {"rule": "test_fraction", "test_fraction": fraction}
    if not chosen:
        raise UserError("no test video left: every video named in test_videos was skipped as unreadable")
    if len(chosen) == len(entries):
        raise UserError("every video would be a test video; leave at least one for training")
    for e in entries:
        e["split"], e["split_at"] = ("test" if e["name"] in chosen else "train"), None
    return rule


def _split_in_time(e: dict, *, test_videos: Sequence[str] | None, test_fraction: float | None,
                   notes: list[str]) -> dict[str, Any]:
    """The single video ``e``: leading frames train, the trailing ``test_fraction`` test."""
    if test_videos is not None:
        raise UserError(f"only {e['name']} could be prepared, so the split is by time: "
                        "use test_fraction instead of test_videos")
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    n = e["frames"]
    if n < 2:
        raise UserError(f"{e['name']} gives {n} frame at this fps: too few to split into train and test; "
                        "add videos or raise fps")
    n_test = min(n - 1, max(1, math.floor(fraction * n + 0.5)))
    e["split"], e["split_at"] = "train+test", n - n_test
    notes.append(f"only one video: frames 0..{n - n_test - 1} of {e['name']} are train, "
                 f"the last {n_test} ({fraction:g}) are test")
    return {"rule": "single-video", "test_fraction": fraction}
