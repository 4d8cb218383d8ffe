"""Training throughput of the factored VAE in frames per second (forward, backward, Adam step).

Times full training steps on fixed random frames for a preset, optionally overriding
width, batch, sequence length and factors, and prints the median and best rates.
Usage: ``python benchmarks/train_throughput.py --preset demo --batch 16 -T 8``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from indpred.config import apply_overrides, get_preset
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--width", type=float)
    p.add_argument("--factors", type=int)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("-T", "--seq-len", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = [f"data.seq_len={args.seq_len}"]
    if args.width is not None:
        sets.append(f"model.width={args.width}")
    if args.factors is not None:
        sets.append(f"model.factors={args.factors}")
    cfg = apply_overrides(get_preset(args.preset), sets)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FactoredVAE(cfg.model).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    c = cfg.model
    frames = torch.rand(args.batch, args.seq_len, c.channels, 64, 64, device=device)
    durations = []
    for i in range(args.steps + 3):
        t0 = time.perf_counter()
        loss = -sequence_elbo(model, frames).elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            durations.append(time.perf_counter() - t0)
    n = args.batch * args.seq_len
    params = sum(x.numel() for x in model.parameters())
    print(f"preset {cfg.preset}: K={c.factors} d={c.factor_dim} width={c.width} "
          f"params={params:,} B={args.batch} T={args.seq_len} device={device} "
          f"threads={torch.get_num_threads()}")
    print(f"  median {n / statistics.median(durations):,.0f} frames/s, "
          f"best {n / min(durations):,.0f} frames/s, "
          f"median step {1000 * statistics.median(durations):.0f} ms")


if __name__ == "__main__":
    main()
