"""Checkpoints: exact round trip, atomic naming, refusal of corrupt or mismatched files, and the
fallback past a corrupt newest checkpoint (loading a model, resuming a run)."""

import json

import pytest
import torch
from safetensors.torch import load

from indpred.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    optimizer_from_flat,
    read_checkpoint,
    save_checkpoint,
)
from indpred.config import ModelConfig, apply_overrides
from indpred.errors import UserError
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo


def assert_same_tensors(a, b):
    """Two name → tensor mappings (state dicts, safetensors files) hold the same, non-empty set of
    names, and equal tensors (dtype, shape and every value) under each."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    assert len(a) > 0, "nothing to compare"
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def trained_pair(seed=0):
    torch.manual_seed(seed)
    model = FactoredVAE(ModelConfig(factors=2, factor_dim=3, width=0.125, transition_hidden=16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = -sequence_elbo(model, torch.rand(2, 3, 3, 64, 64)).elbo.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def test_round_trip_restores_weights_buffers_optimizer_and_rng(tmp_path):
    model, opt = trained_pair()
    gen = torch.Generator().manual_seed(7)
    path = save_checkpoint(tmp_path, 2, model, opt, rng={"noise": gen.get_state()},
                           extra={"note": "x"})
    assert path.name == "step-00000002"
    state, weights, train = read_checkpoint(path)
    assert state["step"] == 2 and state["extra"] == {"note": "x"}

    fresh, fresh_opt = trained_pair(seed=1)
    load_weights(fresh, weights, path)
    assert_same_tensors(model.state_dict(), fresh.state_dict())  # batch-norm running statistics too
    fresh_opt.load_state_dict(optimizer_from_flat(train, state["optimizer"]))
    for pa, pb in zip(model.parameters(), fresh.parameters()):
        a, b = opt.state[pa], fresh_opt.state[pb]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a[key], b[key])
    assert torch.equal(train["rng.noise"], gen.get_state())


def test_only_complete_checkpoints_are_listed_and_old_ones_pruned(tmp_path):
    model, opt = trained_pair()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, keep=2)
    (tmp_path / ".step-00000004.tmp-123").mkdir()  # a write that was interrupted
    (tmp_path / "step-00000009").mkdir()  # no state.json: incomplete
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    model, opt = trained_pair()
    path = save_checkpoint(tmp_path, 1, model, opt)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        read_checkpoint(path)

    path = save_checkpoint(tmp_path, 2, model, opt)
    state = json.loads((path / "state.json").read_text())
    state["version"] = 99
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="version"):
        read_checkpoint(path)


def test_weights_alone_load_for_inference_but_not_for_training(tmp_path, tiny_config):
    from indpred.run import load_model
    from indpred.train import train

    run = tmp_path / "run"
    train(tiny_config, run, steps=2, progress=False)
    path = latest_checkpoint(run / "checkpoints")
    full = load_model(run).state_dict()
    (path / "train_state.safetensors").unlink()  # shared or copied without its training state
    _, weights, train_tensors = read_checkpoint(path, weights_only=True)
    assert train_tensors == {}
    assert_same_tensors(weights, full)
    assert_same_tensors(full, load_model(run).state_dict())
    with pytest.raises(UserError, match=r"train_state\.safetensors is missing or corrupt"):
        read_checkpoint(path)  # resuming needs the training state
    with pytest.warns(UserWarning, match="skipping checkpoint"), pytest.raises(UserError, match="no usable"):
        train(tiny_config, run, resume=True, steps=3, progress=False)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model\.safetensors is missing or corrupt"):
        read_checkpoint(path, weights_only=True)  # the weights are still verified


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    model, opt = trained_pair()
    path = save_checkpoint(tmp_path, 1, model, opt)
    _, weights, _ = read_checkpoint(path)
    other = FactoredVAE(ModelConfig(factors=3, factor_dim=3, width=0.125, transition_hidden=16))
    with pytest.raises(UserError, match="does not match its config"):
        load_weights(other, weights, path)


def test_checkpoint_files_contain_no_pickle(tmp_path):
    model, opt = trained_pair()
    path = save_checkpoint(tmp_path, 1, model, opt)
    for f in path.iterdir():
        head = f.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{f.name} looks like a pickle"


def read_tensors(path):
    """A safetensors file's tensors, copied into memory (``load_file`` maps the file, so its tensors
    would change with the file)."""
    return load(path.read_bytes())


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_config, capsys):
    """``load_model`` loads exactly the previous checkpoint's weights (not an older one), and
    ``indpred train --resume`` continues from the previous checkpoint's step, then remakes the
    lost checkpoint bit for bit."""
    from indpred.cli import main
    from indpred.run import load_model, read_metrics
    from indpred.train import train

    run = tmp_path / "run"
    train(apply_overrides(tiny_config, ["train.checkpoint_every=2", "train.keep_checkpoints=3"]), run,
          steps=6, progress=False)
    oldest, previous, newest = list_checkpoints(run / "checkpoints")
    assert [p.name for p in (oldest, previous, newest)] == ["step-00000002", "step-00000004", "step-00000006"]
    kept, lost = read_tensors(previous / "model.safetensors"), read_tensors(newest / "model.safetensors")
    older = read_tensors(oldest / "model.safetensors")
    for other in (lost, older):  # steps of training apart: the check below can tell them apart
        assert not all(torch.equal(kept[k], other[k]) for k in kept)
    flip_a_byte(newest / "model.safetensors")

    with pytest.warns(UserWarning, match="skipping checkpoint step-00000006"):
        model = load_model(run)
    assert_same_tensors(model.state_dict(), kept)

    # Mark the log: a resume trims it back to the step it continues from.
    records = read_metrics(run)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "first_session": True}) + "\n"
                                               for r in records))
    assert main(["train", "--resume", "--out", str(run), "--steps", "6", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "warning: skipping checkpoint step-00000006" in out.err and "step 6, test ELBO" in out.out
    train_lines = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [(r["step"], "first_session" in r) for r in train_lines] == [
        (1, True), (2, True), (3, True), (4, True), (5, False), (6, False)]  # resumed at step 4
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "step-00000002", "step-00000004", "step-00000006"]
    assert_same_tensors(read_tensors(newest / "model.safetensors"), lost)
