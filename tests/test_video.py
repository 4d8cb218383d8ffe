"""Tests for indpred.data.video: decoding, resampling, resizing, preparing, publishing, serving windows."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from indpred.data.video import (
    VideoFrames,
    VideoReader,
    VideoWarning,
    iter_frames,
    list_videos,
    load_manifest,
    prepare,
    prepare_videos,
    publish,
)
from indpred.errors import UserError
from indpred.paths import shared_data_dir

STEP = 6  # gray level per frame index painted into synthetic videos (40 frames fit in 0..255)

# The shared clips: (file, frame counts a decoder may give, nominal fps, duration in seconds)
CLIPS = [
    ("pets2009_s2l1_vtest_480x360.avi", {795, 797}, 10.0, 79.5),
    ("cdnet_highway_320x240.avi", {1699}, 60.0, 28.3),
    ("intel_car_detection_768x432.mp4", {377}, 12.5, 30.2),
]


# --------------------------------------------------------------------------- helpers


def write_video(path: Path, frames: list[np.ndarray], *, rate: float = 10, codec: str = "ffv1",
                pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None,
                options: dict[str, str] | None = None) -> Path:
    """Encode RGB uint8 (h, w, 3) frames with PyAV; ``pts_ms`` gives explicit times (VFR)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        rate_q = Fraction(rate).limit_denominator(1000)
        stream = container.add_stream(codec, rate=rate_q, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gray(i: int, size: int = 32) -> np.ndarray:
    """A flat frame whose gray level encodes the index i."""
    return np.full((size, size, 3), i * STEP, np.uint8)


def index_of(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / STEP)


def indexed_video(path: Path, n: int, *, rate: float = 10, **kwargs) -> Path:
    return write_video(path, [gray(i) for i in range(n)], rate=rate, **kwargs)


def tagged_video(path: Path, n: int, tag: int) -> Path:
    """Frames whose red level encodes ``tag`` and green level the frame index (lossless RGB)."""
    frames = []
    for i in range(n):
        f = np.zeros((16, 16, 3), np.uint8)
        f[..., 0] = tag * 40
        f[..., 1] = i * STEP
        frames.append(f)
    return write_video(path, frames, pix_fmt="bgr0")


def kept(path: Path, fps: float | None) -> tuple[list[int], list[float]]:
    pairs = list(iter_frames(path, fps=fps))
    return [index_of(f) for _, f in pairs], [t for t, _ in pairs]


@pytest.fixture
def shared_video_dir() -> Path:
    folder = shared_data_dir() / "video"
    if not all((folder / name).is_file() for name, *_ in CLIPS):
        pytest.skip(f"shared video clips not found in {folder} (set INDPRED_TEST_DATA)")
    return folder


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, out: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}."))


# --------------------------------------------------------------------------- the shared clips


@pytest.mark.parametrize("name,counts,fps,duration", CLIPS)
def test_shared_clips_decode_to_documented_counts_and_rates(shared_video_dir, name, counts, fps, duration):
    reader = VideoReader(shared_video_dir / name, fps=None)
    assert reader.source_fps == pytest.approx(fps, rel=1e-3)
    times = [t for t, _ in reader]
    assert reader.frames_decoded in counts and len(times) == reader.frames_decoded
    assert times[0] == 0.0 and np.all(np.diff(times) > 0)
    assert np.diff(times).mean() == pytest.approx(1 / fps, rel=1e-3)  # presentation times, not decode order
    assert times[-1] == pytest.approx(duration - 1 / fps, abs=0.15)


