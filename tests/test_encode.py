"""Tests for indpred.encode: streaming a video through the inference network alone."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from indpred.checkpoint import save_checkpoint
from indpred.config import DataConfig, ModelConfig, RunConfig
from indpred.data.video import frames_to_tensor, iter_frames, prepare_videos
from indpred.encode import encode_to_file, encode_video
from indpred.errors import UserError
from indpred.model import FactoredVAE
from indpred.run import CHECKPOINTS, CONFIG
from tests.test_video import indexed_video, write_video

TINY = ModelConfig(factors=2, factor_dim=3, width=0.125, transition_hidden=16)


@pytest.fixture
def model() -> FactoredVAE:
    torch.manual_seed(0)
    return FactoredVAE(TINY)


@pytest.fixture
def clip(tmp_path) -> Path:
    """25 frames at 10 fps with some texture, so the encoder sees different frames."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    frames = [np.roll(texture, 3 * i, axis=1) for i in range(25)]
    return write_video(tmp_path / "clip.mkv", frames, rate=10)


def make_run(folder: Path, model: FactoredVAE, data: DataConfig | None = None) -> Path:
    cfg = RunConfig(model=dataclasses.replace(model.config), data=data or DataConfig()).resolve()
    folder.mkdir(parents=True)
    cfg.save(folder / CONFIG)
    save_checkpoint(folder / CHECKPOINTS, 1, model)
    return folder


def test_shapes_timestamps_and_values(model, clip):
    out = encode_video(model, clip, fps=None, progress=False)
    T, K, d = 25, TINY.factors, TINY.factor_dim
    assert out["mean"].shape == out["var"].shape == (T, K, d)
    assert out["mean"].dtype == out["var"].dtype == np.float32 and out["timestamps"].dtype == np.float64
    assert (out["var"] > 0).all() and np.isfinite(out["mean"]).all()
    assert out["timestamps"][0] == 0.0 and np.all(np.diff(out["timestamps"]) > 0)
    # the same as the model's own encode over the whole video at once
    frames = frames_to_tensor(np.stack([f for _, f in iter_frames(clip, fps=None)]))[None]
    mean, var = model.eval().encode(frames)
    np.testing.assert_array_equal(out["mean"], mean[0].numpy())
    np.testing.assert_array_equal(out["var"], var[0].numpy())
    sub = encode_video(model, clip, fps=2.0, progress=False)
    assert sub["mean"].shape == (5, K, d) and np.allclose(sub["timestamps"], [0, 0.5, 1.0, 1.5, 2.0])


def test_deterministic_and_chunking_does_not_change_the_result(model, clip):
    model.train()  # encode_video switches to eval mode for the call and back
    a = encode_video(model, clip, fps=None, chunk=3, progress=False)
    b = encode_video(model, clip, fps=None, chunk=1000, progress=False)
    c = encode_video(model, clip, fps=None, chunk=1000, progress=False)
    assert model.training
    for key in ("mean", "var", "timestamps"):
        # chunked == unchunked up to float rounding: the conv kernels may sum in another
        # order for another batch size
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b[key], c[key])  # twice == once


def test_argument_errors(model, clip, tmp_path):
    with pytest.raises(UserError, match="chunk"):
        encode_video(model, clip, fps=None, chunk=0, progress=False)
    with pytest.raises(UserError, match="size must be 64"):
        encode_video(model, clip, fps=None, size=32, progress=False)
    gray_model = FactoredVAE(dataclasses.replace(TINY, channels=1))
    with pytest.raises(UserError, match="RGB"):
        encode_video(gray_model, clip, fps=None, progress=False)
    with pytest.raises(UserError, match="no such file"):
        encode_video(model, tmp_path / "missing.mp4", fps=None, progress=False)


def test_encode_to_file_moving_mnist_run(model, clip, tmp_path):
    run = make_run(tmp_path / "run", model)
    out = encode_to_file(run, clip, tmp_path / "latents" / "clip.npz", progress=False)
    assert out == tmp_path / "latents" / "clip.npz" and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    with np.load(out, allow_pickle=False) as z:
        saved = {k: z[k] for k in z.files}
    expected = encode_video(model, clip, fps=None, progress=False)  # Moving MNIST run: every frame
    for key in ("mean", "var", "timestamps"):
        np.testing.assert_array_equal(saved[key], expected[key])
    assert math.isnan(float(saved["fps"])) and str(saved["resize"]) == "squash"
    assert str(saved["video"]) == str(clip.resolve())
    again = encode_to_file(run, clip, tmp_path / "again.npz", progress=False)
    with np.load(again) as z:
        np.testing.assert_array_equal(z["mean"], saved["mean"])


def test_encode_to_file_uses_the_runs_video_settings(model, clip, tmp_path):
    data = tmp_path / "prepared"
    two = tmp_path / "two"
    two.mkdir()
    indexed_video(two / "a.mkv", 12)
    indexed_video(two / "b.mkv", 12)
    prepare_videos(two, data, fps=5.0, resize="crop", progress=False)
    # a run trained on prepared video names its data folder in config.data.path
    run = make_run(tmp_path / "run", model, DataConfig(dataset="video", path=str(data)))
    out = encode_to_file(run, clip, tmp_path / "z.npz", progress=False)
    expected = encode_video(model, clip, fps=5.0, resize="crop", progress=False)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["mean"], expected["mean"])
        assert float(z["fps"]) == 5.0 and str(z["resize"]) == "crop" and z["mean"].shape[0] == 13
    out = encode_to_file(run, clip, tmp_path / "z2.npz", fps=2.0, progress=False)  # fps overrides
    with np.load(out) as z:
        assert z["mean"].shape[0] == 5 and float(z["fps"]) == 2.0
    shutil.rmtree(data)  # the data folder moved away: its settings are unknown
    with pytest.raises(UserError, match="pass fps explicitly"):
        encode_to_file(run, clip, tmp_path / "z3.npz", progress=False)


def test_layers_are_what_each_factor_draws_from_its_mean_with_a_gif_per_factor(clip, tmp_path):
    torch.manual_seed(1)
    model = FactoredVAE(dataclasses.replace(TINY, decoder="per-factor"))
    run = make_run(tmp_path / "run", model)
    out = encode_to_file(run, clip, tmp_path / "z.npz", progress=False, layers=True)
    with np.load(out) as z:
        layers, mean = z["layers"], z["mean"]
    assert layers.shape == (25, 2, 3, 64, 64) and layers.dtype == np.uint8
    with torch.no_grad():
        expected = torch.sigmoid(model.eval().layers(torch.from_numpy(mean)[None]))[0]  # (T, K, C, H, W)
    assert np.abs(layers.astype(np.float64) - expected.numpy() * 255).max() <= 0.5 + 1e-3
    from PIL import Image

    for k in (1, 2):
        with Image.open(tmp_path / f"z-factor{k}.gif") as gif:
            assert gif.n_frames == 25


def test_layers_of_a_shared_generator_are_refused_before_any_work(model, clip, tmp_path):
    run = make_run(tmp_path / "run", model)  # TINY: the shared generator
    with pytest.raises(UserError, match="--layers needs a per-factor generator"):
        encode_to_file(run, clip, tmp_path / "z.npz", progress=False, layers=True)
    assert not (tmp_path / "z.npz").exists()
