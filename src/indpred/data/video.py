"""Real video: decode, resample by timestamps, resize to 64x64, cache as raw frames, serve windows.

The paper's "5th Avenue" data is hours of a fixed camera, sampled at 2 frames per
second and resized to 64x64. This module does the same for any folder of videos:

* :func:`iter_frames` streams one video as ``(seconds, uint8 (size, size, 3) RGB)``
  pairs, resampled to a target rate by the frames' timestamps;
* :func:`prepare_videos` decodes a file or a folder once into a prepared folder
  (one raw uint8 file per video plus ``manifest.json``), split into train and test
  by video;
* :class:`VideoFrames` serves T-frame windows of a prepared folder, like
  :class:`~indpred.data.MovingMNIST`, deterministically by (seed, split, index).

Layout of a prepared folder (see ``docs/VIDEO.md``)::

    OUT/manifest.json                       settings, per-video metadata, the split
    OUT/frames/<stem>-<sha8>.u8             (n, 64, 64, 3) uint8, row-major, no header
    OUT/frames/<stem>-<sha8>.times.npy      (n,) float64, seconds since the first frame

Rules (the choices, in one place):

* **Timestamps.** A frame's time is its presentation timestamp (pts x time_base).
  Some containers (AVI above all) carry no real presentation times: the decoder
  hands back decode-order numbers as pts. A short probe of the first frames picks,
  per video, the timestamp (pts, or else dts) that increases in presentation order;
  a missing or non-increasing time is replaced by the previous time plus one
  nominal frame duration. Times are reported relative to the first decoded frame.
* **Resampling.** With ``fps`` set, the kept frames are, for each target time
  ``k / fps`` (k = 0, 1, ...), the first decoded frame whose time is at or after it
  (within :data:`TIME_TOLERANCE`, which absorbs rounding and nominal rates such as
  59.99998). A frame is kept at most once, so a gap in a variable-frame-rate source
  leaves a gap rather than repeated frames. ``fps=None`` keeps every frame; a target
  above the source's nominal rate keeps every frame too and warns (:class:`VideoWarning`).
* **Resizing.** ``"squash"`` scales the whole frame to size x size, ignoring the
  aspect ratio (what the paper did); ``"crop"`` keeps the centred square of side
  min(width, height) (to within half an output pixel). Scaling is FFmpeg's area filter (swscale ``AREA``: area
  averaging when shrinking, i.e. antialiased), done with the colour conversion in one
  pass. Grayscale and alpha sources come out as RGB. Display-rotation metadata is
  ignored.
* **Damaged files.** Everything decodable is kept: packets the decoder rejects are
  skipped and counted, and a warning says so, as it does when fewer frames decode
  than the container announces (a truncated file). A file with no decodable video
  frame is refused with a :class:`~indpred.errors.UserError`.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import json
import math
import numbers
import os
import re
import secrets
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch import Tensor
from tqdm.auto import tqdm

from indpred.data.batched import BatchedDataset, check_int
from indpred.errors import UserError
from indpred.fileio import file_digest, fsync_path

__all__ = [
    "FORMAT",
    "FRAME_SIZE",
    "MANIFEST",
    "RESIZE_MODES",
    "TIME_TOLERANCE",
    "VERSION",
    "VIDEO_EXTENSIONS",
    "VideoFrames",
    "VideoReader",
    "VideoWarning",
    "frames_to_tensor",
    "iter_frames",
    "list_videos",
    "load_manifest",
    "prepare_videos",
]

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m2v",
    ".ts", ".mts", ".m2ts", ".wmv", ".asf", ".flv", ".3gp", ".3g2", ".ogv", ".vob",
    ".dv", ".mxf", ".y4m", ".h264", ".264", ".hevc", ".h265",
})
"""File name extensions (lower case, with the dot) taken as videos when listing a folder."""

RESIZE_MODES = ("squash", "crop")
FRAME_SIZE = 64
"""The side the model's DCGAN networks are built for; prepared frames are FRAME_SIZE square."""

TIME_TOLERANCE = 1e-3
"""Seconds: a frame this much before a target time still counts as at or after it."""

MANIFEST = "manifest.json"
FORMAT = "indpred-video"
VERSION = 1
FRAMES_DIR = "frames"
DEFAULT_TEST_FRACTION = 0.2
PROBE_FRAMES = 32  # frames decoded up front to choose between pts and dts
_FALLBACK_FPS = 25.0  # nominal rate of a stream that declares none (only fills missing times)
_SPLIT_CODES = {"train": 0, "test": 1}  # second word of the per-item SeedSequence