def test_shared_clips_prepared_at_2fps(shared_video_dir, tmp_path):
    manifest = prepare_videos(shared_video_dir, tmp_path / "prep", fps=2.0, progress=False)
    by_name = {e["name"]: e for e in manifest["videos"]}
    assert sorted(by_name) == sorted(name for name, *_ in CLIPS)
    for name, counts, fps, duration in CLIPS:
        e = by_name[name]
        assert abs(e["frames"] - duration * 2) <= 1, (name, e["frames"])
        assert e["frames_decoded"] in counts and e["source_fps"] == pytest.approx(fps, rel=1e-3)
        assert e["duration"] == pytest.approx(duration, abs=0.1)
        times = np.load(tmp_path / "prep" / e["times"])
        assert np.allclose(np.diff(times), 0.5, atol=1 / fps + 1e-6)
    # three videos, default fraction 0.2 → one test video, the last in sorted order
    assert [e["split"] for e in manifest["videos"]] == ["train", "train", "test"]
    assert manifest["videos"][-1]["name"] == sorted(by_name)[-1]


# --------------------------------------------------------------------------- resampling


def test_resampling_constant_rate_by_timestamps(tmp_path):
    path = indexed_video(tmp_path / "cfr.mkv", 40, rate=10)
    idx, times = kept(path, None)
    assert idx == list(range(40))
    assert np.allclose(times, np.arange(40) / 10)
    assert kept(path, 2.0)[0] == list(range(0, 40, 5))
    # first frame at or after each k/3 s: ceil(10 k / 3)
    assert kept(path, 3.0)[0] == [0, 4, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37]
    assert kept(path, 10.0)[0] == list(range(40))


def test_resampling_above_source_rate_keeps_every_frame_and_warns(tmp_path):
    path = indexed_video(tmp_path / "cfr.mkv", 12, rate=10)
    with pytest.warns(VideoWarning, match="above the source"):
        idx, _ = kept(path, 25.0)
    assert idx == list(range(12))


def test_resampling_variable_frame_rate(tmp_path):
    times_ms = [0, 100, 150, 400, 410, 420, 1000, 1600, 1650, 1700, 2300]
    offset = 500  # a stream need not start at zero: times count from the first frame
    path = write_video(tmp_path / "vfr.mkv", [gray(i) for i in range(len(times_ms))], rate=25,
                       pts_ms=[t + offset for t in times_ms])
    idx, times = kept(path, None)
    assert idx == list(range(len(times_ms)))
    assert np.allclose(times, np.array(times_ms) / 1000)
    # targets every 0.2 s; each takes the first frame at or after it, never a frame twice
    idx, times = kept(path, 5.0)
    assert idx == [0, 3, 6, 7, 10]
    assert np.allclose(times, [0.0, 0.4, 1.0, 1.6, 2.3])


def test_resampling_avi_with_b_frames_uses_presentation_order(tmp_path):
    # H.264 with B-frames in AVI: the decoder's pts come back in decode order (like the PETS clip)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 128, (64, 64, 3), dtype=np.uint8)
    frames = []
    for i in range(30):
        f = np.roll(texture, 2 * i, axis=1)
        f[48:] = i * STEP
        frames.append(f)
    path = write_video(tmp_path / "bframes.avi", frames, rate=25, codec="libx264",
                       options={"bf": "3", "crf": "10"})
    with av.open(str(path)) as c:
        raw_pts = [f.pts for f in c.decode(video=0)]
    assert raw_pts != sorted(raw_pts), "the encoder made no B-frames; the test needs them"
    reader = VideoReader(path, fps=None)
    pairs = list(reader)
    assert reader.timestamps == "dts"
    assert [round(float(f[52:].mean()) / STEP) for _, f in pairs] == list(range(30))
    assert np.allclose([t for t, _ in pairs], np.arange(30) / 25)
    sub = [round(float(f[52:].mean()) / STEP) for _, f in iter_frames(path, fps=10.0)]
    assert sub == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]


# --------------------------------------------------------------------------- resizing


def striped(width: int, height: int) -> np.ndarray:
    """Red outer quarters and a green centre half along the long side; blue band at the top."""
    f = np.zeros((height, width, 3), np.uint8)
    if width >= height:
        q = width // 4
        f[:, :q, 0] = f[:, -q:, 0] = 255
        f[:, q:-q, 1] = 255
    else:
        q = height // 4
        f[:q, :, 0] = f[-q:, :, 0] = 255
        f[q:-q, :, 1] = 255
    return f


