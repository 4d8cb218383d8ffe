"""Video preprocessing throughput: ``prepare_videos`` against the ffmpeg command line.

Both decode every frame of a clip, keep 2 frames per second and scale them to 64x64
RGB with an area filter; the rate is **source frames decoded per second** of wall
time. ``prepare_videos`` is timed end to end (hashing, probing, decoding, writing the
frames file and the manifest) into a fresh folder each repeat; ffmpeg is the binary
bundled with ``imageio-ffmpeg`` (``pip install -e '.[bench]'``), running
``ffmpeg -i CLIP -vf fps=2,scale=64:64:flags=area -f rawvideo -pix_fmt rgb24 OUT``.
``iter_frames`` alone (decode, resample, resize; nothing written) is shown too.

Usage: ``python benchmarks/video_throughput.py [CLIP ...] [--fps 2] [--repeat 3] [--make-1080p 20]``
(defaults to the shared clips in ``$INDPRED_TEST_DATA/video`` or ``../shared/data/video``;
``--make-1080p`` adds a synthetic 1080p clip, the paper's resolution).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import av

from indpred.data.video import VideoReader, VideoWarning, prepare_videos
from indpred.paths import shared_data_dir
from machine import cpu_model  # benchmarks/machine.py (scripts run from this folder)


def timed(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, float]]:
    """(median, best) wall seconds of each function over ``repeat`` rounds, after a warm-up.

    The functions take turns within each round, so that load from other processes,
    which comes and goes, weighs on all of them alike.
    """
    for fn in fns.values():
        fn()
    durations: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            durations[name].append(time.perf_counter() - start)
    return {name: (statistics.median(d), min(d)) for name, d in durations.items()}


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SystemExit("imageio-ffmpeg is not installed: pip install -e '.[bench]'") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def bench_clip(clip: Path, fps: float, repeat: int, ffmpeg: str, work: Path) -> None:
    counter = iter(range(10**6))
    kept: dict[str, int] = {}

    def run_prepare() -> None:
        with contextlib.redirect_stderr(io.StringIO()):  # the single-video split note
            manifest = prepare_videos(clip, work / f"prep-{next(counter)}", fps=fps, progress=False)
        kept["prepare"] = manifest["videos"][0]["frames"]
        kept["decoded"] = manifest["videos"][0]["frames_decoded"]

    def run_iter() -> None:
        kept["iter"] = sum(1 for _ in VideoReader(clip, fps=fps))

    raw = work / "ffmpeg.rgb"
    command = [ffmpeg, "-hide_banner", "-v", "error", "-i", str(clip), "-vf",
               f"fps={fps:g},scale=64:64:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-y", str(raw)]

    def run_ffmpeg() -> None:
        subprocess.run(command, check=True)
        kept["ffmpeg"] = raw.stat().st_size // (64 * 64 * 3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VideoWarning)
        results = timed({"prepare_videos": run_prepare, "iter_frames only": run_iter,
                         "ffmpeg CLI": run_ffmpeg}, repeat)
    decoded = kept["decoded"]
    print(f"\n{clip.name}: {decoded} source frames decoded, kept at {fps:g} fps: "
          f"prepare_videos {kept['prepare']}, ffmpeg {kept['ffmpeg']}")
    print(f"  {'':18s} {'median s':>9s} {'frames/s (median)':>18s} {'frames/s (best)':>16s}")
    for name, (median, best) in results.items():
        print(f"  {name:18s} {median:9.3f} {decoded / median:18,.0f} {decoded / best:16,.0f}")
    ratio = results["ffmpeg CLI"][0] / results["prepare_videos"][0]
    print(f"  prepare_videos / ffmpeg throughput ratio (median): {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path, help="video files (default: the shared clips)")
    parser.add_argument("--fps", type=float, default=2.0, help="target frame rate")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (after a warm-up)")
    parser.add_argument("--make-1080p", type=float, default=0.0, metavar="SECONDS",
                        help="also benchmark a synthetic 1920x1080 30 fps H.264 clip this long "
                             "(ffmpeg's testsrc2), like the paper's 1080p street video")
    args = parser.parse_args()
    clips = args.clips or sorted((shared_data_dir() / "video").glob("*.*"))
    if not clips and not args.make_1080p:
        raise SystemExit(f"no clips given and none in {shared_data_dir() / 'video'}")
    ffmpeg = ffmpeg_exe()
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"cpu: {cpu_model()}, nproc {os.cpu_count()}")
    print(f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}); "
          f"{version}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes skew the figures)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.make_1080p:
            synthetic = Path(tmp) / "testsrc2_1920x1080_30fps.mp4"
            subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-f", "lavfi", "-i",
                            f"testsrc2=size=1920x1080:rate=30:duration={args.make_1080p:g}",
                            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(synthetic)],
                           check=True)
            clips = [*clips, synthetic]
        for clip in clips:
            bench_clip(clip, args.fps, args.repeat, ffmpeg, Path(tmp))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
