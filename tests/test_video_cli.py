"""Real video end to end through the CLI: prepare, train on it, evaluate, encode."""

import json

import numpy as np
import pytest

from indpred.cli import main
from indpred.paths import shared_data_dir
from tests.conftest import TINY

CLIP = shared_data_dir() / "video" / "intel_car_detection_768x432.mp4"
SETS = [a for kv in [*TINY, "model.factors=2", "data.seq_len=4"] for a in ("--set", kv)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not CLIP.is_file():
        pytest.skip(f"shared clip {CLIP} not found (set INDPRED_TEST_DATA)")
    out = tmp_path_factory.mktemp("video") / "street"
    assert main(["prepare-video", str(CLIP), "--out", str(out), "--fps", "4", "--no-progress"]) == 0
    return out


def test_prepare_train_eval_encode(prepared, tmp_path, capsys):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["videos"][0]["split"] == "train+test"  # one video: leading / trailing parts
    assert manifest["frames"]["train"] > 0 and manifest["frames"]["test"] > 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--steps", "2", "--out", str(run), "--no-progress",
                 *SETS]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"] == "street-8f" and cfg["data"]["dataset"] == "video"
    assert main(["eval", str(run), "--sequences", "6", "--iw-samples", "2", "--no-progress"]) == 0
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert "skipped" in m["alignment"] and "skipped" in m["probes"]
    assert len(m["mutual_information"]["matrix_nats"]) == 2
    assert (run / "eval" / "report.html").is_file()
    out = tmp_path / "factors.npz"
    assert main(["encode", str(CLIP), "--run", str(run), "--out", str(out), "--no-progress"]) == 0
    with np.load(out) as f:
        mean, var, stamps = f["mean"], f["var"], f["timestamps"]
    assert mean.shape == var.shape and mean.shape[1:] == (2, 4) and (var > 0).all()
    assert len(stamps) == mean.shape[0] and (np.diff(stamps) > 0).all()
    assert abs(mean.shape[0] - 4 * 30.2) <= 2  # 30.2 s at the run's 4 fps


def test_street_preset_without_data_is_refused(tmp_path, capsys):
    assert main(["train", "--preset", "street-8f", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "pass --data DIR" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