@pytest.mark.parametrize("shape", [(256, 128), (128, 256)])
def test_squash_keeps_everything_crop_keeps_the_centre(tmp_path, shape):
    width, height = shape
    path = write_video(tmp_path / "wide.mkv", [striped(width, height)] * 2, pix_fmt="bgr0")
    (_, squash), = list(iter_frames(path, fps=1.0, resize="squash"))
    (_, crop), = list(iter_frames(path, fps=1.0, resize="crop"))
    assert squash.shape == crop.shape == (64, 64, 3) and squash.dtype == np.uint8
    # crop: the centre square is the green half, nothing of the red quarters
    assert crop[..., 1].min() >= 250 and crop[..., 0].max() <= 5
    # squash: all of it, in proportion: 16 red | 32 green | 16 red along the long axis
    long_axis = squash if width >= height else squash.transpose(1, 0, 2)
    assert (long_axis[:, :16, 0] >= 250).all() and (long_axis[:, -16:, 0] >= 250).all()
    assert (long_axis[:, 16:48, 1] >= 250).all() and long_axis[:, 16:48, 0].max() <= 5


def test_gray_and_alpha_sources_come_out_rgb(tmp_path):
    g = write_video(tmp_path / "gray.mkv", [gray(20)] * 2, pix_fmt="gray")
    (_, f), = list(iter_frames(g, fps=1.0))
    assert f.shape == (64, 64, 3) and abs(int(f.mean()) - 120) <= 1
    a = write_video(tmp_path / "alpha.mov", [gray(20)] * 2, codec="png", pix_fmt="rgba")
    (_, f), = list(iter_frames(a, fps=1.0))
    assert f.shape == (64, 64, 3) and abs(int(f.mean()) - 120) <= 1


def test_iter_frames_argument_errors(tmp_path):
    path = indexed_video(tmp_path / "v.mkv", 3)
    for kwargs, match in [({"fps": 0}, "fps must be > 0"), ({"fps": -1.0}, "fps must be > 0"),
                          ({"fps": None, "resize": "stretch"}, "unknown resize"),
                          ({"fps": None, "size": 0}, "size must be")]:
        with pytest.raises(UserError, match=match):
            list(iter_frames(path, **kwargs))


# --------------------------------------------------------------------------- bad input


def truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


