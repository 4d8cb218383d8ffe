"""Preparing videos: decode a file or a folder once into a prepared folder, split by video.

Each video is streamed through :class:`~indpred.data.video.read.VideoReader` into one
raw uint8 frames file plus its times; the folder's manifest (:mod:`.manifest`) records
the settings, every video and the split (:mod:`.split`), and the folder is published
whole (:mod:`.publish`). Re-running reuses the frames of unchanged sources.
"""

from __future__ import annotations

import array
import json
import numbers
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from indpred.data.video.manifest import FRAMES_DIR, MANIFEST, frames_bytes, load_manifest, make_manifest
from indpred.data.video.publish import publish, staging, sweep
from indpred.data.video.read import (
    FALLBACK_FPS,
    FRAME_SIZE,
    VideoReader,
    VideoWarning,
    check_fps,
    check_resize,
)
from indpred.data.video.split import assign_splits, match_names
from indpred.errors import UserError
from indpred.fileio import file_digest, fsync_path
from indpred.sizes import IMAGE_SIZES

__all__ = ["VIDEO_EXTENSIONS", "list_videos", "prepare_videos"]

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m2v",
    ".ts", ".mts", ".m2ts", ".wmv", ".asf", ".flv", ".3gp", ".3g2", ".ogv", ".vob",
    ".dv", ".mxf", ".y4m", ".h264", ".264", ".hevc", ".h265",
})
"""File name extensions (lower case, with the dot) taken as videos when listing a folder."""


