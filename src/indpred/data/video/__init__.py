"""Real video: decode, resample by timestamps, resize to 64x64, cache as raw frames, serve windows.

The paper's "5th Avenue" data is hours of a fixed camera, sampled at 2 frames per
second and resized to 64x64. This package does the same for any folder of videos:

* :mod:`.read`: :func:`iter_frames` streams one video as ``(seconds, uint8 (size, size, 3)
  RGB)`` pairs, resampled to a target rate by the frames' timestamps (:class:`VideoReader`,
  the same with metadata and counters); the decoding rules are in its docstring;
* :mod:`.prepare`: :func:`prepare_videos` decodes a file or a folder once into a prepared
  folder (one raw uint8 file per video plus ``manifest.json``), split into train and
  test by video (:mod:`.split`) and published whole (:mod:`.publish`);
* :mod:`.manifest`: the prepared folder's format, :func:`load_manifest`;
* :mod:`.frames`: :class:`VideoFrames` serves T-frame windows of a prepared folder, like
  :class:`~indpred.data.MovingMNIST`, deterministically by (seed, split, index).

Every public name is importable from here (``from indpred.data.video import ...``).
"""

from indpred.data.video.frames import VideoFrames
from indpred.data.video.manifest import FORMAT, MANIFEST, VERSION, load_manifest
from indpred.data.video.prepare import VIDEO_EXTENSIONS, list_videos, prepare_videos
from indpred.data.video.read import (
    FRAME_SIZE,
    RESIZE_MODES,
    TIME_TOLERANCE,
    VideoReader,
    VideoWarning,
    frames_to_tensor,
    iter_frames,
)

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