def garbled_copy(src: Path, dst: Path, n_bytes: int = 200_000) -> Path:
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n_bytes] = np.random.default_rng(0).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def header_only(path: Path) -> Path:
    """A container with a video stream and no frame at all."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    return path


def test_truncated_file_keeps_what_decodes(shared_video_dir, tmp_path):
    path = truncated_copy(shared_video_dir / "pets2009_s2l1_vtest_480x360.avi", tmp_path / "cut.avi", 0.3)
    with pytest.warns(VideoWarning, match="may be truncated"):
        reader = VideoReader(path, fps=2.0)
        times = [t for t, _ in reader]
    assert 100 < reader.frames_decoded < 795 * 0.5
    assert len(times) == pytest.approx(reader.frames_decoded / 5, abs=1)


def test_garbage_in_the_middle_skips_bad_packets(shared_video_dir, tmp_path):
    path = garbled_copy(shared_video_dir / "intel_car_detection_768x432.mp4", tmp_path / "garbled.mp4")
    with pytest.warns(VideoWarning) as record:
        reader = VideoReader(path, fps=2.0)
        frames = list(reader)
    messages = " | ".join(str(w.message) for w in record)
    assert "could not be decoded" in messages and "truncated or damaged" in messages
    assert reader.errors.count > 0 and 200 < reader.frames_decoded < 377
    assert frames[-1][0] > 25  # decoding went on past the damage


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("maker,match", [
    (lambda p: written(p.with_suffix(".mp4"), b""), "empty"),
    (lambda p: header_only(p.with_suffix(".mkv")), "zero-length"),
    (lambda p: header_only(p.with_suffix(".mp4")), "no video stream"),
    (lambda p: written(p.with_suffix(".mp4"), b"not a video\n" * 50), "not a video"),
    (lambda p: audio_only(p.with_suffix(".mkv")), "no video stream.*audio"),
])
def test_unreadable_files_are_user_errors(tmp_path, maker, match):
    path = maker(tmp_path / "bad")
    with pytest.raises(UserError, match=match):
        VideoReader(path, fps=2.0)
    with pytest.raises(UserError, match=match):
        prepare_videos(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, tmp_path / "out")


def test_folder_skips_bad_files_and_prepares_the_rest(tmp_path, shared_video_dir):
    src = tmp_path / "src"
    src.mkdir()
    indexed_video(src / "a.mkv", 20)
    indexed_video(src / "b.mkv", 30)
    (src / "fake.mp4").write_text("not a video\n" * 50)
    (src / "empty.mp4").write_bytes(b"")
    audio_only(src / "sound.mkv")
    header_only(src / "nothing.mkv")
    truncated_copy(shared_video_dir / "pets2009_s2l1_vtest_480x360.avi", src / "cut.avi", 0.3)
    shutil.copy(src / "a.mkv", src / "z_copy_of_a.mkv")
    (src / "notes.txt").write_text("ignored: not a video extension")
    with pytest.warns(VideoWarning) as record:
        manifest = prepare_videos(src, tmp_path / "out", fps=5.0, progress=False)
    messages = " | ".join(str(w.message) for w in record)
    for name in ("fake.mp4", "empty.mp4", "sound.mkv", "nothing.mkv", "z_copy_of_a.mkv"):
        assert f"skipping {name}" in messages
    assert "cut.avi" in messages and "truncated" in messages
    assert [e["name"] for e in manifest["videos"]] == ["a.mkv", "b.mkv", "cut.avi"]
    assert {s["name"] for s in manifest["skipped"]} == {"fake.mp4", "empty.mp4", "sound.mkv",
                                                         "nothing.mkv", "z_copy_of_a.mkv"}
    assert load_manifest(tmp_path / "out") == manifest


def test_all_bad_sources_write_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "fake.mp4").write_text("not a video\n" * 50)
    audio_only(src / "sound.mkv")
    with pytest.warns(VideoWarning), pytest.raises(UserError, match="none of the 2 videos"):
        prepare_videos(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, tmp_path / "out")


def test_argument_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no videos here")
    one = indexed_video(tmp_path / "one.mkv", 10)
    out = tmp_path / "out"
    cases = [
        (dict(src=tmp_path / "missing"), "no such file or folder"),
        (dict(src=empty), "no videos in"),
        (dict(src=one, fps=0), "fps must be > 0"),
        (dict(src=one, fps=-2.0), "fps must be > 0"),
        (dict(src=one, size=48), "size must be one of 32, 64, 128"),
        (dict(src=one, resize="stretch"), "unknown resize mode"),
        (dict(src=one, test_fraction=1.5), "test_fraction must be"),
        (dict(src=one, test_videos=["one"]), "single video"),
        (dict(src=one, test_videos=["one"], test_fraction=0.5), "not both"),
    ]
    for kwargs, match in cases:
        with pytest.raises(UserError, match=match):
            prepare_videos(kwargs.pop("src"), out, progress=False, **kwargs)
    assert not out.exists()
    (out / "something").mkdir(parents=True)
    with pytest.raises(UserError, match="not a prepared video folder"):
        prepare_videos(one, out, progress=False)
    with pytest.raises(UserError, match="not a prepared video folder"):
        load_manifest(tmp_path / "empty")


# --------------------------------------------------------------------------- splits


def make_folder(folder: Path, lengths: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for tag, (name, n) in enumerate(sorted(lengths.items())):
        tagged_video(folder / name, n, tag)
    return folder


def test_split_by_video(tmp_path):
    src = make_folder(tmp_path / "src", {f"{c}.mkv": 6 for c in "abcde"})
    m = prepare_videos(src, tmp_path / "o1", fps=None, progress=False)
    assert [e["split"] for e in m["videos"]] == ["train"] * 4 + ["test"]  # 0.2 of 5: the last one
    assert m["frames"] == {"train": 24, "test": 6}
    m = prepare_videos(src, tmp_path / "o2", fps=None, test_fraction=0.4, progress=False)
    assert [e["split"] for e in m["videos"]] == ["train"] * 3 + ["test"] * 2
    m = prepare_videos(src, tmp_path / "o3", fps=None, test_videos=["b", "d.mkv"], progress=False)
    assert [e["split"] for e in m["videos"]] == ["train", "test", "train", "test", "train"]
    with pytest.raises(UserError, match="no video named 'x'"):
        prepare_videos(src, tmp_path / "o4", test_videos=["x"], progress=False)
    with pytest.raises(UserError, match="at least one for training"):
        prepare_videos(src, tmp_path / "o4", fps=None, test_videos=list("abcde"), progress=False)
    two = make_folder(tmp_path / "two", {"a.mkv": 4, "b.mkv": 4})
    m = prepare_videos(two, tmp_path / "o5", fps=None, test_fraction=0.9, progress=False)
    assert [e["split"] for e in m["videos"]] == ["train", "test"]  # at least one of each


def test_single_video_is_split_in_time(tmp_path, capsys):
    path = tagged_video(tmp_path / "only.mkv", 20, 0)
    m = prepare_videos(path, tmp_path / "out", fps=None, progress=False)
    (e,) = m["videos"]
    assert e["split"] == "train+test" and e["split_at"] == 16
    assert m["frames"] == {"train": 16, "test": 4} and m["split"]["rule"] == "single-video"
    assert "only one video" in capsys.readouterr().err
    m = prepare_videos(path, tmp_path / "out2", fps=None, test_fraction=0.5, progress=False)
    assert m["videos"][0]["split_at"] == 10


# --------------------------------------------------------------------------- the prepared folder


def test_frames_file_is_a_memmap_of_the_decoded_frames(tmp_path):
    path = indexed_video(tmp_path / "v.mkv", 30)
    m = prepare_videos(path, tmp_path / "out", fps=2.5, progress=False)
    e = m["videos"][0]
    arr = np.memmap(tmp_path / "out" / e["file"], dtype=np.uint8, mode="r", shape=(e["frames"], 64, 64, 3))
    expected = list(iter_frames(path, fps=2.5))
    assert e["frames"] == len(expected) == 8 and e["frames_decoded"] == 30
    assert np.array_equal(arr, np.stack([f for _, f in expected]))
    assert np.array_equal(np.load(tmp_path / "out" / e["times"]), [t for t, _ in expected])
    assert e["file"].startswith("frames/v-") and e["sha256"][:8] in e["file"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == m and m["settings"] == {"fps": 2.5, "size": 64, "resize": "squash"}
    for key in ("path", "bytes", "sha256", "source_fps", "source_size", "frames_decoded", "frames", "split"):
        assert key in e


def test_rerun_skips_unchanged_sources(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "src", {"a.mkv": 8, "b.mkv": 8})
    out = tmp_path / "out"
    first = prepare_videos(src, out, fps=None, progress=False)
    before = tree_state(out)
    decoded: list[str] = []
    real = prepare._prepare_one

    def spy(path, *args, **kwargs):
        decoded.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare, "_prepare_one", spy)
    assert prepare_videos(src, out, fps=None, progress=False) == first
    assert decoded == [] and tree_state(out) == before  # nothing decoded, nothing touched
    tagged_video(src / "c.mkv", 8, 2)
    second = prepare_videos(src, out, fps=None, progress=False)
    assert decoded == ["c.mkv"]
    after = tree_state(out)
    for e in first["videos"]:  # the old frames files are the same files, untouched
        assert after[e["file"]] == before[e["file"]]
    assert [e["split"] for e in second["videos"]] == ["train", "train", "test"]
    prepare_videos(src, out, fps=None, resize="crop", progress=False)  # new settings: everything again
    assert decoded == ["c.mkv", "a.mkv", "b.mkv", "c.mkv"]
    assert not leftovers(tmp_path, out)


def test_failure_midway_leaves_nothing_half_written(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "src", {"a.mkv": 8, "b.mkv": 8})
    out = tmp_path / "out"
    calls = {"n": 0}
    real_write = prepare._FrameWriter.write

    def failing_write(self, frame):
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("disk full")
        real_write(self, frame)

    monkeypatch.setattr(prepare._FrameWriter, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_videos(src, out, fps=None, progress=False)
    assert not out.exists() and not leftovers(tmp_path, out)
    # an existing finished folder survives a failed update unchanged
    monkeypatch.setattr(prepare._FrameWriter, "write", real_write)
    first = prepare_videos(src, out, fps=None, progress=False)
    before = tree_state(out)
    calls["n"] = 0
    monkeypatch.setattr(prepare._FrameWriter, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_videos(src, out, fps=None, resize="crop", progress=False)
    assert tree_state(out) == before and load_manifest(out) == first
    assert not leftovers(tmp_path, out)


def test_update_replaces_the_folder_whole(tmp_path):
    src = make_folder(tmp_path / "src", {"a.mkv": 8, "b.mkv": 8})
    out = tmp_path / "out"
    prepare_videos(src, out, fps=None, progress=False)
    m = prepare_videos(src, out, fps=None, resize="crop", progress=False)
    assert load_manifest(out) == m and m["settings"]["resize"] == "crop"
    assert sorted(p.name for p in (out / "frames").iterdir()) == sorted(
        Path(e[k]).name for e in m["videos"] for k in ("file", "times"))
    assert not leftovers(tmp_path, out)


def test_stale_temporary_folders_are_removed(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{2**22 + 12345}-abcd"  # a pid far above any live one
    (stale / "frames").mkdir(parents=True)
    prepare_videos(indexed_video(tmp_path / "v.mkv", 6), out, fps=None, progress=False)
    assert not stale.exists()


def test_failed_publication_puts_the_old_folder_back(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "src", {"a.mkv": 8, "b.mkv": 8})
    out = tmp_path / "out"
    first = prepare_videos(src, out, fps=None, progress=False)
    before = tree_state(out)
    real_replace, calls = os.replace, []

    def failing_replace(a, b):
        calls.append((Path(a).name, Path(b).name))
        if len(calls) == 2:  # the new folder into place, after the old one stepped aside
            raise OSError("no space left")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="no space left"):
        prepare_videos(src, out, fps=None, resize="crop", progress=False)
    assert calls[0][0] == "out" and calls[0][1].startswith(".out.old-") and calls[1][1] == "out"
    assert calls[2] == (calls[0][1], "out")  # put back
    assert tree_state(out) == before and load_manifest(out) == first
    assert not leftovers(tmp_path, out)


KILLED_RUN = """
import os, signal, sys
from indpred.data.video import prepare, prepare_videos
where, src, out = sys.argv[1:]
calls = []

