"""Training throughput in frames per second (forward, backward, Adam step), beside two references.

For each width (the paper's and the demo's) it times, round by round and interleaved,
on the same frames and noise:

* ``model``: the training step of ``indpred.train`` (``make_trainer`` + ``forward_backward``
  + the optimiser step), vectorised over frames, time and factors, executing as the
  flags say (precision, channels-last, compilation, activation checkpointing);
* ``floor``: the encoder and the generator alone, forward and backward, executing the
  same way: what no implementation of the model can beat;
* ``step-host``, ``step-device`` and ``graphed`` (ask for them with ``--variants``): the
  training loop's whole step, with the figures read back and the update decided on the host
  every step (as before issue 18), on the device (as now: ``indpred.train.update``), and
  that step captured once as a CUDA graph and replayed (``train.cuda_graphs``,
  ``indpred.train.graphs``; on a CPU its stand-in, which records nothing);
* ``naive``: the same model computed naively (``indpred.testing.naive``: image networks
  once per time step, a Python loop over factors; float32, eager), with its Adam step;

and prints the median frames/s of each and the ratios model/floor and model/naive
(ratios of the medians, and the median of the per-round ratios, which is steadier on
a busy machine). A frame is one of the B·T frames of a step.

Usage::

    python benchmarks/train_throughput.py                        # both widths, presets' B and T
    python benchmarks/train_throughput.py --widths demo -B 16 -T 8 --rounds 10
    python benchmarks/train_throughput.py --device cuda -B 256 --precision bf16 --channels-last
    python benchmarks/train_throughput.py --widths demo --image-size 32 --variants model,floor

Unless ``OMP_WAIT_POLICY`` is set already, it is set to ``PASSIVE`` before torch loads:
on a machine where another process competes for the cores, OpenMP's spinning threads
slow every small operation by orders of magnitude (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import math
import statistics
import time
from collections.abc import Callable

import torch

from indpred.config import RunConfig, apply_overrides, get_preset
from indpred.distributed import SINGLE
from indpred.model import snapshot_buffers
from indpred.testing.naive import naive_sequence_elbo
from indpred.train import forward_backward, make_model, make_trainer
from indpred.train.graphs import CudaCapture, EagerCapture, StepGraph
from indpred.train.loop import pack_figures, update
from machine import cpu_model  # benchmarks/machine.py (scripts run from this folder)

WIDTHS = {"paper": "mmnist-2f", "demo": "demo"}  # width name -> the preset it comes from



def configure(args: argparse.Namespace, width: str) -> RunConfig:
    """The preset of ``width`` with the command line's B, T, K, d and execution options."""
    cfg = get_preset(WIDTHS[width])
    sets = [f"train.precision={args.precision}", f"train.channels_last={args.channels_last}",
            f"train.compile={args.compile}", f"train.activation_checkpointing={args.checkpointing}",
            f"train.device={args.device}"]
    for key, value in (("train.batch_size", args.batch), ("data.seq_len", args.seq_len),
                       ("model.factors", args.factors), ("model.factor_dim", args.factor_dim),
                       ("data.image_size", args.image_size)):
        if value is not None:
            sets.append(f"{key}={value}")
    return apply_overrides(cfg, sets)


def variants(cfg: RunConfig, device: torch.device, names: list[str]) -> dict[str, Callable[[], None]]:
    """One training step of each variant, as a function of nothing (frames and noise fixed)."""
    tc, mc = cfg.train, cfg.model
    B, T = tc.batch_size, cfg.data.seq_len
    gen = torch.Generator(device=device).manual_seed(0)
    S = mc.image_size
    frames = torch.rand(B, T, mc.channels, S, S, device=device, generator=gen)
    noise = torch.randn(B, T, mc.factors, mc.factor_dim, device=device, generator=gen)
    steps: dict[str, Callable[[], None]] = {}
    model = make_model(cfg, device).train()
    if "model" in names:
        trainer = make_trainer(model, cfg, device)

        def model_step() -> None:
            forward_backward(trainer, frames, noise)
            trainer.optimizer.step()

        steps["model"] = model_step
    if "step-host" in names or "step-device" in names or "graphed" in names:
        # The loop's whole step as it was (figures read back every step, the NaN check and the
        # update decided on the host), as it is (all on the device, read at sync points), and
        # as one CUDA graph (train.cuda_graphs; on a CPU its stand-in, which records nothing).
        for name in ("step-host", "step-device", "graphed"):
            if name not in names:
                continue
            loop_model = copy.deepcopy(model)
            loop_trainer = make_trainer(loop_model, cfg, device)
            if name == "graphed":
                if tc.compile != "off":
                    raise SystemExit("train_throughput: the graphed variant makes its own CUDA graph; "
                                     "drop --compile for it (as train.cuda_graphs refuses train.compile)")
                capture = CudaCapture if device.type == "cuda" else EagerCapture
                graph = StepGraph(lambda static, t=loop_trainer: update(t, static["frames"], static["noise"]),
                                  device, capture=capture)

                def graphed_step(graph=graph) -> None:
                    graph(tc.lr, frames=frames, noise=noise)

                steps[name] = graphed_step
                continue

            def loop_step(trainer=loop_trainer, net=loop_model, on_device=name == "step-device") -> None:
                if on_device:
                    update(trainer, frames, noise)
                    return
                snapshot_buffers(net)  # as the old step did, to restore after a bad step
                loss, terms = forward_backward(trainer, frames, noise)
                norm = torch.nn.utils.clip_grad_norm_(net.parameters(), math.inf)
                values = pack_figures(loss, norm, terms, SINGLE).tolist()  # the old step: one transfer,
                if math.isfinite(values[0]) and math.isfinite(values[1]):  # then decided on the host
                    trainer.optimizer.step()

            steps[name] = loop_step
    if "floor" in names:
        floor_model = copy.deepcopy(model)
        z = torch.randn(B, T, mc.factors, mc.factor_dim, device=device, generator=gen, requires_grad=True)

        def floor_loss() -> torch.Tensor:
            features = floor_model.encode_frames(frames)  # (B, T, enc_dim)
            x_mean = floor_model.decode(z)  # (B, T, C, H, W)
            return features.square().mean() + (x_mean - frames).square().mean()

        loss_fn = floor_loss if tc.compile == "off" else torch.compile(
            floor_loss, mode=None if tc.compile == "default" else tc.compile)

        graphs = tc.compile in ("reduce-overhead", "max-autotune")

        def floor_step() -> None:
            floor_model.zero_grad(set_to_none=True)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            loss_fn().backward()

        steps["floor"] = floor_step
    if "naive" in names:
        naive_model = copy.deepcopy(model)
        naive_opt = torch.optim.Adam(naive_model.parameters(), lr=tc.lr)

        def naive_step() -> None:
            loss = -naive_sequence_elbo(naive_model, frames, noise=noise).elbo.mean()
            naive_opt.zero_grad(set_to_none=True)
            loss.backward()
            naive_opt.step()

        steps["naive"] = naive_step
    return steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(steps: dict[str, Callable[[], None]], device: torch.device, *, rounds: int, warmup: int,
            per_round: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, one entry per round; variants take turns within a round."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                steps[name]()
            sync(device)
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) / per_round)
    return times


