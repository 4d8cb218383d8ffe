"""Correctness of the GPU paths, checked on the device itself (run by ``benchmarks/gpu.sh``).

On the same weights, frames and noise: CUDA float32 against CPU float32; the vectorised
model against the naive reference; activation checkpointing against none; channels-last
and bf16 against float32; Moving MNIST rendered on the device against ``get_batch``; a run
trained with ``train.cuda_graphs`` against the same run trained eagerly.
Prints one PASS or FAIL line per check and exits non-zero on a failure. ``--device cpu``
runs the same checks on the CPU (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: the graphed check

import torch

from indpred.config import (
    ModelConfig,
    apply_overrides,
    get_preset,
)
from indpred.data import MovingMNIST
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo
from indpred.run import load_model
from indpred.testing.naive import naive_sequence_elbo
from indpred.train import graphs, step_batches, train
from indpred.train.loop import TrainingLoop

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def elbo_and_grads(model: FactoredVAE, frames: torch.Tensor, noise: torch.Tensor, *, naive: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    fn = naive_sequence_elbo if naive else sequence_elbo
    elbo = fn(model, frames, noise=noise).elbo
    grads = torch.autograd.grad(-elbo.sum(), list(model.parameters()))
    return elbo.detach().cpu(), torch.cat([g.flatten() for g in grads]).cpu()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False  # float32 checks in float32, not TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cfg = ModelConfig(factors=3, factor_dim=8, width=0.5)
    cpu_model = FactoredVAE(cfg)
    cpu_model.train()
    with torch.no_grad():
        cpu_model.filter(torch.rand(8, 4, 3, 64, 64))  # non-trivial running statistics
    cpu_model.eval()
    frames = torch.rand(4, 6, 3, 64, 64)
    noise = torch.randn(4, 6, 3, 8)
    model = copy.deepcopy(cpu_model).to(device)
    x, eps = frames.to(device), noise.to(device)

    e_cpu, g_cpu = elbo_and_grads(cpu_model, frames, noise)
    e_dev, g_dev = elbo_and_grads(model, x, eps)
    check(f"{device} float32 = CPU float32 (eval)", rel(e_dev, e_cpu) < 1e-5 and rel(g_dev, g_cpu) < 1e-3,
          f"ELBO rel {rel(e_dev, e_cpu):.1e}, gradient rel {rel(g_dev, g_cpu):.1e}")
    e_naive, g_naive = elbo_and_grads(model, x, eps, naive=True)
    check("vectorised = naive reference (eval)", rel(e_dev, e_naive) < 1e-5 and rel(g_dev, g_naive) < 1e-3,
          f"ELBO rel {rel(e_dev, e_naive):.1e}, gradient rel {rel(g_dev, g_naive):.1e}")

    model.train()
    e_train, g_train = elbo_and_grads(model, x, eps)
    ckpt = copy.deepcopy(model).configure(activation_checkpointing=True)
    e_ckpt, g_ckpt = elbo_and_grads(ckpt, x, eps)
    check("activation checkpointing = none (train)",
          rel(e_ckpt, e_train) < 1e-6 and rel(g_ckpt, g_train) < 1e-5,
          f"ELBO rel {rel(e_ckpt, e_train):.1e}, gradient rel {rel(g_ckpt, g_train):.1e}")
    nhwc = copy.deepcopy(model).configure(channels_last=True)
    e_cl, g_cl = elbo_and_grads(nhwc, x, eps)
    check("channels-last = NCHW (train)", rel(e_cl, e_train) < 1e-5 and rel(g_cl, g_train) < 1e-3,
          f"ELBO rel {rel(e_cl, e_train):.1e}, gradient rel {rel(g_cl, g_train):.1e}")
    half = copy.deepcopy(model).configure(precision="bf16", channels_last=True)
    e_bf, g_bf = elbo_and_grads(half, x, eps)
    cosine = torch.nn.functional.cosine_similarity(g_bf.double(), g_train.double(), dim=0).item()
    check("bf16 autocast ~ float32 (train)", rel(e_bf, e_train) < 1e-3 and cosine > 0.99,
          f"ELBO rel {rel(e_bf, e_train):.1e}, gradient cosine {cosine:.4f}")

    data = MovingMNIST(split="train", seq_len=10, length=100_000)
    on_device = next(step_batches(data, 64, 3, 4, device, workers=0, render_on_device=True))
    same = torch.equal(on_device.cpu(), data.get_batch(range(192, 256))["frames"])
    check("Moving MNIST rendered on the device = get_batch", same, f"{tuple(on_device.shape)} frames")
    graphed_equals_eager(device)
    if FAILED:
        print(f"{len(FAILED)} check(s) failed: {', '.join(FAILED)}")
        sys.exit(1)


def graphed_equals_eager(device: torch.device) -> None:
    """``train.cuda_graphs`` against eager training: 10 steps at B = 32, T = 10 with KL warm-up
    (a new weight each step, through its static buffer), a learning-rate decay (two captures)
    and a non-finite batch at step 7 (skipped inside the replayed graph), deterministic
    kernels; the weights must agree (on a CPU: the stand-in capture)."""
    if device.type != "cuda":
        graphs.capture_for = lambda device, ranks: graphs.EagerCapture  # the CPU smoke run
    step = TrainingLoop._step

    def poisoned(loop: TrainingLoop, frames: torch.Tensor) -> None:
        step(loop, frames * float("nan") if loop.counters.step == 6 else frames)

    TrainingLoop._step = poisoned
    sets = ["model.width=0.25", "data.seq_len=10", "train.batch_size=32", "data.test_sequences=32",
            "train.log_every=5", "train.eval_every=0", "train.checkpoint_every=0", "train.kl_warmup=6",
            "train.lr_decay=0.5", "train.lr_decay_every=5", f"train.device={device}",
            "train.deterministic=true"]
    weights, skipped = {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for graphed in (False, True):
                run = Path(tmp) / str(graphed)
                cfg = apply_overrides(get_preset("demo"), [*sets, f"train.cuda_graphs={graphed}"])
                train(cfg, run, steps=10, progress=False)
                weights[graphed] = load_model(run).state_dict()
                skipped[graphed] = json.loads((run / "summary.json").read_text())["skipped_steps"]
    finally:
        TrainingLoop._step = step
    eager, graphed = weights[False], weights[True]
    identical = all(torch.equal(eager[k], graphed[k]) for k in eager)
    worst = max(rel(graphed[k], eager[k]) for k in eager if eager[k].is_floating_point())
    check("CUDA-graphed training = eager (10 steps)" if device.type == "cuda"
          else "graphed training (CPU stand-in) = eager",
          (identical or worst < 1e-5) and skipped[False] == skipped[True] == 1,
          f"{'bit-identical' if identical else 'not bit-identical'}, worst weight rel {worst:.1e}, "
          f"non-finite steps skipped {skipped[False]} (eager) and {skipped[True]} (graphed) of 1")


if __name__ == "__main__":
    main()