def kill_at(n, real):
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper

if where == "write":  # halfway through decoding the second video
    prepare._FrameWriter.write = kill_at(11, prepare._FrameWriter.write)
else:  # between the two renames: the old folder stepped aside, the new one not yet in place
    os.replace = kill_at(2, os.replace)
prepare_videos(src, out, fps=None, resize="crop", progress=False)
"""


@pytest.mark.parametrize("where", ["write", "publish"])
def test_killed_update_keeps_the_old_folder(tmp_path, where):
    src = make_folder(tmp_path / "src", {"a.mkv": 8, "b.mkv": 8})
    out = tmp_path / "out"
    first = prepare_videos(src, out, fps=None, progress=False)
    before = tree_state(out)
    run = subprocess.run([sys.executable, "-c", KILLED_RUN, where, str(src), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    left = leftovers(tmp_path, out)
    if where == "write":
        assert tree_state(out) == before and load_manifest(out) == first
        assert len(left) == 1 and left[0].startswith(".out.tmp-")
    else:  # both complete folders are on disk, the old one under its hidden name
        assert not out.exists() and [n.split("-")[0] for n in left] == [".out.old", ".out.tmp"]
        assert tree_state(tmp_path / left[0]) == before
        assert (tmp_path / left[1] / "manifest.json").is_file()
    # the next run clears the leftovers and puts the old folder back: with the old
    # settings, nothing to do and nothing touched (the very same files)
    assert prepare_videos(src, out, fps=None, progress=False) == first
    assert tree_state(out) == before and not leftovers(tmp_path, out)


def test_sweep_puts_back_only_a_dead_runs_old_folder(tmp_path):
    out = tmp_path / "out"
    dead, alive = 2**22 + 12345, os.getpid()  # a pid far above any live one, and ours
    for name in (f".out.old-{dead}-ab", f".out.tmp-{dead}-ab", f".out.tmp-{alive}-cd", ".out.notes"):
        (tmp_path / name).mkdir()
    publish.sweep(out)
    assert out.is_dir() and leftovers(tmp_path, out) == [".out.notes", f".out.tmp-{alive}-cd"]
    (tmp_path / f".out.old-{dead}-ef").mkdir()
    publish.sweep(out)  # ``out`` exists: a dead run's old folder is just removed
    assert out.is_dir() and leftovers(tmp_path, out) == [".out.notes", f".out.tmp-{alive}-cd"]


def test_list_videos_sorted_non_recursive(tmp_path):
    for name in ("b.MP4", "a.mkv", "c.webm", "x.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.mp4").write_bytes(b"x")
    assert [p.name for p in list_videos(tmp_path)] == ["a.mkv", "b.MP4", "c.webm"]


# --------------------------------------------------------------------------- VideoFrames


@pytest.fixture
def prepared(tmp_path) -> Path:
    """Four videos of 5, 12, 9 and 7 frames; the last (d) is the test video."""
    src = make_folder(tmp_path / "src", {"a.mkv": 5, "b.mkv": 12, "c.mkv": 9, "d.mkv": 7})
    prepare_videos(src, tmp_path / "prep", fps=None, progress=False)
    return tmp_path / "prep"


def decode_tags(frames: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, H, W) in [0, 1] → per-frame (video tag, frame index) painted by tagged_video."""
    x = (frames * 255).round().numpy()
    return np.round(x[:, 0].mean(axis=(1, 2)) / 40), np.round(x[:, 1].mean(axis=(1, 2)) / STEP)


