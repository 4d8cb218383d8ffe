"""Encode a video of any length into its K factors with the inference network alone.

The posterior ``q(z_t | z_{t-1}, x_t)`` is run frame by frame (filtering), carrying
the posterior mean forward, so the result is deterministic. Frames are decoded as a
stream and encoded in chunks: each chunk starts from the previous chunk's last
posterior means (``FactoredVAE.encode(..., initial=model.carry(...))``: one, or two with a
second-order prior), which gives the same
result as encoding the whole video in one piece, with memory bounded by the chunk.
The generator is never used.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from indpred.config import RunConfig
from indpred.data.video import FRAME_SIZE, VideoReader, VideoWarning, frames_to_tensor, load_manifest
from indpred.errors import UserError
from indpred.model import FactoredVAE
from indpred.report import save_gif
from indpred.run import load_config, load_model, resolve_device

__all__ = ["encode_to_file", "encode_video", "run_video_settings"]

GIF_FRAMES = 300  # the GIF of what each factor draws shows at most this many frames (the array has all)


def encode_video(
    model: FactoredVAE,
    path: str | Path,
    *,
    fps: float | None,
    size: int = FRAME_SIZE,
    resize: str = "squash",
    chunk: int = 256,
    device: str = "cpu",
    progress: bool = True,
    layers: bool = False,
) -> dict[str, np.ndarray]:
    """Posterior means and variances of every kept frame of a video.

    Frames come from :func:`indpred.data.video.iter_frames` rules (``fps`` resampling
    by timestamps, None for every frame; ``resize`` "squash" or "crop") and are encoded
    ``chunk`` at a time. The model is put in eval mode for the call (batch norm uses its
    running statistics, so chunking cannot change the result) and moved to ``device``
    (it stays there); its training flag is restored afterwards.

    Returns:
        ``mean`` float32 (T, K, d), ``var`` float32 (T, K, d), ``timestamps`` float64
        (T,): seconds since the video's first decoded frame, increasing; with ``layers``
        (a per-factor generator only) also ``layers`` uint8 (T, K, C, H, W): what each factor
        draws from its posterior mean, ``sigmoid`` of its layer in 0..255.
    """
    _check_encodable(model, size, chunk)
    if layers and model.config.decoder != "per-factor":
        raise UserError("--layers needs a per-factor generator (model.decoder=per-factor); this model's "
                        "shared generator mixes the factors, so no image belongs to one factor")
    dev = resolve_device(device)
    K, d = model.config.factors, model.config.factor_dim
    means: list[np.ndarray] = []
    variances: list[np.ndarray] = []
    drawn: list[np.ndarray] = []
    times: list[float] = []
    state: torch.Tensor | None = None  # (1, P, K, d): the last posterior means the prior reads
    was_training = model.training
    model.to(dev).eval()
    bar = tqdm(desc=Path(path).name, unit="frame", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for stamps, frames in _chunks(VideoReader(path, fps=fps, size=size, resize=resize), chunk, bar):
            x = frames_to_tensor(frames)[None].to(dev)  # (1, n, 3, H, W)
            mean, var = model.encode(x, initial=state)  # (1, n, K, d) each
            state = model.carry(state, mean)
            if layers:
                with torch.no_grad():
                    pixels = torch.sigmoid(model.layers(mean))[0]  # (n, K, C, H, W)
                drawn.append((pixels * 255).round().to(torch.uint8).cpu().numpy())
            means.append(mean[0].cpu().numpy())
            variances.append(var[0].cpu().numpy())
            times.extend(stamps)
    finally:
        bar.close()
        model.train(was_training)
    out = {
        "mean": np.concatenate(means).astype(np.float32, copy=False).reshape(-1, K, d),  # (T, K, d)
        "var": np.concatenate(variances).astype(np.float32, copy=False).reshape(-1, K, d),  # (T, K, d)
        "timestamps": np.asarray(times, dtype=np.float64),  # (T,)
    }
    if layers:
        out["layers"] = np.concatenate(drawn)  # (T, K, C, H, W) uint8
    return out


def _check_encodable(model: FactoredVAE, size: int, chunk: int) -> None:
    """Refuse (one line) a chunk length, frame size or channel count the model cannot take."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise UserError(f"chunk must be an integer >= 1, got {chunk!r}")
    cfg = model.config
    if size != cfg.image_size:
        raise UserError(f"size must be {cfg.image_size} (the model's input), got {size}")
    if cfg.channels != 3:
        raise UserError(f"this model takes {cfg.channels}-channel frames; video frames are RGB (3 channels): "
                        "encode with a model trained on colour data")


