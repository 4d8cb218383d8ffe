"""Decoding one video with PyAV: timestamps, resampling to a frame rate, resizing to 64x64 RGB.

Rules (the choices, in one place; ``docs/VIDEO.md`` has examples):

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

import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch import Tensor

from indpred.errors import UserError

__all__ = [
    "FALLBACK_FPS",
    "FRAME_SIZE",
    "RESIZE_MODES",
    "TIME_TOLERANCE",
    "VideoReader",
    "VideoWarning",
    "check_fps",
    "check_resize",
    "frames_to_tensor",
    "iter_frames",
]

RESIZE_MODES = ("squash", "crop")
FRAME_SIZE = 64
"""The default frame side (the paper's 64); prepare-video also takes 32 and 128."""

TIME_TOLERANCE = 1e-3
"""Seconds: a frame this much before a target time still counts as at or after it."""

PROBE_FRAMES = 32  # frames decoded up front to choose between pts and dts
FALLBACK_FPS = 25.0
"""Nominal rate of a stream that declares none (it only fills in missing times and durations)."""


class VideoWarning(UserWarning):
    """Something about a video the user should know, that does not stop the work."""


def check_fps(fps: float | None) -> float | None:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise UserError(f"fps must be a number > 0 (or None for every frame), got {fps!r}")
    if not math.isfinite(fps) or fps <= 0:
        raise UserError(f"fps must be > 0 (frames per second to keep), got {fps}")
    return float(fps)


def check_resize(resize: str) -> str:
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
        self.fps = check_fps(fps)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"size must be a positive integer, got {size!r}")
        self.size = size
        self.resize = check_resize(resize)
        self.on_decoded = on_decoded
        self.frames_decoded = 0
        self.frames_kept = 0
        self.last_time = 0.0
        self.errors = _Errors()
        self.timestamps = self._probe()
        self.every_frame = self.fps is None
        if self.fps is not None and self.source_fps and self.fps > self.source_fps * (1 + 1e-6):
            self.every_frame = True
            warnings.warn(
                f"{self.path.name}: target {self.fps:g} fps is above the source's {self.source_fps:g} fps; "
                "keeping every frame", VideoWarning, stacklevel=2)

    def _probe(self) -> str:
        """Read the metadata and decode the first frames; which timestamps to use ("pts" or "dts")."""
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
        return "pts" if _faults(pts) <= _faults(dts) else "dts"

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        self.frames_decoded = self.frames_kept = 0
        self.last_time = 0.0
        self.errors = _Errors()
        step = 1.0 / (self.source_fps or FALLBACK_FPS)
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

