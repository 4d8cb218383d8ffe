"""The step as one CUDA graph (indpred.train.graphs), tested on a CPU with everything but the
recording itself: the stand-in capture "replays" by running the step again on the static
buffers, so a graphed run must equal an eager one bit for bit; the recording and its
replay on a GPU are checked by benchmarks/gpu_check.py."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from indpred.checkpoint import latest_checkpoint, read_checkpoint
from indpred.config import apply_overrides
from indpred.distributed import Ranks
from indpred.errors import UserError
from indpred.run import load_model
from indpred.train import graphs, train
from indpred.train.graphs import EagerCapture, StepGraph
from indpred.train.loop import update
from indpred.train.setup import make_model, make_trainer
from tests.test_reliability import poison


class CountingCapture(EagerCapture):
    """The CPU stand-in, counting how often the step is recorded and replayed."""

    made: ClassVar[list[CountingCapture]] = []

    def __init__(self, step, device) -> None:
        super().__init__(step, device)
        self.replays = 0
        CountingCapture.made.append(self)

    def replay(self) -> torch.Tensor:
        self.replays += 1
        return super().replay()


@pytest.fixture
def cpu_graphs(monkeypatch):
    """``train.cuda_graphs`` on a CPU, recorded by the counting stand-in."""
    CountingCapture.made = []
    monkeypatch.setattr(graphs, "capture_for", lambda device, ranks: CountingCapture)
    return CountingCapture.made


def test_inputs_go_through_static_buffers_warm_up_then_capture_and_recapture_on_a_change():
    seen = []

    def body(static):
        seen.append({name: v.data_ptr() for name, v in static.items()})
        return static["x"] * static["w"]

    graph = StepGraph(body, torch.device("cpu"), capture=CountingCapture, warmup=2)
    CountingCapture.made = []
    for i in range(5):  # 2 eager steps, a capture, replays; each sees this call's inputs
        out = graph(0.1, x=torch.full((3,), float(i)), w=2.0)
        assert torch.equal(out, torch.full((3,), 2.0 * i))
    assert graph.captures == 1 and CountingCapture.made[0].replays == 3
    assert len({tuple(s.values()) for s in seen}) == 1  # one set of buffers throughout
    out.fill_(-1.0)  # what a step returns is its own: the next replay does not write into it
    assert torch.equal(graph(0.1, x=torch.ones(3), w=3.0), torch.full((3,), 3.0)) and out[0] == -1
    graph(0.2, x=torch.ones(3), w=3.0)  # a new key (learning rate): recorded again, no warm-up
    assert graph.captures == 2 and graph.warm == 2
    assert torch.equal(graph(0.2, x=torch.ones(4), w=1.0), torch.ones(4))  # a new shape: new buffers,
    assert graph.captures == 2 and graph.warm == 1  # warmed up again before the next capture
    assert seen[-1]["x"] != seen[0]["x"]


def test_a_graphed_run_equals_an_eager_one_bit_for_bit(tmp_path, tiny_config, monkeypatch, cpu_graphs):
    # every branch the graph must carry: KL warm-up (a new weight each step, through its buffer),
    # learning-rate decay (a new capture), clipping, and non-finite batches before and after
    # the capture (the masked update inside the graph)
    poison(monkeypatch, lambda step: step in {1, 6})
    cfg = apply_overrides(tiny_config, ["train.kl_warmup=5", "train.lr_decay=0.5", "train.lr_decay_every=4",
                                        "train.grad_clip=0.5", "train.log_every=2"])
    runs = {}
    for graphed in (False, True):
        run = tmp_path / f"graphed-{graphed}"
        train(apply_overrides(cfg, [f"train.cuda_graphs={graphed}"]), run, steps=10, progress=False)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            line.pop("frames_per_s", None)
        runs[graphed] = (load_model(run).state_dict(), lines)
    (eager, eager_log), (graphed, graphed_log) = runs[False], runs[True]
    assert all(torch.equal(eager[k], graphed[k]) for k in eager)
    assert graphed_log == eager_log and sum("skipped" in x for x in eager_log) == 2
    # steps 0-2 warm up; 3 is recorded at lr 1, 4-7 at lr 1/2, 8-9 at lr 1/4: three captures
    assert [c.replays for c in cpu_graphs] == [1, 4, 2]


def test_a_graphed_run_resumes_exactly(tmp_path, tiny_config, cpu_graphs):
    cfg = apply_overrides(tiny_config, ["train.cuda_graphs=true", "train.checkpoint_every=4"])
    train(cfg, tmp_path / "whole", steps=9, progress=False)
    train(cfg, tmp_path / "parts", steps=4, progress=False)
    train(None, tmp_path / "parts", resume=True, steps=9, progress=False)
    a = read_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    b = read_checkpoint(latest_checkpoint(tmp_path / "parts" / "checkpoints"))
    assert a[0]["step"] == b[0]["step"] == 9
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2].keys() == b[2].keys() and all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def test_cuda_graphs_are_refused_where_they_cannot_run(tmp_path, tiny_config):
    cfg = apply_overrides(tiny_config, ["train.cuda_graphs=true"])
    with pytest.raises(UserError, match="needs a CUDA GPU, and this run is on cpu"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="not under torchrun"):
        graphs.capture_for(torch.device("cuda"), Ranks(rank=0, world=2, local_rank=0))
    for other in ("train.compile=reduce-overhead", "train.activation_checkpointing=true"):
        with pytest.raises(UserError, match="cannot be combined"):
            apply_overrides(cfg, [other])


class HostData(TorchDispatchMode):
    """Records what a CUDA graph cannot hold: a tensor made from host data (a copy from the host
    on a GPU) and a value read back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten._local_scalar_dense.default):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sets", [[], ["model.decoder=shared", "model.transition_order=2"]],
                         ids=["per-factor order 1", "shared order 2"])
def test_the_step_makes_no_tensor_from_host_data_and_reads_nothing_back(tiny_config, monkeypatch, sets):
    # what would break the capture on a GPU, seen on a CPU; free bits and clipping on, as the
    # paths they take are the likeliest to make a number a tensor
    cfg = apply_overrides(tiny_config, [*sets, "train.free_bits=0.5", "train.grad_clip=1.0"])
    model = make_model(cfg, torch.device("cpu")).train()
    trainer = make_trainer(model, cfg, torch.device("cpu"))
    adam_step = torch.optim.Adam.step
    S = cfg.data.image_size
    frames = torch.rand(4, cfg.data.seq_len, 3, S, S)
    eps = torch.randn(4, cfg.data.seq_len, cfg.model.factors, cfg.model.factor_dim)
    update(trainer, frames, eps, 0.5, free_bits=0.5, grad_clip=1.0)  # Adam's state made before
    mode = HostData()

    def adam_unwatched(self, *args, **kwargs):  # a CPU's Adam reads its step count (not capturable
        with torch.utils._python_dispatch._disable_current_modes():  # on a CPU); a GPU's reads nothing
            return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", adam_unwatched)
    kl_weight = torch.tensor(0.5)  # as the graph's static buffer gives it
    with mode:
        update(trainer, frames, eps, kl_weight, free_bits=0.5, grad_clip=1.0)
    assert mode.found == []