def _chunks(reader: Iterable[tuple[float, np.ndarray]], chunk: int,
            bar: tqdm) -> Iterator[tuple[list[float], np.ndarray]]:
    """The reader's (timestamp, frame) pairs, ``chunk`` at a time: (timestamps, frames (n, H, W, 3))."""
    stamps: list[float] = []
    frames: list[np.ndarray] = []
    for t, frame in reader:
        stamps.append(t)
        frames.append(frame)
        bar.update(1)
        if len(frames) == chunk:
            yield stamps, np.stack(frames)
            stamps, frames = [], []
    if frames:
        yield stamps, np.stack(frames)


def run_video_settings(config: Any, fps: float | None = None) -> dict[str, Any]:
    """Frame rate, size and resize mode to encode with, from a run's training data.

    A run trained on a prepared video folder (``config.data.path`` set) uses that
    folder's manifest settings; an explicit ``fps`` overrides its rate. A run trained
    on Moving MNIST (no data path) keeps every frame unless ``fps`` is given, and
    squashes. Returns ``{"fps", "size", "resize"}``.
    """
    data_path = getattr(config.data, "path", None) or ""
    if not data_path:
        return {"fps": fps, "size": config.model.image_size, "resize": "squash"}
    try:
        settings = load_manifest(data_path, check_files=False)["settings"]
    except UserError as e:
        if fps is None:
            raise UserError(f"cannot read the run's training data settings from {data_path} ({e}); "
                            "pass fps explicitly") from None
        warnings.warn(f"cannot read the run's data manifest in {data_path}; encoding with resize='squash'",
                      VideoWarning, stacklevel=2)
        return {"fps": fps, "size": config.model.image_size, "resize": "squash"}
    return {"fps": settings["fps"] if fps is None else fps, "size": settings["size"],
            "resize": settings["resize"]}


def encode_to_file(
    run_dir: str | Path | None,
    video: str | Path,
    out_npz: str | Path,
    *,
    pretrained: str | None = None,
    fps: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    layers: bool = False,
) -> Path:
    """Encode ``video`` with a trained run's (or a shipped model's) inference network into an
    ``.npz`` file.

    Uses the run's latest checkpoint (or the shipped model ``pretrained``, with ``run_dir``
    None) and its training data's frame rate and resize mode (see :func:`run_video_settings`;
    ``fps`` overrides the rate). The file holds ``mean`` and ``var`` float32 (T, K, d),
    ``timestamps`` float64 (T,), with ``layers`` also ``layers`` uint8 (T, K, C, H, W), and as
    0-d arrays ``fps`` (NaN: every frame), ``resize``, ``video`` and ``run`` (a path, or
    ``pretrained:NAME``); all plain arrays, readable with ``np.load(path)`` (no pickle). It is
    written to a temporary name and renamed into place; with ``layers`` an animated GIF per
    factor (its first ``GIF_FRAMES`` frames) goes beside it as ``OUT-factorK.gif``. Returns the
    path written.
    """
    video, out = Path(video), Path(out_npz)
    if pretrained is not None:
        from indpred.pretrained import card, load_pretrained

        config, source = RunConfig.from_dict(card(pretrained)["config"]), f"pretrained:{pretrained}"
        model = load_pretrained(pretrained, device=device)
    else:
        run_dir = Path(run_dir)
        config, source = load_config(run_dir), str(run_dir.resolve())
        model = load_model(run_dir, device=device)
    settings = run_video_settings(config, fps)
    result = encode_video(model, video, fps=settings["fps"], size=settings["size"],
                          resize=settings["resize"], device=device, progress=progress, layers=layers)
    arrays = {
        **result,
        "fps": np.float64(math.nan if settings["fps"] is None else settings["fps"]),
        "resize": np.array(settings["resize"]),
        "video": np.array(str(video.resolve())),
        "run": np.array(source),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if layers:
        for k in range(result["layers"].shape[1]):
            frames = result["layers"][None, :GIF_FRAMES, k].astype(np.float32) / 255  # (1, T', C, H, W)
            gif = out.with_name(f"{out.stem}-factor{k + 1}.gif")
            part = gif.with_name(f".{gif.name}.tmp-{os.getpid()}")
            try:
                save_gif(frames, out_path=part, row_labels=[f"factor {k + 1} draws"])
                os.replace(part, gif)
            finally:
                part.unlink(missing_ok=True)
    return out