def test_windows_never_cross_video_boundaries(prepared):
    manifest = load_manifest(prepared)
    ds = VideoFrames(prepared, split="train", seq_len=6, seed=0, length=400)
    assert ds.n_windows == (12 - 5) + (9 - 5)  # a (5 frames) is too short for any window
    batch = ds.get_batch(range(400))
    assert batch["frames"].shape == (400, 6, 3, 64, 64) and batch["frames"].dtype == torch.float32
    assert batch["video"].dtype == batch["start"].dtype == torch.int64
    assert 0 <= batch["frames"].min() and batch["frames"].max() <= 1 and batch["frames"].is_contiguous()
    seen = set()
    for frames, v, s in zip(batch["frames"], batch["video"].tolist(), batch["start"].tolist()):
        entry = manifest["videos"][v]
        assert entry["split"] == "train" and 0 <= s and s + 6 <= entry["frames"]
        tags, idx = decode_tags(frames)
        assert (tags == v).all() and list(idx) == list(range(s, s + 6))  # one video, consecutive frames
        seen.add((v, s))
    assert len(seen) == ds.n_windows  # uniform over all windows: 400 draws hit all 11
    test = VideoFrames(prepared, split="test", seq_len=6, length=50)
    assert set(test.get_batch(range(50))["video"].tolist()) == {3}