class VideoWarning(UserWarning):
    """Something about a video the user should know, that does not stop the work."""


# --------------------------------------------------------------------------- decoding


def _check_fps(fps: float | None) -> float | None:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise UserError(f"fps must be a number > 0 (or None for every frame), got {fps!r}")
    if not math.isfinite(fps) or fps <= 0:
        raise UserError(f"fps must be > 0 (frames per second to keep), got {fps}")
    return float(fps)


def _check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise UserError(f"unknown resize mode {resize!r}: "
                        "use 'squash' (whole frame) or 'crop' (centre square)")
    return resize


def _open(path: Path) -> av.container.InputContainer:
    """Open ``path`` for decoding, turning every failure into a one-line UserError."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes): not a video")
    try:
        return av.open(str(path), mode="r")
    except av.error.EOFError:
        raise UserError(f"{path} ends before any video data (a zero-length or truncated file)") from None
    except (av.error.FFmpegError, ValueError, OSError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"{path} is not a video FFmpeg can read ({reason}); remove or convert it") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise UserError(f"{path} has no video stream (it holds: {', '.join(kinds)}); it is not a video")
    return container.streams.video[0]


def _nominal_fps(stream: av.video.stream.VideoStream) -> float:
    """The stream's declared average frame rate, or its guessed one; 0.0 when neither is known."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


class _Errors:
    """Decoding errors of one pass: how many, and the first few messages."""

    KEEP = 5

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.first) < self.KEEP:
            self.first.append(message)


def _decode(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
            errors: _Errors) -> Iterator[av.VideoFrame]:
    """Every decodable frame of ``stream``, in presentation order.

    Packets the decoder rejects are skipped (and counted in ``errors``); a demuxer
    error ends the stream (what came before it is kept). The final empty packet
    flushes the decoder's delayed frames.
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.EOFError:
            return
        except av.error.FFmpegError as e:
            errors.add(f"demuxing stopped: {e}")
            return
        try:
            frames = packet.decode()
        except av.error.EOFError:
            continue
        except av.error.FFmpegError as e:
            errors.add(str(e))
            continue
        yield from frames


class _Clock:
    """Turns a frame's pts or dts into seconds, increasing (see the module docstring)."""

    def __init__(self, source: str, time_base: float, step: float) -> None:
        self.source = source  # "pts" or "dts"
        self.time_base = time_base
        self.step = step  # nominal frame duration in seconds
        self.last: float | None = None

    def __call__(self, frame: av.VideoFrame) -> float:
        stamp = frame.pts if self.source == "pts" else frame.dts
        t = None if stamp is None else stamp * self.time_base
        if t is None or (self.last is not None and t <= self.last):
            t = 0.0 if self.last is None else self.last + self.step
        self.last = t
        return t


def _faults(stamps: list[int | None]) -> int:
    """How many of ``stamps`` are missing or not above the previous one."""
    faults, last = 0, None
    for s in stamps:
        if s is None or (last is not None and s <= last):
            faults += 1
        if s is not None:
            last = s
    return faults


def _to_rgb(frame: av.VideoFrame, size: int, resize: str, reformatter: VideoReformatter) -> np.ndarray:
    """A decoded frame → uint8 (size, size, 3) RGB, squashed or centre-cropped, antialiased.

    FFmpeg's swscale does the scaling and the colour conversion in one pass with its
    area filter (area averaging when shrinking, so fine detail cannot alias; the same
    as ``ffmpeg -vf scale=W:H:flags=area``). For "crop" the shorter side is scaled to
    ``size`` (the longer in proportion) and the centred size x size is cut out: the
    centre square of the source, to within half an output pixel. ``reformatter`` keeps
    swscale's context from frame to frame (building it is most of the cost).
    """
    if resize == "squash":
        width, height = size, size
    elif frame.width >= frame.height:
        width, height = max(size, round(size * frame.width / frame.height)), size
    else:
        width, height = size, max(size, round(size * frame.height / frame.width))
    scaled = reformatter.reformat(frame, width=width, height=height, format="rgb24", interpolation="AREA")
    rgb = scaled.to_ndarray()  # (height, width, 3)
    left, top = (width - size) // 2, (height - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])  # (size, size, 3)