def list_videos(src: str | Path) -> list[Path]:
    """The videos ``src`` names: the file itself, or a folder's files with a video extension.

    A folder is not searched recursively; its videos are sorted by name (that order
    decides which are test videos by default). Raises UserError for a missing path
    or a folder without videos.
    """
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise UserError(f"{src} is neither a file nor a folder")
    videos = sorted((p for p in src.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
                    key=lambda p: p.name)
    if not videos:
        shown = ", ".join(sorted(VIDEO_EXTENSIONS)[:8])
        raise UserError(f"no videos in {src} (looked for {shown}, ...; subfolders are not searched)")
    return videos


class _FrameWriter:
    """Appends (size, size, 3) uint8 frames to one raw file, piece by piece."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(frame, dtype=np.uint8).data)
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()




def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "video"
    return stem[:80]


def _prepare_one(path: Path, sha: str, folder: Path, file_stem: str, settings: dict,
                 progress: bool) -> dict[str, Any]:
    """Decode one video into ``folder/frames``; its manifest entry (without the split)."""
    bar = tqdm(desc=path.name, unit="frame", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        reader = VideoReader(path, fps=settings["fps"], size=settings["size"], resize=settings["resize"],
                             on_decoded=bar.update)
        bar.total = reader.frames_announced or None
        frames_file = f"{FRAMES_DIR}/{file_stem}.u8"
        writer = _FrameWriter(folder / frames_file)
        times = array.array("d")
        try:
            for t, frame in reader:
                writer.write(frame)
                times.append(t)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    finally:
        bar.close()
    times_file = f"{FRAMES_DIR}/{file_stem}.times.npy"
    np.save(folder / times_file, np.frombuffer(times, dtype=np.float64))
    return {
        "name": path.name,
        "path": str(path.resolve()),
        "bytes": path.stat().st_size,
        "sha256": sha,
        "codec": reader.codec,
        "source_fps": reader.source_fps,
        "source_size": [reader.width, reader.height],
        "timestamps_from": reader.timestamps,
        "frames_announced": reader.frames_announced,
        "frames_decoded": reader.frames_decoded,
        "bad_packets": reader.errors.count,
        "frames": writer.count,
        "duration": reader.last_time + 1.0 / (reader.source_fps or FALLBACK_FPS),  # seconds
        "file": frames_file,
        "times": times_file,
    }


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)



def _reusable(entry: dict, data_dir: Path, size: int) -> bool:
    frames, times = data_dir / entry["file"], data_dir / entry["times"]
    return (frames.is_file() and frames.stat().st_size == frames_bytes(entry["frames"], size)
            and times.is_file())


def _previous_manifest(out: Path) -> dict | None:
    """The finished prepared folder at ``out``, or None if there is none; refuse anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another output path")
    if not (out / MANIFEST).is_file():
        if any(out.iterdir()):
            raise UserError(f"{out} exists and is not a prepared video folder (no {MANIFEST}); "
                            "choose another output path or remove it")
        return None
    try:
        return load_manifest(out, check_files=False)
    except UserError:
        return None  # unreadable or another version: rebuilt from scratch, replaced when done


def prepare_videos(
    src: str | Path,
    out: str | Path,
    *,
    fps: float | None = 2.0,
    size: int = FRAME_SIZE,
    resize: str = "squash",
    test_videos: list[str] | None = None,
    test_fraction: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode a video file or a folder of videos into a prepared folder ``out``; returns its manifest.

    Each video is resampled to ``fps`` (None: every frame) and resized to
    ``size`` x ``size`` (32, 64, the model's default, or 128) by ``resize``
    (``"squash"`` or ``"crop"``), and its frames are streamed to
    ``out/frames/<stem>-<sha8>.u8``, a raw uint8 array of shape (n, size, size, 3)
    (``np.memmap(path, np.uint8, "r", shape=(n, size, size, 3))``, n from the manifest).

    **Split by video, never by frame.** ``test_videos`` names the test videos (file
    names or stems); otherwise ``test_fraction`` (default 0.2) of the videos, rounded,
    at least one and leaving at least one for training, are test: the last ones in
    sorted name order. With a single video, its leading part is train and its trailing
    ``test_fraction`` (default 0.2) of frames is test; the manifest records
    ``split_at`` and a note is printed.

    **Bad input.** A missing path, a folder without videos, bad settings: UserError.
    In a folder, a file that cannot be decoded (not a video, audio only, zero-length,
    no decodable frame) is skipped with a :class:`VideoWarning`, and so is a second
    copy of the same content; a damaged file keeps what decodes. If no video is left,
    UserError and nothing is written.

    **Re-running** hashes every source (SHA-256) and reuses the frames file of any
    source whose content and settings are unchanged (hard link, else copy). If the
    result equals the existing manifest, nothing is touched.

    **Atomicity.** Everything is written to a temporary folder beside ``out`` and
    moved into place only when complete; an existing ``out`` is replaced whole, by two
    renames (:mod:`indpred.data.video.publish` gives the sequence). An interrupted or
    failed run leaves ``out`` as it was; its temporary folder is removed (or, after a
    kill, by the next run, which also puts back an old folder a kill left aside).
    """
    settings = _check_settings(fps, size, resize, test_videos, test_fraction)
    if test_videos is not None and isinstance(test_videos, str):
        test_videos = [test_videos]
    src, out = Path(src), Path(out)
    sources = _list_sources(src, test_videos)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep(out)  # first: it may put back the old folder of an update that was killed
    previous = _previous_manifest(out)
    reusable: dict[str, dict] = {}
    if previous is not None and previous["settings"] == settings:
        reusable = {e["sha256"]: e for e in previous["videos"] if _reusable(e, out, size)}
    with staging(out) as tmp:
        (tmp / FRAMES_DIR).mkdir()
        entries, skipped = _prepare_sources(sources, out, tmp, reusable, settings, progress)
        if not entries:
            first = skipped[0]["reason"] if skipped else "no input"
            raise UserError(f"none of the {len(sources)} videos in {src} could be prepared (first: {first})")
        notes: list[str] = []
        split_rule = assign_splits(entries, test_videos=test_videos, test_fraction=test_fraction,
                                   notes=notes)
        manifest = make_manifest(settings, split_rule, entries, skipped, notes)
        if previous is not None and manifest == previous:
            manifest = previous  # nothing changed: ``out`` is left untouched, ``tmp`` removed
        else:
            _write_manifest(tmp, manifest)
            publish(tmp, out)
    for note in manifest["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return manifest


def _check_settings(fps: float | None, size: int, resize: str, test_videos: list[str] | None,
                    test_fraction: float | None) -> dict[str, Any]:
    """The checked settings ``{"fps", "size", "resize"}``; UserError for bad ones or a bad split."""
    fps = check_fps(fps)
    if size not in IMAGE_SIZES:
        raise UserError(f"size must be one of {', '.join(map(str, IMAGE_SIZES))} (the model's frame sides), "
                        f"got {size!r}")
    resize = check_resize(resize)
    if test_videos is not None and test_fraction is not None:
        raise UserError("give test_videos or test_fraction, not both")
    if test_fraction is not None and not (isinstance(test_fraction, numbers.Real) and 0 < test_fraction < 1):
        raise UserError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    return {"fps": fps, "size": size, "resize": resize}


def _list_sources(src: Path, test_videos: list[str] | None) -> list[Path]:
    """The videos of ``src``, with the names in ``test_videos`` checked before any decoding."""
    sources = list_videos(src)
    if test_videos is not None:
        if len(sources) == 1:
            raise UserError("with a single video the split is by time; "
                            "use test_fraction instead of test_videos")
        match_names([p.name for p in sources], test_videos, "test_videos")
    return sources


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """The manifest into ``folder``, the last file written, then everything flushed to disk."""
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_path(folder / MANIFEST)
    fsync_path(folder / FRAMES_DIR)


def _prepare_sources(sources: list[Path], out: Path, tmp: Path, reusable: dict[str, dict],
                     settings: dict, progress: bool) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every source into ``tmp``: (manifest entries, skipped files), in ``sources``' order.

    A source is skipped with a warning when it cannot be prepared (with a single source the
    UserError stands) or has the same content as an earlier one.
    """
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    used_stems: set[str] = set()
    single = len(sources) == 1
    for path in sources:
        sha = _hash(path, single)
        if sha and sha in seen:
            _skip(skipped, path, f"same content as {seen[sha]}")
            continue
        stem = f"{_safe_stem(path.name)}-{sha[:8]}"
        while stem in used_stems:
            stem += "_"
        used_stems.add(stem)
        try:
            entry = _entry(path, sha, stem, out, tmp, reusable, settings, progress)
        except UserError as e:
            if single:
                raise
            _skip(skipped, path, str(e))
            continue
        seen[sha] = path.name
        entries.append(entry)
    return entries, skipped


def _hash(path: Path, single: bool) -> str:
    """The SHA-256 of ``path``; "" for an empty or (in a folder) unreadable file."""
    try:
        return file_digest(path) if path.stat().st_size else ""
    except OSError as e:
        if single:
            raise UserError(f"cannot read {path}: {e.strerror or e}") from None
        return ""  # unreadable: VideoReader says why


def _skip(skipped: list[dict[str, str]], path: Path, reason: str) -> None:
    # stacklevel 4: the warning names the line that called prepare_videos
    warnings.warn(f"skipping {path.name}: {reason}", VideoWarning, stacklevel=4)
    skipped.append({"name": path.name, "path": str(path.resolve()), "reason": reason})


def _entry(path: Path, sha: str, stem: str, out: Path, tmp: Path, reusable: dict[str, dict],
           settings: dict, progress: bool) -> dict[str, Any]:
    """Source ``path``'s manifest entry (without the split), its frames in ``tmp``: linked from
    ``out`` when ``reusable`` has its content, else decoded."""
    old = reusable.get(sha) if sha else None
    if old is None:
        return _prepare_one(path, sha, tmp, stem, settings, progress)
    entry = dict(old)
    entry.update(name=path.name, path=str(path.resolve()), file=f"{FRAMES_DIR}/{stem}.u8",
                 times=f"{FRAMES_DIR}/{stem}.times.npy")
    _link_or_copy(out / old["file"], tmp / entry["file"])
    _link_or_copy(out / old["times"], tmp / entry["times"])
    return entry
