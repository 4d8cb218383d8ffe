"""Moving MNIST generation speed in frames per second, on this machine's CPU.

Times ``MovingMNIST.get_batch`` for colour/grayscale x standard/integer kinematics,
then iteration through a DataLoader (``__getitem__`` + default collate) with 0 and
2 workers. Usage: ``PYTHONPATH=src python benchmarks/generation_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader

from indpred.data import MovingMNIST
from machine import cpu_model  # benchmarks/machine.py (scripts run from this folder)


def rates(frames_per_batch: int, durations: list[float]) -> tuple[float, float]:
    """(median, best) frames per second from per-batch durations; the median resists
    other processes stealing the CPU for a while, the best shows the uncontended speed."""
    return frames_per_batch / statistics.median(durations), frames_per_batch / min(durations)


def time_batches(ds: MovingMNIST, batch: int, seconds: float) -> tuple[float, float]:
    """Frames per second (median, best) of ``ds.get_batch`` on consecutive index blocks."""
    ds.get_batch(range(batch))  # warm-up
    durations: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        first = (len(durations) * batch) % (len(ds) - batch)
        start = time.perf_counter()
        ds.get_batch(range(first, first + batch))
        durations.append(time.perf_counter() - start)
    return rates(batch * ds.seq_len, durations)


def time_loader(ds: MovingMNIST, batch: int, workers: int, seconds: float) -> tuple[float, float]:
    """Frames per second (median, overall) of a DataLoader over ``ds``, batch to batch.

    With workers, prefetched batches arrive back to back, so the overall rate (all
    frames over all time) replaces the best. The first batch, which pays for starting
    the workers, is not counted.
    """
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    durations: list[float] = []
    end = None
    last = time.perf_counter()
    for _ in loader:
        now = time.perf_counter()
        if end is None:
            end = now + seconds
        else:
            durations.append(now - last)
        last = now
        if now >= end:
            break
    median, _ = rates(batch * ds.seq_len, durations)
    return median, batch * ds.seq_len * len(durations) / sum(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="sequences per batch")
    parser.add_argument("--seq-len", "-T", type=int, default=10, help="frames per sequence")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--source", default="embedded", help="MNIST source (see load_digits)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"cpu: {cpu_model()}, nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    print(f"torch {torch.__version__}, batch {args.batch}, T {args.seq_len}, 64x64, 2 digits")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes skew the figures)")
    print(f"{'frames/s':36s} {'median':>9s} {'best':>9s}")
    common = {"seq_len": args.seq_len, "source": args.source, "length": 100_000}
    for colour in (True, False):
        for kinematics in ("standard", "integer"):
            ds = MovingMNIST(colour=colour, kinematics=kinematics, **common)
            median, best = time_batches(ds, args.batch, args.seconds)
            mode = "colour   " if colour else "grayscale"
            print(f"get_batch {mode} {kinematics:8s}      {median:9,.0f} {best:9,.0f}")
    print(f"{'frames/s':36s} {'median':>9s} {'overall':>9s}")
    ds = MovingMNIST(**common)
    for workers in (0, 2):
        median, overall = time_loader(ds, args.batch, workers, args.seconds)
        print(f"DataLoader colour standard workers={workers}  {median:9,.0f} {overall:9,.0f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
