"""Training data alone: frames per second that ``indpred.train.step_batches`` delivers to a device.

Makes the Moving MNIST batches training would use (B sequences of T frames per step),
with 0 workers (in this process, as each step needs them) and with N DataLoader workers
(ahead of time), on the device and waits for them there. Two ways: ``device`` renders
the frames on the device from per-sequence draws made on the CPU (what training does on
a GPU), ``cpu`` renders them on the CPU and copies them over (pinned memory on a GPU).
Compare with the training rate of ``train_throughput.py``: the data must come faster
than the model eats it.

Usage::

    python benchmarks/data_throughput.py -B 256 -T 10 --workers 0,2,8 --modes device,cpu --device cuda
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_throughput.py

import argparse
import json
import time

import torch

from indpred.data import MovingMNIST
from indpred.train import TRAIN_STREAM_LENGTH, step_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-B", "--batch", type=int, default=32)
    p.add_argument("-T", "--seq-len", type=int, default=10)
    p.add_argument("--workers", default="0,2", help="comma-separated worker counts to try")
    p.add_argument("--modes", default="cpu", help="comma-separated: device (render there), cpu")
    p.add_argument("--steps", type=int, default=40, help="batches timed (after 5 untimed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mnist", default="embedded", help="digit source (as data.mnist)")
    p.add_argument("--json", metavar="FILE", help="append one JSON line per worker count")
    args = p.parse_args()
    device = torch.device(args.device)
    data = MovingMNIST(split="train", seq_len=args.seq_len, length=TRAIN_STREAM_LENGTH, source=args.mnist)
    print(f"Moving MNIST, B={args.batch} T={args.seq_len} ({args.batch * args.seq_len} frames/batch), "
          f"device {device}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for mode in args.modes.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            warm = 5
            batches = step_batches(data, args.batch, 0, warm + args.steps, device, workers=workers,
                                   render_on_device=mode == "device")
            for _ in range(warm):
                next(batches)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                frames = next(batches)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            batches.close()
            fps = args.steps * args.batch * args.seq_len / seconds
            assert frames.dtype == torch.float32 and frames.device.type == device.type
            print(f"  {mode:6s} {workers:2d} workers: {fps:>11,.0f} frames/s "
                  f"({1000 * seconds / args.steps:.1f} ms/batch)")
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"benchmark": "data", "mode": mode, "B": args.batch,
                                        "T": args.seq_len, "workers": workers, "device": args.device,
                                        "frames_per_s": fps, "cpus": os.cpu_count()}) + "\n")


if __name__ == "__main__":
    main()
