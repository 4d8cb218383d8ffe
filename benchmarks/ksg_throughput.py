"""Time the KSG estimator's backends at scale and check that they give the same value.

    python benchmarks/ksg_throughput.py                  # N = 50,000 pairs of 8 + 8 units, k = 3
    python benchmarks/ksg_throughput.py -N 20000 --dims 4 --workers 1

Backends: "tree" (scipy's k-d trees, the estimator before the compiled kernel), "compiled"
(the numba brute force with a sorted-projection window), "torch" (the same brute force as
tensor operations; on a GPU when one is present). A plain numpy brute force (Algorithm 1
written out, O(N²)) is the reference on the first ``--reference`` samples. The samples are
correlated Gaussians, the worst case for the window: in 16 dimensions about half the
samples are within a neighbour's distance along the sorted coordinate. The compiled
kernel's first call on a machine compiles it (about 20 s, cached on disk); a warm-up call
on a few samples comes first and is timed apart.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from indpred.metrics import ksg_mi
from indpred.testing.ksg import brute_force_ksg


def samples(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x: (n, d) standard normal; y: (n, d) = 0.7 x + noise (about 0.4 nats per unit pair)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, 0.7 * x + rng.standard_normal((n, d))


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-N", type=int, default=50_000, help="pairs (default 50,000)")
    ap.add_argument("--dims", type=int, default=8, help="units in x and in y (default 8)")
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--workers", type=int, default=-1, help="threads (-1: all cores)")
    ap.add_argument("--reference", type=int, default=3000, help="samples for the brute-force check")
    ap.add_argument("--backends", default=None,
                    help="comma-separated; default compiled,tree, and torch where a GPU is present")
    args = ap.parse_args()

    x, y = samples(args.N, args.dims)
    print(f"N = {args.N:,}, {args.dims} + {args.dims} units, k = {args.k}, workers = {args.workers}, "
          f"torch threads = {torch.get_num_threads()}")
    _, warm = timed(lambda: ksg_mi(x[:300], y[:300], args.k, backend="compiled", workers=args.workers))
    print(f"compiled warm-up (300 samples; compiles on a machine's first call): {warm:.1f} s")

    values = {}
    chosen = args.backends or ("compiled,tree,torch" if torch.cuda.is_available() else "compiled,tree")
    for backend in ["compiled"] + [b for b in chosen.split(",") if b != "compiled"]:
        if backend == "torch" and torch.cuda.is_available():
            xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
            value, seconds = timed(lambda: ksg_mi(xt, yt, args.k))  # noqa: B023
            backend = "torch (cuda)"
        else:
            value, seconds = timed(lambda: ksg_mi(x, y, args.k, backend=backend, workers=args.workers))  # noqa: B023
        values[backend] = value
        print(f"{backend:>14}: {seconds:7.2f} s   I = {value:.12f} nats")
    first = values["compiled"]
    print("largest difference from compiled: "
          f"{max(abs(v - first) for v in values.values()):.3g} nats")

    n = min(args.reference, args.N)
    xs, ys = ((a[:n] - a[:n].mean(0)) / a[:n].std(0) for a in (x, y))  # ksg_mi standardises
    ref, seconds = timed(lambda: brute_force_ksg(xs, ys, args.k))
    got = ksg_mi(x[:n], y[:n], args.k, backend="compiled")
    print(f"brute force on {n:,} samples: {seconds:.1f} s, I = {ref:.12f}; compiled: {got:.12f} "
          f"(difference {abs(got - ref):.3g})")


if __name__ == "__main__":
    main()