def test_windows_with_stride(prepared):
    ds = VideoFrames(prepared, split="train", seq_len=4, stride=2, length=100)
    for i in range(100):
        item = ds[i]
        _, idx = decode_tags(item["frames"])
        s = int(item["start"])
        assert list(idx) == [s, s + 2, s + 4, s + 6]
        assert s + 6 < load_manifest(prepared)["videos"][int(item["video"])]["frames"]


def test_windows_deterministic_by_seed_and_index(prepared):
    a = VideoFrames(prepared, seq_len=3, seed=7, length=100)
    b = VideoFrames(prepared, seq_len=3, seed=7, length=100)
    c = VideoFrames(prepared, seq_len=3, seed=8, length=100)
    idx = [5, 0, 99, 42]
    ba, bb = a.get_batch(idx), b.get_batch(idx)
    assert all(torch.equal(ba[k], bb[k]) for k in ba)
    single = a[99]
    assert torch.equal(single["frames"], ba["frames"][2]) and int(single["start"]) == int(ba["start"][2])
    assert [a.window(i) for i in range(100)] != [c.window(i) for i in range(100)]
    assert a[-1]["start"] == a[99]["start"]
    clone = pickle.loads(pickle.dumps(a))  # memory maps are reopened lazily, e.g. in DataLoader workers
    assert not clone._maps and torch.equal(clone.get_batch(idx)["frames"], ba["frames"])
    loader = torch.utils.data.DataLoader(a, batch_size=4, shuffle=False)
    first = next(iter(loader))
    assert torch.equal(first["frames"], a.get_batch(range(4))["frames"])
    assert VideoFrames.channels == 3 and len(a) == 100


