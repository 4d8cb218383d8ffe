"""The update decided on the device (indpred.train.update) against the host-side rule it
replaces: a good step is exactly ``optimizer.step()``, a bad one exactly nothing; and a
training step reads nothing back to the host between sync points."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from indpred.config import apply_overrides
from indpred.model import snapshot_buffers
from indpred.run import load_model
from indpred.train import graphs, train
from indpred.train.loop import TrainingLoop
from indpred.train.update import finite, masked_restore_buffers, masked_step
from tests.test_reliability import poison


def net_and_adam(seed: int = 0) -> tuple[nn.Module, torch.optim.Adam]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return net, torch.optim.Adam(net.parameters(), lr=1e-2)


def backward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.zero_grad(set_to_none=True)
    loss = net(x).square().mean()
    loss.backward()
    return loss


def state_of(net: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())


def assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    (wa, oa), (wb, ob) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for key, value in oa["state"][i].items():
            assert torch.equal(value, ob["state"][i][key]), (i, key)


def test_a_good_step_is_exactly_the_optimisers_step():
    x = torch.randn(16, 4)
    plain_net, plain_opt = net_and_adam()
    net, opt = net_and_adam()
    for _ in range(3):
        backward(plain_net, x)
        plain_opt.step()
        loss = backward(net, x)
        saved = snapshot_buffers(net)
        ok = finite(loss, torch.tensor(1.0))
        masked_step(opt, ok)
        masked_restore_buffers(net, saved, ok)
    assert_same(state_of(net, opt), state_of(plain_net, plain_opt))


def test_a_bad_step_changes_nothing_not_even_adams_fresh_state():
    x = torch.randn(16, 4)
    net, opt = net_and_adam()
    backward(net, x)
    opt.step()
    before = state_of(net, opt)
    saved = snapshot_buffers(net)
    loss = backward(net, x * float("nan"))  # NaN gradients, batch norm's statistics spoiled
    ok = finite(loss, torch.tensor(float("nan")))
    assert not ok
    masked_step(opt, ok)
    masked_restore_buffers(net, saved, ok)
    assert_same(state_of(net, opt), before)
    # a bad first step, then a good one: exactly the good step alone on a fresh optimiser
    fresh_net, fresh_opt = net_and_adam(1)
    net, opt = net_and_adam(1)
    saved = snapshot_buffers(net)
    loss = backward(net, x * float("inf"))
    masked_step(opt, finite(loss, torch.tensor(0.0)))
    masked_restore_buffers(net, saved, finite(loss, torch.tensor(0.0)))
    for model, optimiser in ((net, opt), (fresh_net, fresh_opt)):
        backward(model, x)
        optimiser.step()
    assert_same(state_of(net, opt), state_of(fresh_net, fresh_opt))


def test_where_the_figures_are_read_changes_nothing_the_run_computes(tmp_path, tiny_config, monkeypatch):
    poison(monkeypatch, lambda step: step in {1, 4, 5})
    runs = {}
    for every in (1, 4):
        cfg = apply_overrides(tiny_config, [f"train.log_every={every}"])
        run = tmp_path / f"every{every}"
        train(cfg, run, steps=7, progress=False)
        skips = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        runs[every] = (load_model(run).state_dict(), [(r["step"], r["skipped_total"]) for r in skips
                                                      if "skipped" in r])
    (w1, s1), (w4, s4) = runs[1], runs[4]
    assert s1 == s4 == [(2, 1), (5, 2), (6, 3)]
    assert all(torch.equal(w1[k], w4[k]) for k in w1)


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_a_step_reads_nothing_back_to_the_host(tmp_path, tiny_config, monkeypatch, graphed):
    if graphed:  # train.cuda_graphs on a CPU: its stand-in capture runs the step at each replay
        monkeypatch.setattr(graphs, "capture_for", lambda device, ranks: graphs.EagerCapture)
    reads: list[str] = []
    guard = {"on": False}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if guard["on"]:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    step, adam_step = TrainingLoop._step, torch.optim.Adam.step

    def guarded_step(self, frames):
        guard["on"] = True
        try:
            step(self, frames)
        finally:
            guard["on"] = False

    def adam_unguarded(self, *args, **kwargs):  # a CPU's Adam reads its step count as a float;
        on, guard["on"] = guard["on"], False  # on a GPU it is capturable and reads nothing
        try:
            return adam_step(self, *args, **kwargs)
        finally:
            guard["on"] = on

    monkeypatch.setattr(TrainingLoop, "_step", guarded_step)
    monkeypatch.setattr(torch.optim.Adam, "step", adam_unguarded)
    cfg = apply_overrides(tiny_config, ["train.log_every=3", f"train.cuda_graphs={graphed}"])
    train(cfg, tmp_path / "run", steps=5, progress=False)  # graphed: 3 warm-up steps, a capture, a replay
    assert reads == []