def report(width: str, cfg: RunConfig, times: dict[str, list[float]], args: argparse.Namespace) -> dict:
    B, T = cfg.train.batch_size, cfg.data.seq_len
    frames = B * T
    rows = {}
    for name, ts in times.items():
        rows[name] = {"median_fps": frames / statistics.median(ts), "best_fps": frames / min(ts),
                      "median_ms": 1000 * statistics.median(ts)}
    ratios = {}
    for name, ref in (("model", "floor"), ("model", "naive"), ("step-device", "floor"), ("graphed", "floor"),
                      ("graphed", "step-device")):
        if name in times and ref in times:
            per_round = [r / m for m, r in zip(times[name], times[ref])]  # (1/m)/(1/r)
            ratios[f"{name}/{ref}"] = {"of_medians": rows[name]["median_fps"] / rows[ref]["median_fps"],
                                       "median_per_round": statistics.median(per_round)}
    m = cfg.model
    print(f"\n{width} widths (width {m.width}): {m.image_size} px K={m.factors} d={m.factor_dim} B={B} T={T} "
          f"({frames} frames/step) device={args.device} precision={args.precision} "
          f"channels_last={args.channels_last} compile={args.compile} "
          f"checkpointing={args.checkpointing} threads={torch.get_num_threads()}")
    for name, row in rows.items():
        print(f"  {name:11s} {row['median_fps']:>11,.0f} frames/s median  {row['best_fps']:>11,.0f} best  "
              f"{row['median_ms']:9.1f} ms/step")
    for key, r in ratios.items():
        print(f"  {key:19s} {r['of_medians']:.3f} (ratio of medians), {r['median_per_round']:.3f} "
              "(median of per-round ratios)")
    return {"width": width, "width_multiplier": m.width, "image_size": m.image_size, "K": m.factors,
            "d": m.factor_dim, "B": B,
            "T": T, "device": args.device, "precision": args.precision,
            "channels_last": args.channels_last, "compile": args.compile,
            "checkpointing": args.checkpointing, "threads": torch.get_num_threads(),
            "rounds": len(next(iter(times.values()))), "variants": rows, "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="paper,demo", help="comma-separated: paper (1.0), demo (0.25)")
    p.add_argument("-B", "--batch", type=int, help="sequences per step (default: the preset's)")
    p.add_argument("-T", "--seq-len", type=int, help="frames per sequence (default: the preset's)")
    p.add_argument("-K", "--factors", type=int, help="factors (default: the preset's, 2)")
    p.add_argument("--factor-dim", type=int, help="units per factor (default: the preset's)")
    p.add_argument("--image-size", type=int, help="frame side: 32, 64 (the default) or 128")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", default="off",
                   choices=["off", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--variants", default="model,floor,naive")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (after the warm-up ones)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--steps-per-round", type=int,
                   help="steps of a variant timed together (default: 1 on CPU, 10 on CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", metavar="FILE", help="append one JSON line per width to FILE")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    per_round = args.steps_per_round or (10 if device.type == "cuda" else 1)
    names = [n for n in args.variants.split(",") if n]
    cpu = cpu_model()
    if device.type == "cuda":
        cpu = torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, {cpu}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for width in args.widths.split(","):
        cfg = configure(args, width)
        steps = variants(cfg, device, names)
        times = measure(steps, device, rounds=args.rounds, warmup=args.warmup, per_round=per_round)
        result = report(width, cfg, times, args)
        result["load_average_after"] = os.getloadavg()[0]
        result["torch"] = torch.__version__
        result["processor"] = cpu
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
        del steps
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
