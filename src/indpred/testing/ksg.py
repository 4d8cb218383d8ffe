"""Algorithm 1 of Kraskov et al. (2004) written out, one sample at a time: the reference
that ``tests/test_metrics_mutual_info.py`` and ``benchmarks/ksg_throughput.py`` hold the
estimator's backends to. O(N²) in time, O(N) in memory."""

from __future__ import annotations

import numpy as np
from scipy.special import digamma


def brute_force_ksg(x: np.ndarray, y: np.ndarray, k: int, sequence: np.ndarray | None = None) -> float:
    """I(x; y) in nats, max-norm, strict counts, on the values as given (no standardisation).
    With ``sequence`` (N,), a sample's whole sequence is left out of its neighbourhoods and
    ψ(N) becomes the mean ψ(samples outside it + 1) (``ksg_mi_across``)."""
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    n = len(x)
    sequence = np.arange(n) if sequence is None else np.asarray(sequence)
    total = 0.0
    for i in range(n):
        dx = np.abs(x - x[i]).max(axis=1)
        dy = np.abs(y - y[i]).max(axis=1)
        dz = np.maximum(dx, dy)
        own = sequence == sequence[i]  # i itself, and its sequence's other samples
        dx[own] = dy[own] = dz[own] = np.inf
        eps = np.sort(dz)[k - 1]
        total += digamma(np.sum(dx < eps) + 1) + digamma(np.sum(dy < eps) + 1) - digamma(n - own.sum() + 1)
    return float(digamma(k) - total / n)
