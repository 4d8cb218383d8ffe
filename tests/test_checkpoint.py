"""Checkpoints: exact round trip, atomic naming, refusal of corrupt or mismatched files."""

import json

import pytest
import torch

from indpred.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    optimizer_from_flat,
    read_checkpoint,
    save_checkpoint,
)
from indpred.config import ModelConfig
from indpred.errors import UserError
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo


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
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k  # includes batch-norm running statistics
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
    assert train_tensors == {} and all(torch.equal(weights[k], v) for k, v in full.items())
    assert all(torch.equal(full[k], v) for k, v in load_model(run).state_dict().items())
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
