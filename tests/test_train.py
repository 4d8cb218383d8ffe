"""Training: the loss falls, resumption is exact, the run folder holds what it promises."""

import json
import shutil

import pytest
import torch

from indpred.checkpoint import latest_checkpoint, read_checkpoint
from indpred.config import RunConfig, apply_overrides
from indpred.errors import UserError
from indpred.run import load_model
from indpred.train import train


def records(run_dir, split="train"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_short_training_lowers_the_loss(tmp_path, tiny_config):
    cfg = apply_overrides(tiny_config, ["train.lr=2e-3"])
    result = train(cfg, tmp_path / "run", steps=25, progress=False)
    elbos = [r["elbo"] for r in records(tmp_path / "run")]
    assert len(elbos) == 25
    first, last = sum(elbos[:3]) / 3, sum(elbos[-3:]) / 3
    assert last > first + 500, (first, last)  # nats per frame
    assert result.test["sequences"] == 8 and result.step == 25


def test_run_folder_contents_and_config_round_trip(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(tiny_config, run, steps=2, progress=False)
    saved = RunConfig.load(run / "config.json")
    assert saved.to_dict() == {**tiny_config.to_dict(), "train": {**tiny_config.to_dict()["train"],
                                                                   "steps": 2}}
    assert json.loads((run / "summary.json").read_text())["step"] == 2
    assert records(run, "test")[-1]["step"] == 2
    model = load_model(run)
    assert not model.training and model.config == saved.model


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, tiny_config):
    cfg = apply_overrides(tiny_config, ["train.checkpoint_every=3", "train.kl_warmup=4",
                                        "train.lr_decay=0.5", "train.lr_decay_every=2"])
    straight = tmp_path / "straight"
    train(RunConfig.from_dict(cfg.to_dict()), straight, steps=6, progress=False)

    split = tmp_path / "split"
    train(RunConfig.from_dict(cfg.to_dict()), split, steps=3, progress=False)
    # Lines logged after the checkpoint of an interrupted run are dropped on resume.
    with (split / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "split": "train", "elbo": 0.0}) + "\n")
    train(RunConfig(), split, resume=True, steps=6, progress=False)

    _, a, ta = read_checkpoint(latest_checkpoint(straight / "checkpoints"))
    _, b, tb = read_checkpoint(latest_checkpoint(split / "checkpoints"))
    assert a.keys() == b.keys() and ta.keys() == tb.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    steps = [r["step"] for r in records(split)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [r["elbo"] for r in records(split)] == [r["elbo"] for r in records(straight)]


def test_existing_run_is_never_overwritten_without_force(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(tiny_config, run, steps=1, progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already exists"):
        train(tiny_config, run, steps=1, progress=False)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (run / "notes.txt").write_text("mine")
    train(tiny_config, run, steps=2, force=True, progress=False)
    assert (run / "notes.txt").read_text() == "mine"  # --force clears only indpred's files
    assert latest_checkpoint(run / "checkpoints").name == "step-00000002"


def test_free_bits_leave_factors_below_the_floor_unpenalised(tiny_config):
    """A floor above every factor's KL removes the KL from the gradient (the transition,
    reached only through the KL, gets none); a floor of zero is the plain ELBO loss."""
    from indpred.train import forward_backward, make_model, make_trainer

    S = tiny_config.data.image_size
    frames = torch.rand(4, 3, 3, S, S)
    noise = torch.randn(4, 3, tiny_config.model.factors, tiny_config.model.factor_dim)
    results = {}
    for floor in (0.0, 1e6):
        trainer = make_trainer(make_model(tiny_config, torch.device("cpu")), tiny_config,
                               torch.device("cpu"))
        loss, terms = forward_backward(trainer, frames, noise, free_bits=floor)
        grads = [p.grad for p in trainer.model.transition.parameters()]
        results[floor] = (loss.item(), terms, max(g.abs().max().item() for g in grads))
    (plain, terms, g_plain), (floored, _, g_floored) = results[0.0], results[1e6]
    assert plain == pytest.approx(-terms.elbo.mean().item(), rel=1e-6)
    K = tiny_config.model.factors
    assert floored == pytest.approx(-terms.log_likelihood.mean().item() + K * 1e6, rel=1e-6)
    assert g_plain > 0 and g_floored == 0


def final_weights(run_dir):
    return read_checkpoint(latest_checkpoint(run_dir / "checkpoints"))[1]


def test_a_dormant_factor_starts_the_run_over_as_if_seeded_anew(tmp_path, tiny_config):
    from indpred.train import attempt_seed

    # dormant_nats far above any KL: every checked start is abandoned, twice, then the third runs on.
    cfg = apply_overrides(RunConfig.from_dict(tiny_config.to_dict()),
                          ["train.dormant_check=3", "train.dormant_nats=1e9",
                           "train.dormant_restarts=2", "train.checkpoint_every=2"])
    run = tmp_path / "run"
    result = train(RunConfig.from_dict(cfg.to_dict()), run, steps=5, progress=False)
    restarts = [json.loads(line) for line in (run / "restarts.jsonl").read_text().splitlines()]
    assert [r["attempt"] for r in restarts] == [0, 1] and [r["step"] for r in restarts] == [3, 3]
    assert all(r["train_seconds"] > 0 for r in restarts) and result.seconds > sum(
        r["train_seconds"] for r in restarts)  # the result counts every start's time
    # The KL the check saw is the mean of the abandoned start's logged KL over its window.
    logged = [r["kl"] for r in map(json.loads, (run / "metrics-attempt-0.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert len(logged) == 3
    expected = torch.tensor(logged, dtype=torch.float64).mean(0)
    assert torch.allclose(torch.tensor(restarts[0]["kl"], dtype=torch.float64), expected)
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5] and result.step == 5
    assert json.loads((run / "summary.json").read_text())["restarts"] == restarts
    state, _, _ = read_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["extra"]["attempt"] == 2

    # The third start is exactly a run whose seed is that start's seed.
    seeded = apply_overrides(tiny_config, [f"train.seed={attempt_seed(cfg, 2)}"])
    train(seeded, tmp_path / "seeded", steps=5, progress=False)
    a, b = final_weights(run), final_weights(tmp_path / "seeded")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Resuming that run goes on with its third start and checks nothing again.
    train(RunConfig(), run, resume=True, steps=7, progress=False)
    train(seeded, tmp_path / "seeded", resume=True, steps=7, progress=False)
    a, b = final_weights(run), final_weights(tmp_path / "seeded")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((run / "restarts.jsonl").read_text().splitlines()) == 2


def test_a_resume_inside_the_dormant_window_sees_the_whole_window(tmp_path, tiny_config):
    # Stopped at step 2 of a window of steps 1-4, the resumed run must still average all four
    # steps' KL, exactly as the uninterrupted run does, or its decision could differ.
    cfg = apply_overrides(RunConfig.from_dict(tiny_config.to_dict()),
                          ["train.dormant_check=4", "train.dormant_nats=0", "train.checkpoint_every=0"])
    train(RunConfig.from_dict(cfg.to_dict()), tmp_path / "whole", steps=6, progress=False)
    train(RunConfig.from_dict(cfg.to_dict()), tmp_path / "resumed", steps=2, progress=False)
    train(RunConfig(), tmp_path / "resumed", resume=True, steps=6, progress=False)
    whole, resumed = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("whole", "resumed"))
    logged = [r["kl"] for r in records(tmp_path / "whole")][:4]
    assert torch.allclose(torch.tensor(whole["dormant_kl"], dtype=torch.float64),
                          torch.tensor(logged, dtype=torch.float64).mean(0))
    assert resumed["dormant_kl"] == whole["dormant_kl"]


def test_a_resumed_start_counts_its_earlier_sessions_training_time(tmp_path, tiny_config):
    def carried_seconds(run_dir):
        state = json.loads((latest_checkpoint(run_dir / "checkpoints") / "state.json").read_text())
        return state["extra"]["train_seconds"]

    cfg = apply_overrides(RunConfig.from_dict(tiny_config.to_dict()), ["train.checkpoint_every=0"])
    train(RunConfig.from_dict(cfg.to_dict()), tmp_path / "kept", steps=2, progress=False)
    first = carried_seconds(tmp_path / "kept")
    assert first > 0
    result = train(RunConfig(), tmp_path / "kept", resume=True, steps=4, progress=False)
    summary = json.loads((tmp_path / "kept" / "summary.json").read_text())
    assert summary["train_seconds"] == first + summary["train_seconds_this_session"] == result.seconds
    assert first < carried_seconds(tmp_path / "kept") <= summary["train_seconds"]  # saved just before
    # A start stopped before the dormant check, resumed and then abandoned, records all its time.
    dormant = apply_overrides(RunConfig.from_dict(cfg.to_dict()), [
        "train.dormant_check=4", "train.dormant_nats=1e9", "train.dormant_restarts=1"])
    train(RunConfig.from_dict(dormant.to_dict()), tmp_path / "abandoned", steps=3, progress=False)
    first = carried_seconds(tmp_path / "abandoned")
    train(RunConfig(), tmp_path / "abandoned", resume=True, steps=5, progress=False)
    lines = (tmp_path / "abandoned" / "restarts.jsonl").read_text().splitlines()
    restarts = [json.loads(line) for line in lines]
    assert [r["attempt"] for r in restarts] == [0] and restarts[0]["train_seconds"] > first


@pytest.mark.parametrize("change", ["train.dormant_nats=0", "model.factors=1", "train.dormant_restarts=0"])
def test_the_dormant_check_leaves_awake_entangled_or_exhausted_runs_alone(tmp_path, tiny_config, change):
    base = apply_overrides(RunConfig.from_dict(tiny_config.to_dict()), [change])
    never_awake = [] if "nats" in change else ["train.dormant_nats=1e9"]
    checked = apply_overrides(RunConfig.from_dict(base.to_dict()), ["train.dormant_check=2", *never_awake])
    train(checked, tmp_path / "checked", steps=3, progress=False)
    train(base, tmp_path / "plain", steps=3, progress=False)
    assert not (tmp_path / "checked" / "restarts.jsonl").exists()
    a, b = final_weights(tmp_path / "checked"), final_weights(tmp_path / "plain")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("nats, restarts", [(0.0, 2), (1e9, 2), (1e9, 1)])
def test_demo_starts_side_by_side_train_what_the_rule_trains_one_after_the_other(
        tmp_path, tiny_config, nats, restarts):
    from indpred.config import entangled
    from indpred.demo import train_twins

    # Start 0 kept (awake); starts 0 and 1 abandoned, start 2 trained; start 1 kept as the last.
    cfg = apply_overrides(RunConfig.from_dict(tiny_config.to_dict()),
                          ["train.dormant_check=2", f"train.dormant_nats={nats}",
                           f"train.dormant_restarts={restarts}", "train.checkpoint_every=1"])
    out = tmp_path / "demo"
    results, _ = train_twins([(cfg, out / "factored"), (entangled(cfg), out / "entangled")], 4,
                             side_by_side=True, progress=False)
    assert results == [(results[0][0], False), (results[1][0], False)]
    train(RunConfig.from_dict(cfg.to_dict()), tmp_path / "alone", steps=4, progress=False)  # same threads

    a, b = final_weights(out / "factored"), final_weights(tmp_path / "alone")
    assert all(torch.equal(a[k], b[k]) for k in a)
    expected = [] if nats == 0 else list(range(restarts))
    side = json.loads((out / "factored" / "summary.json").read_text()).get("restarts", [])
    alone = json.loads((tmp_path / "alone" / "summary.json").read_text()).get("restarts", [])
    assert [r["attempt"] for r in side] == [r["attempt"] for r in alone] == expected
    assert [r["kl"] for r in side] == [r["kl"] for r in alone]
    assert [r["step"] for r in records(out / "factored")] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == ["entangled", "factored"]  # no scratch left

    # Killed before its first checkpoint, the kept start resumes from scratch as that start.
    shutil.rmtree(out / "factored" / "checkpoints")
    train(RunConfig(), out / "factored", resume=True, steps=4, progress=False)
    a = final_weights(out / "factored")
    assert all(torch.equal(a[k], b[k]) for k in a)