def test_windows_are_todays_draws(prepared):
    """The per-item seeding (indpred.data.seeding) draws what it drew before it was shared."""
    train = VideoFrames(prepared, seq_len=3, seed=7, length=100)
    test = VideoFrames(prepared, split="test", seq_len=3, seed=7, length=100)
    assert [train.window(i) for i in range(8)] == [(2, 5), (2, 1), (2, 6), (1, 5), (1, 0), (1, 6), (1, 4),
                                                   (0, 1)]
    assert [test.window(i) for i in range(8)] == [(3, 4), (3, 0), (3, 3), (3, 2), (3, 4), (3, 0), (3, 1),
                                                  (3, 1)]


def test_single_video_windows_respect_the_time_split(tmp_path):
    tagged_video(tmp_path / "only.mkv", 20, 0)
    prepare_videos(tmp_path / "only.mkv", tmp_path / "prep", fps=None, progress=False)
    train = VideoFrames(tmp_path / "prep", split="train", seq_len=4, length=200)
    test = VideoFrames(tmp_path / "prep", split="test", seq_len=4, length=50)
    assert train.n_windows == 16 - 3 and test.n_windows == 1
    assert int(train.get_batch(range(200))["start"].max()) == 12  # last train window ends at frame 15
    assert set(test.get_batch(range(50))["start"].tolist()) == {16}


def test_split_too_short_for_the_window(prepared):
    with pytest.raises(UserError, match="every test video is shorter"):
        VideoFrames(prepared, split="test", seq_len=8)
    with pytest.raises(UserError, match="unknown split"):
        VideoFrames(prepared, split="valid")
    with pytest.raises(UserError, match="seq_len"):
        VideoFrames(prepared, seq_len=0)


def test_load_manifest_detects_damage(prepared):
    manifest = load_manifest(prepared)
    frames_file = prepared / manifest["videos"][0]["file"]
    with open(frames_file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="prepare the videos again"):
        load_manifest(prepared)
    (prepared / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_manifest(prepared)



def test_a_folder_prepared_at_32_pixels_trains_at_32_and_says_so_otherwise(tmp_path):
    from indpred.config import DataConfig
    from indpred.data.factory import make_dataset

    two = tmp_path / "two"
    two.mkdir()
    indexed_video(two / "a.mkv", 12)
    indexed_video(two / "b.mkv", 12)
    prepare_videos(two, tmp_path / "p32", fps=5.0, size=32, progress=False)
    data = DataConfig(dataset="video", path=str(tmp_path / "p32"), seq_len=3, image_size=32)
    assert make_dataset(data, "train", 4).get_batch([0])["frames"].shape == (1, 3, 3, 32, 32)
    data.image_size = 64
    with pytest.raises(UserError, match=r"prepared at 32 x 32 px; train on it with --set data.image_size=32"):
        make_dataset(data, "train", 4)