class VideoReader:
    """One video, decoded as a stream of resampled, resized RGB frames.

    Construction opens the file, reads its metadata and decodes up to
    :data:`PROBE_FRAMES` frames to choose its timestamps (so a file that is not a
    decodable video fails here, with a :class:`UserError`); iterating decodes it from
    the start, holding one frame at a time, and yields ``(seconds, frame)`` with
    ``frame`` uint8 (size, size, 3) RGB and ``seconds`` since the first decoded frame.
    It can be iterated more than once. Counters (``frames_decoded``, ``frames_kept``,
    ``errors.count`` packets the decoder rejected, ``last_time`` of the last decoded
    frame) describe the latest iteration.

    Attributes set at construction: ``width``, ``height`` (source pixels), ``source_fps``
    (declared average rate, 0.0 if unknown), ``frames_announced`` (the container's
    frame count, 0 if unknown), ``codec``, ``timestamps`` ("pts" or "dts"),
    ``every_frame`` (True when every frame is kept: ``fps`` None or above the source's).
    """

    def __init__(self, path: str | Path, *, fps: float | None, size: int = FRAME_SIZE,
                 resize: str = "squash",
                 on_decoded: Callable[[int], Any] | None = None) -> None:
        self.path = Path(path)
        self.fps = _check_fps(fps)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"size must be a positive integer, got {size!r}")
        self.size = size
        self.resize = _check_resize(resize)
        self.on_decoded = on_decoded
        self.frames_decoded = 0
        self.frames_kept = 0
        self.last_time = 0.0
        self.errors = _Errors()
        with _open(self.path) as container:
            stream = _video_stream(container, self.path)
            self.width = int(stream.codec_context.width)
            self.height = int(stream.codec_context.height)
            self.codec = stream.codec_context.name
            self.source_fps = _nominal_fps(stream)
            self.frames_announced = int(stream.frames or 0)
            self._time_base = float(stream.time_base) if stream.time_base else 0.0
            stream.thread_type = "AUTO"  # as when iterating: the timestamps a decoder hands back can
            # depend on its threading, so the probe must see the same kind
            pts: list[int | None] = []
            dts: list[int | None] = []
            probe_errors = _Errors()
            for frame in _decode(container, stream, probe_errors):
                pts.append(frame.pts)
                dts.append(frame.dts)
                if len(pts) >= PROBE_FRAMES:
                    break
        if not pts:
            detail = f" ({probe_errors.first[0]})" if probe_errors.first else ""
            raise UserError(f"{self.path} contains no decodable video frame (zero-length or corrupt){detail}")
        if not self._time_base:
            pts, dts = [None] * len(pts), [None] * len(dts)
        self.timestamps = "pts" if _faults(pts) <= _faults(dts) else "dts"
        self.every_frame = self.fps is None
        if self.fps is not None and self.source_fps and self.fps > self.source_fps * (1 + 1e-6):
            self.every_frame = True
            warnings.warn(
                f"{self.path.name}: target {self.fps:g} fps is above the source's {self.source_fps:g} fps; "
                "keeping every frame", VideoWarning, stacklevel=2)

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        self.frames_decoded = self.frames_kept = 0
        self.last_time = 0.0
        self.errors = _Errors()
        step = 1.0 / (self.source_fps or _FALLBACK_FPS)
        clock = _Clock(self.timestamps, self._time_base, step)
        t0: float | None = None
        last_bucket = -1
        reformatter = VideoReformatter()
        with _open(self.path) as container:
            stream = _video_stream(container, self.path)
            stream.thread_type = "AUTO"
            for frame in _decode(container, stream, self.errors):
                self.frames_decoded += 1
                if self.on_decoded is not None:
                    self.on_decoded(1)
                t_abs = clock(frame)
                if t0 is None:
                    t0 = t_abs
                t = self.last_time = t_abs - t0
                if not self.every_frame:
                    bucket = math.floor((t + TIME_TOLERANCE) * self.fps)  # index of the last target <= t
                    if bucket <= last_bucket:
                        continue
                    last_bucket = bucket
                self.frames_kept += 1
                yield t, _to_rgb(frame, self.size, self.resize, reformatter)  # gray, alpha → RGB
        self._warn_damage()

    def _warn_damage(self) -> None:
        name = self.path.name
        if self.errors.count:
            warnings.warn(f"{name}: {self.errors.count} packet(s) could not be decoded and were skipped "
                          f"(first: {self.errors.first[0]})", VideoWarning, stacklevel=3)
        announced = self.frames_announced
        if announced and self.frames_decoded < 0.99 * announced - 2:
            warnings.warn(f"{name}: decoded {self.frames_decoded} of the {announced} frames the container "
                          "announces; the file may be truncated or damaged", VideoWarning, stacklevel=3)


