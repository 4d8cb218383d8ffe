"""The models shipped inside the package: each loads, evaluates to the numbers on its card and
encodes a clip; and the machinery around them (listing, cards, bad names, corrupt files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import indpred
from indpred import pretrained
from indpred.cli import main
from indpred.encode import encode_to_file
from indpred.errors import UserError
from indpred.eval.evaluate import evaluate_run
from indpred.train import train
from tests.test_encode import clip  # noqa: F401  (a fixture)

SHIPPED = pretrained.names()


def test_what_the_package_ships_stays_within_its_budget():
    assert {"mmnist-cpu", "mmnist-cpu-entangled"} <= set(SHIPPED)
    total = sum(p.stat().st_size for p in pretrained._folder().iterdir() if p.suffix != ".py")
    assert total < 20e6  # the budget for everything shipped
    assert all((pretrained._folder() / f"{name}.safetensors").is_file() for name in SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_evaluates_to_its_card(name, tmp_path):
    card = pretrained.card(name)
    assert set(pretrained.CARD_KEYS) <= set(card) and card["licence"] and card["commit"]
    model = indpred.load_pretrained(name)
    assert not model.training and model.config == indpred.RunConfig.from_dict(card["config"]).model
    check = card["check"]
    run = pretrained.materialise(name, tmp_path / name)
    got = pretrained.card_figures(evaluate_run(run, progress=False, **check["options"]))
    for key, tolerance in check["tolerance"].items():
        want = check["values"][key]
        if want is None:  # a figure this model does not have (e.g. tracking for the twin)
            assert got[key] is None, key
        else:
            assert abs(got[key] - want) <= tolerance, (key, got[key], want)


@pytest.fixture
def shelf(tmp_path, monkeypatch, tiny_config):
    """A package folder holding one tiny trained model, shipped by the real ``ship``."""
    folder = tmp_path / "shelf"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "_folder", lambda: folder)
    run = tmp_path / "run"
    train(tiny_config, run, steps=2, progress=False)
    pretrained.ship(run, "tiny", description="a tiny test model", data={"dataset": "mmnist"},
                    licence="MIT", metrics={"elbo": -1.0, "alignment": None}, check={}, commit="abc")
    return folder


def test_shipping_then_loading_gives_the_runs_weights(shelf, tmp_path):
    model = indpred.load_pretrained("tiny")
    trained = indpred.load_model(tmp_path / "run")
    for (k, a), (_, b) in zip(model.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(a, b), k
    card = pretrained.card("tiny")
    assert card["steps"] == 2 and card["seed"] == 0 and card["commit"] == "abc"
    assert pretrained.names() == ["tiny"]


def test_materialise_writes_a_run_once_and_never_over_other_files(shelf, tmp_path):
    run = pretrained.materialise("tiny", tmp_path / "as-run")
    assert pretrained.materialise("tiny", run) == run  # reused
    weights = indpred.load_model(run).state_dict()
    assert all(torch.equal(weights[k], v) for k, v in indpred.load_pretrained("tiny").state_dict().items())
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="does not hold the pretrained model"):
        pretrained.materialise("tiny", other)
    assert (other / "notes.txt").read_text() == "mine"


def test_a_shipped_model_written_out_as_a_run_cannot_be_resumed_and_says_why(shelf, tmp_path):
    run = pretrained.materialise("tiny", tmp_path / "as-run")
    with pytest.raises(UserError, match=r"holds weights only .* not resumed"):
        train(None, run, resume=True, steps=4, progress=False)


def test_unknown_names_and_corrupt_weights_are_one_line(shelf, capsys):
    with pytest.raises(UserError, match="no pretrained model 'nope'; shipped: tiny"):
        indpred.load_pretrained("nope")
    (shelf / "tiny.safetensors").write_bytes(b"broken")
    with pytest.raises(UserError, match="missing or corrupt"):
        indpred.load_pretrained("tiny")
    (shelf / "tiny.json").write_text("{not json")
    with pytest.raises(UserError, match=r"card of pretrained model 'tiny' .* is unreadable"):
        pretrained.card("tiny")
    assert main(["eval", "--pretrained", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no pretrained model 'nope'" in err


def test_cli_lists_shows_evaluates_and_encodes_a_shipped_model(shelf, tmp_path, clip, capsys,  # noqa: F811
                                                              monkeypatch):
    assert main(["pretrained"]) == 0
    assert "tiny  a tiny test model (ELBO -1.0 nats/frame)" in capsys.readouterr().out
    assert main(["pretrained", "--show", "tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny"
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--pretrained", "tiny", "--sequences", "4", "--iw-samples", "1",
                 "--partitions", "2", "--no-progress"]) == 0
    assert (tmp_path / "pretrained-tiny" / "eval" / "report.html").is_file()
    assert main(["encode", str(clip), "--pretrained", "tiny", "--out", "z.npz", "--no-progress"]) == 0
    with np.load(tmp_path / "z.npz") as z:
        assert z["mean"].shape == (25, 2, 4) and str(z["run"]) == "pretrained:tiny"
    direct = encode_to_file(None, clip, tmp_path / "direct.npz", pretrained="tiny", progress=False)
    with np.load(direct) as a, np.load(tmp_path / "z.npz") as b:
        np.testing.assert_array_equal(a["mean"], b["mean"])


@pytest.mark.parametrize("argv, message", [
    (["eval"], "give a run folder or --pretrained NAME"),
    (["eval", "somewhere", "--pretrained", "tiny"], "give a run folder or --pretrained NAME"),
    (["eval", "somewhere", "--out", "x"], "--out is for --pretrained"),
    (["encode", "clip.mp4", "--out", "z.npz"], "give --run RUN_DIR or --pretrained NAME"),
    (["pretrained", "--show", "nope"], "no pretrained model 'nope'"),
])
def test_bad_pretrained_arguments_exit_2_with_one_line(shelf, argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_refreshing_a_card_rewrites_its_figures_from_an_evaluation_and_keeps_the_weights(shelf, tmp_path,
                                                                                        monkeypatch):
    """experiments/ship_pretrained.py --refresh: a card gains the evaluation's current figures (here
    the third MI reading) and a new check, only from an evaluation of the same weights on the
    card's sequences and seed; the weights are not rewritten."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ship_pretrained", Path(__file__).resolve().parents[1] / "experiments" / "ship_pretrained.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    small = {"sequences": 8, "seed": 1, "iw_samples": 1, "iw_sequences": 2, "partitions": 2,
             "pred_samples": 1}
    monkeypatch.setattr(script, "CHECK_OPTIONS", small)
    card = pretrained.card("tiny")
    card["metrics"] = {"sequences": 8, "eval_seed": 3, "elbo": -1.0, "alignment": None}
    (shelf / "tiny.json").write_text(json.dumps(card))
    weights, digest = (shelf / "tiny.safetensors").read_bytes(), card["sha256"]
    run = pretrained.materialise("tiny", tmp_path / "as-run")
    wrong = evaluate_run(run, progress=False, sequences=8, seed=4, iw_samples=1, iw_sequences=2,
                         partitions=2, pred_samples=1)
    with pytest.raises(UserError, match="evaluated on 8 sequences with seed 4; the card says 8 with seed 3"):
        script.refresh(run, "tiny")
    assert wrong["seed"] == 4 and pretrained.card("tiny")["metrics"]["elbo"] == -1.0
    m = evaluate_run(run, progress=False, sequences=8, seed=3, iw_samples=1, iw_sequences=2,
                     partitions=2, pred_samples=1)
    script.refresh(run, "tiny")
    card = pretrained.card("tiny")
    assert card["metrics"]["elbo"] == m["elbo"]["elbo"]
    assert card["metrics"]["active_same_bits"] == m["mutual_information"]["active"]["same_bits"]
    assert set(card["check"]["values"]) == set(script.TOLERANCE) and card["check"]["options"] == small
    assert (shelf / "tiny.safetensors").read_bytes() == weights and card["sha256"] == digest
    other = tmp_path / "other-run"
    other.mkdir()
    with pytest.raises(UserError, match="does not hold the shipped model 'tiny'"):
        script.refresh(other, "tiny")
