"""`indpred eval` and `indpred compare` end to end on tiny runs, and the report in a browser."""

import json
import math

import numpy as np
import pytest

from indpred.cli import main
from indpred.config import apply_overrides, entangled
from indpred.eval.evaluate import evaluate_run
from indpred.train import train
from tests.browser import render

FAST = dict(sequences=12, iw_samples=2, iw_sequences=4, partitions=3, pred_samples=2,
            progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny factored run and its entangled twin, trained for a few steps."""
    from indpred.config import get_preset
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("runs")
    cfg = apply_overrides(get_preset("demo"), [*TINY, "data.seq_len=4"])
    train(cfg, root / "factored", steps=3, progress=False)
    train(entangled(cfg), root / "entangled", steps=3, progress=False)
    return root


def test_factored_eval_writes_every_metric_and_figure(runs):
    m = evaluate_run(runs / "factored", **FAST)
    out = runs / "factored" / "eval"
    assert json.loads((out / "metrics.json").read_text()) == m
    assert m["factors"] == 2 and m["step"] == 3 and m["sequences"] == 12
    mi = m["mutual_information"]
    assert len(mi["matrix_nats"]) == 2 and mi["partition"] is None
    assert math.isclose(mi["same_bits"], mi["same_nats"] / math.log(2), rel_tol=1e-9)
    assert len(m["elbo"]["kl"]) == 2 and m["iwae"]["samples"] == 2
    al = m["alignment"]
    assert 0.5 - 1e-9 <= al["score"] <= 1.0 and len(al["R"]) == 2
    assert len(m["probes"]["r2"]) == 2 and len(m["probes"]["r2"][0]) == 2
    p = m["prediction"]
    assert p["context"] == 2 and p["horizon"] == 2 and len(p["psnr_mean_rollout"]) == 2
    for paths in m["figures"].values():
        for rel in paths:
            assert (out / rel).is_file() and (out / rel).stat().st_size > 0
    assert len(m["correlation"]["unit_order"]) == 8
    tracking = m["layers"]["tracking"]  # each factor's track against the digit the alignment gave it
    assert [[q["factor"], q["object"]] for q in tracking["pairs"]] == al["assignment"]
    assert 0 <= tracking["within"] <= 1 and tracking["error_px"] >= 0
    assert {"layers", "layers_gif"} <= set(m["figures"])


def test_entangled_eval_uses_the_best_partition(runs):
    m = evaluate_run(runs / "entangled", seed=5, **FAST)
    part = m["mutual_information"]["partition"]
    assert part["groups"] == 2 and part["size"] == 4 and len(part["scores_nats"]) == 3
    best = max(part["scores_nats"])
    assert part["scores_nats"][part["best_index"]] == best
    assert math.isclose(m["mutual_information"]["same_minus_cross_nats"], best, rel_tol=1e-9)
    assert sorted(u for g in part["units"] for u in g) == sorted(m["correlation"]["unit_order"])
    assert m["layers"] == {"skipped": "one factor: its layer is the whole frame"}
    again = evaluate_run(runs / "entangled", seed=5, **FAST)
    assert again["mutual_information"] == m["mutual_information"]  # reproducible by seed


def test_report_of_a_real_run_renders_in_a_browser(runs, tmp_path):
    evaluate_run(runs / "factored", **FAST)
    report = runs / "factored" / "eval" / "report.html"
    page = render(report, tmp_path)
    assert page.errors == []
    assert all(u == report.as_uri() or u.startswith("data:") for u in page.requests)
    assert len(page.images) >= 8
    assert all(complete and w > 0 and h > 0 for complete, w, h in page.images)
    assert json.loads(page.config_text)["model"]["factors"] == 2
    assert not page.is_blank()


def test_cli_eval_and_compare(runs, capsys):
    for name in ("factored", "entangled"):
        assert main(["eval", str(runs / name), "--sequences", "8", "--iw-samples", "2",
                     "--partitions", "2", "--no-progress"]) == 0
    assert "report:" in capsys.readouterr().out
    assert main(["compare", str(runs / "factored"), str(runs / "entangled"),
                 "--out", str(runs / "table")]) == 0
    table = capsys.readouterr().out
    assert "paper: Moving MNIST, two factors" in table and "(best partition)" in table
    rows = json.loads((runs / "table.json").read_text())
    assert [r["model"] for r in rows[:2]] == [str(runs / "factored"), str(runs / "entangled")]
    assert (runs / "table.md").read_text().startswith("| model |")


def test_grayscale_run_skips_alignment_with_a_note(tmp_path, tiny_config):
    cfg = apply_overrides(tiny_config, ["data.colour=false"])
    train(cfg, tmp_path / "gray", steps=1, progress=False)
    m = evaluate_run(tmp_path / "gray", **FAST)
    assert "skipped" in m["alignment"] and "probes" in m


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "{tmp}/nothing"], "not an indpred run folder"),
    (["eval", "{untrained}"], "no checkpoint"),
    (["eval", "{factored}", "--sequences", "1"], "--sequences must be >= 2"),
    (["eval", "{entangled}", "--groups", "5", "--group-size", "4"], "cannot split"),
    (["compare", "{tmp}/nothing"], "no evaluation yet"),
])
def test_eval_bad_input(runs, tmp_path, capsys, argv, message):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.json").write_text((runs / "factored" / "config.json").read_text())
    argv = [a.format(tmp=tmp_path, untrained=untrained, factored=runs / "factored",
                     entangled=runs / "entangled") for a in argv]
    assert main([*argv, "--no-progress"] if argv[0] == "eval" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("indpred: error:") and "\n" not in err and message in err, err


def test_separation_lines_say_which_factor_drives_which_digit(tmp_path):
    from indpred.compare import separation_lines
    from indpred.metrics.alignment import alignment_score

    cases = {  # delta[k, j]: how much digit j changes when factor k moves
        "aligned": ([[0.0, 0.9], [1.0, 0.05]], None),  # factor 1 → green, factor 2 → red
        "mixed": ([[0.5, 0.5], [0.5, 0.4]], None),
        "twin": ([[0.0, 0.9], [1.0, 0.05]], {"groups": 2}),  # an entangled run's unit groups
    }
    for name, (delta, partition) in cases.items():
        (tmp_path / name / "eval").mkdir(parents=True)
        metrics = {"alignment": alignment_score(np.array(delta)),
                   "mutual_information": {"partition": partition}}
        (tmp_path / name / "eval" / "metrics.json").write_text(json.dumps(metrics))
    aligned, mixed, twin = separation_lines([tmp_path / n for n in cases])
    assert aligned.startswith("aligned: alignment 0.97")
    assert "factor 1 → digit 2 (green), factor 2 → digit 1 (red)" in aligned and "separated:" in aligned
    assert mixed.endswith("not separated") and "alignment 0.53" in mixed
    assert "group 1 → digit 2 (green)" in twin


@pytest.mark.parametrize("size", [32])  # 128 px: the networks' test (test_model.py) and the data's
def test_runs_at_other_frame_sizes_train_and_evaluate(tmp_path, tiny_config, size):
    cfg = apply_overrides(tiny_config, [f"data.image_size={size}", "data.seq_len=4"])
    assert cfg.model.image_size == size  # the networks follow the data
    train(cfg, tmp_path / "run", steps=2, progress=False)
    m = evaluate_run(tmp_path / "run", **FAST)
    assert m["alignment"]["score"] >= 0.5 - 1e-9 and len(m["prediction"]["psnr_mean_rollout"]) == 2
    assert m["layers"]["tracking"]["error_px"] <= size * 2 ** 0.5