def iter_frames(path: str | Path, *, fps: float | None, size: int = FRAME_SIZE,
                resize: str = "squash") -> Iterator[tuple[float, np.ndarray]]:
    """Stream a video as ``(seconds, frame)``: frame uint8 (size, size, 3) RGB.

    Decodes with PyAV holding one frame at a time, so memory does not grow with the
    video's length. ``fps`` resamples by timestamps (the first frame at or after each
    ``k / fps``; never a frame twice); ``None`` keeps every frame, and a rate above the
    source's keeps every frame with a :class:`VideoWarning`. ``seconds`` counts from
    the first decoded frame. ``resize`` is ``"squash"`` or ``"crop"``. Errors in the
    arguments or the file raise :class:`UserError` when the iteration starts. See the
    module docstring for the rules in full.
    """
    yield from VideoReader(path, fps=fps, size=size, resize=resize)


def frames_to_tensor(frames: np.ndarray) -> Tensor:
    """uint8 (..., H, W, 3) → float32 (..., 3, H, W) in [0, 1], the model's input layout."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3)  # a view, channels last in memory
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


# --------------------------------------------------------------------------- preparing


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
        "duration": reader.last_time + 1.0 / (reader.source_fps or _FALLBACK_FPS),  # seconds
        "file": frames_file,
        "times": times_file,
    }


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _frames_bytes(n: int, size: int) -> int:
    return n * size * size * 3


def _reusable(entry: dict, data_dir: Path, size: int) -> bool:
    frames, times = data_dir / entry["file"], data_dir / entry["times"]
    return (frames.is_file() and frames.stat().st_size == _frames_bytes(entry["frames"], size)
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(out: Path) -> None:
    """Delete temporary folders of ``out`` left by runs that were killed."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")
    for p in out.parent.glob(f".{out.name}.*"):
        m = pattern.match(p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _move_into_place(tmp: Path, out: Path) -> None:
    """Make the finished ``tmp`` folder ``out``, replacing an existing ``out`` whole."""
    if not out.exists():
        os.rename(tmp, out)
    elif _rename_exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
    else:
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fsync_path(out.parent)


def _match_names(names: Sequence[str], wanted: Sequence[str], what: str) -> set[str]:
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


def _assign_splits(entries: list[dict], *, test_videos: Sequence[str] | None,
                   test_fraction: float | None, notes: list[str]) -> dict[str, Any]:
    """Set ``split`` (and ``split_at``) on every entry; returns the split rule for the manifest."""
    if len(entries) == 1:
        e = entries[0]
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
    names = [e["name"] for e in entries]
    if test_videos is not None:
        chosen = _match_names(names, test_videos, "test_videos")
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
    ``size`` x ``size`` (which must be 64, the model's input) by ``resize``
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
    moved into place only when complete; an existing ``out`` is replaced whole (an
    atomic exchange on Linux). An interrupted or failed run leaves ``out`` as it was;
    its temporary folder is removed (or, after a kill, by the next run).
    """
    fps = _check_fps(fps)
    if size != FRAME_SIZE:
        raise UserError(f"size must be {FRAME_SIZE} (the model's 64x64 input), got {size!r}")
    resize = _check_resize(resize)
    if test_videos is not None and test_fraction is not None:
        raise UserError("give test_videos or test_fraction, not both")
    if test_fraction is not None and not (isinstance(test_fraction, numbers.Real) and 0 < test_fraction < 1):
        raise UserError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    if test_videos is not None and isinstance(test_videos, str):
        test_videos = [test_videos]
    src, out = Path(src), Path(out)
    sources = list_videos(src)
    names = [p.name for p in sources]
    if test_videos is not None:
        if len(sources) == 1:
            raise UserError("with a single video the split is by time; "
                            "use test_fraction instead of test_videos")
        _match_names(names, test_videos, "test_videos")  # fail before any decoding
    settings = {"fps": fps, "size": size, "resize": resize}

    out.parent.mkdir(parents=True, exist_ok=True)
    previous = _previous_manifest(out)
    reusable: dict[str, dict] = {}
    if previous is not None and previous["settings"] == settings:
        reusable = {e["sha256"]: e for e in previous["videos"] if _reusable(e, out, size)}
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    (tmp / FRAMES_DIR).mkdir(parents=True)
    try:
        entries: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        seen: dict[str, str] = {}
        used_stems: set[str] = set()
        for path in sources:
            try:
                sha = file_digest(path) if path.stat().st_size else ""
            except OSError as e:
                sha = ""  # unreadable: VideoReader says why below
                if len(sources) == 1:
                    raise UserError(f"cannot read {path}: {e.strerror or e}") from None
            if sha and sha in seen:
                reason = f"same content as {seen[sha]}"
                warnings.warn(f"skipping {path.name}: {reason}", VideoWarning, stacklevel=2)
                skipped.append({"name": path.name, "path": str(path.resolve()), "reason": reason})
                continue
            stem = f"{_safe_stem(path.name)}-{sha[:8]}"
            while stem in used_stems:
                stem += "_"
            used_stems.add(stem)
            old = reusable.get(sha) if sha else None
            try:
                if old is not None:
                    entry = dict(old)
                    entry.update(name=path.name, path=str(path.resolve()), file=f"{FRAMES_DIR}/{stem}.u8",
                                 times=f"{FRAMES_DIR}/{stem}.times.npy")
                    _link_or_copy(out / old["file"], tmp / entry["file"])
                    _link_or_copy(out / old["times"], tmp / entry["times"])
                else:
                    entry = _prepare_one(path, sha, tmp, stem, settings, progress)
            except UserError as e:
                if len(sources) == 1:
                    raise
                warnings.warn(f"skipping {path.name}: {e}", VideoWarning, stacklevel=2)
                skipped.append({"name": path.name, "path": str(path.resolve()), "reason": str(e)})
                continue
            seen[sha] = path.name
            entries.append(entry)
        if not entries:
            first = skipped[0]["reason"] if skipped else "no input"
            raise UserError(f"none of the {len(sources)} videos in {src} could be prepared (first: {first})")
        notes: list[str] = []
        split_rule = _assign_splits(entries, test_videos=test_videos, test_fraction=test_fraction,
                                    notes=notes)
        manifest = _manifest(settings, split_rule, entries, skipped, notes)
        if previous is not None and manifest == previous:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing changed: leave ``out`` untouched
            manifest = previous
        else:
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            fsync_path(tmp / MANIFEST)
            fsync_path(tmp / FRAMES_DIR)
            _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for note in manifest["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return manifest


def _manifest(settings: dict, split_rule: dict, entries: list[dict], skipped: list[dict],
              notes: list[str]) -> dict[str, Any]:
    libavcodec = av.library_versions["libavcodec"]

    def count(split: str) -> int:
        total = 0
        for e in entries:
            if e["split"] == split:
                total += e["frames"]
            elif e["split"] == "train+test":
                total += e["split_at"] if split == "train" else e["frames"] - e["split_at"]
        return total

    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": settings,
        "frame_shape": [settings["size"], settings["size"], 3],
        "dtype": "uint8",
        "split": split_rule,
        "frames": {"train": count("train"), "test": count("test")},
        "videos": entries,
        "skipped": skipped,
        "notes": notes,
        "decoder": f"PyAV {av.__version__}, libavcodec {'.'.join(map(str, libavcodec))}",
    }


def load_manifest(data_dir: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """The manifest of a prepared video folder, checked; UserError if the folder is not one.

    With ``check_files`` every frames file must exist with the size the manifest gives.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    hint = f"prepare it first (indpred prepare-video SRC --out {data_dir})"
    if not path.is_file():
        raise UserError(f"{data_dir} is not a prepared video folder (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}; {hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an indpred video manifest; {hint}")
    if manifest.get("version") != VERSION:
        raise UserError(f"{path} has version {manifest.get('version')!r}, this indpred reads {VERSION}; "
                        "prepare the videos again")
    if check_files:
        size = manifest["settings"]["size"]
        for e in manifest["videos"]:
            f = data_dir / e["file"]
            want = _frames_bytes(e["frames"], size)
            got = f.stat().st_size if f.is_file() else None
            if got != want:
                state = "missing" if got is None else f"{got} bytes, expected {want}"
                raise UserError(f"{f} is {state}; prepare the videos again")
    return manifest


# --------------------------------------------------------------------------- serving


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
        if split not in _SPLIT_CODES:
            raise UserError(f"unknown split {split!r}: use 'train' or 'test'")
        self.data_dir = Path(data_dir)
        self.split = split
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
        seq = np.random.SeedSequence([self.seed, _SPLIT_CODES[self.split], i])
        rng = np.random.Generator(np.random.PCG64(seq))
        w = int(rng.integers(0, self.n_windows))
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

