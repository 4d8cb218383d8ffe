"""train.tensorboard=true: the event files read back with TensorBoard's own reader, hold the
log's numbers and the evaluation images, leave the training unchanged, and survive a resume."""

from __future__ import annotations

import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from indpred.config import apply_overrides
from indpred.errors import UserError
from indpred.run import load_model, read_metrics
from indpred.train import train


def events(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_scalars_and_images_read_back_and_the_training_is_unchanged(tmp_path, tiny_config):
    cfg = apply_overrides(tiny_config, ["train.tensorboard=true", "train.eval_every=2"])
    train(cfg, tmp_path / "board", steps=4, progress=False)
    acc = events(tmp_path / "board")
    tags = acc.Tags()
    assert {"train/elbo", "train/log_likelihood", "train/kl_factor1", "train/kl_factor2", "train/lr",
            "train/frames_per_s", "test/elbo"} <= set(tags["scalars"])
    records = [r for r in read_metrics(tmp_path / "board") if r["split"] == "train"]
    logged = {e.step: e.value for e in acc.Scalars("train/elbo")}
    assert logged == pytest.approx({r["step"]: r["elbo"] for r in records}, rel=1e-6)
    assert [e.step for e in acc.Scalars("test/elbo")] == [2, 4]
    for tag in ("reconstruction", "independent_generations"):
        shots = acc.Images(tag)
        assert [s.step for s in shots] == [2, 4]
        assert shots[0].width == 3 * cfg.data.image_size  # T = 3 frames side by side
    assert acc.Images("reconstruction")[0].height == 2 * cfg.data.image_size  # data over reconstruction
    # the same training without TensorBoard: the same weights, bit for bit
    plain = apply_overrides(tiny_config, ["train.eval_every=2"])
    train(plain, tmp_path / "plain", steps=4, progress=False)
    a, b = load_model(tmp_path / "board").state_dict(), load_model(tmp_path / "plain").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_has_each_step_once(tmp_path, tiny_config):
    cfg = apply_overrides(tiny_config, ["train.tensorboard=true", "train.checkpoint_every=2"])
    train(cfg, tmp_path / "run", steps=2, progress=False)
    train(None, tmp_path / "run", resume=True, steps=4, progress=False)
    assert [e.step for e in events(tmp_path / "run").Scalars("train/elbo")] == [1, 2, 3, 4]


def test_without_tensorboard_installed_it_is_one_line_and_no_folder(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard → ImportError
    cfg = apply_overrides(tiny_config, ["train.tensorboard=true"])
    with pytest.raises(UserError, match=r"pip install 'indpred\[tensorboard\]'"):
        train(cfg, tmp_path / "run", steps=2, progress=False)
    assert not (tmp_path / "run").exists()
