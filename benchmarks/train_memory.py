"""Peak memory of a training step, per frame, with and without activation checkpointing.

For each shape BxT it runs, in a fresh process, two training steps (forward, backward,
Adam) of the model at the given width and reports what the second step's peak adds
above the memory held before it (weights, gradients, Adam's moments), divided by the
step's B·T frames, and the step's wall time. That growth is the activations kept for
backward, almost all of them the image networks'.

* CPU: the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``), in a
  child process started with a fixed malloc mmap threshold so that freed blocks go
  back to the system and the resident set follows what is live.
* CUDA: ``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/train_memory.py --shapes 4x10,8x10 --checkpointing both
    python benchmarks/train_memory.py --shapes 8x100 --checkpointing on   # the long sequences
    python benchmarks/train_memory.py --device cuda --shapes 64x10,128x10 --precision bf16
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_throughput.py

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

MIB = 2**20


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def measure_one(args: argparse.Namespace, B: int, T: int, checkpointing: bool) -> dict:
    """Run in the child: two steps, the second one measured."""
    import torch

    from indpred.config import apply_overrides, get_preset
    from indpred.train import forward_backward, make_model, make_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = apply_overrides(get_preset("mmnist-2f"), [
        f"model.width={args.width}", f"train.batch_size={B}", f"data.seq_len={T}",
        f"train.precision={args.precision}", f"train.channels_last={args.channels_last}",
        f"train.activation_checkpointing={checkpointing}"])
    model = make_model(cfg, device).train()
    trainer = make_trainer(model, cfg, device)
    frames = torch.rand(B, T, cfg.model.channels, 64, 64, device=device)
    noise = torch.randn(B, T, cfg.model.factors, cfg.model.factor_dim, device=device)

    def step() -> None:
        forward_backward(trainer, frames, noise)
        trainer.optimizer.step()

    step()  # gradients and Adam's moments now exist
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024
    seconds = time.perf_counter() - t0
    return {"B": B, "T": T, "frames": B * T, "checkpointing": checkpointing, "width": args.width,
            "precision": args.precision, "device": args.device, "base_mib": base / MIB,
            "peak_mib": peak / MIB, "step_mib": (peak - base) / MIB,
            "mib_per_frame": (peak - base) / MIB / (B * T), "step_seconds": seconds,
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4x10,8x10", help="comma-separated BxT, e.g. 8x10,8x100")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (1.0: the paper's)")
    p.add_argument("--checkpointing", default="both", choices=["off", "on", "both"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="append one JSON line per measurement")
    p.add_argument("--one", nargs=3, metavar=("B", "T", "CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # the child
        B, T, ckpt = int(args.one[0]), int(args.one[1]), args.one[2] == "1"
        print(json.dumps(measure_one(args, B, T, ckpt)))
        return
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    passthrough = [a for a in sys.argv[1:]]
    print(f"width {args.width}, device {args.device}, precision {args.precision}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'B':>4} {'T':>4} {'frames':>6} {'ckpt':>5} {'base MiB':>9} {'peak MiB':>9} "
          f"{'step MiB':>9} {'MiB/frame':>9} {'step s':>7}")
    for shape in args.shapes.split(","):
        B, T = (int(v) for v in shape.lower().split("x"))
        for ckpt in modes:
            child = subprocess.run([sys.executable, __file__, *passthrough, "--one", str(B), str(T),
                                    "1" if ckpt else "0"], env=env, capture_output=True, text=True)
            if child.returncode != 0:
                print(f"{B:>4} {T:>4} failed: {child.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{B:>4} {T:>4} {B * T:>6} {'on' if ckpt else 'off':>5} {r['base_mib']:>9.0f} "
                  f"{r['peak_mib']:>9.0f} {r['step_mib']:>9.0f} {r['mib_per_frame']:>9.2f} "
                  f"{r['step_seconds']:>7.2f}")
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
