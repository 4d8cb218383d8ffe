"""Algorithm 1 of Kraskov et al. (2004) written out, one sample at a time: the reference
that ``tests/test_metrics_mutual_info.py`` and ``benchmarks/ksg_throughput.py`` hold the
estimator's backends to. O(N²) in time, O(N) in memory."""

from __future__ import annotations

import numpy as np
from scipy.special import digamma


def brute_force_ksg(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """I(x; y) in nats, max-norm, strict counts, on the values as given (no standardisation)."""
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    n = len(x)
    total = 0.0
    for i in range(n):
        dx = np.abs(x - x[i]).max(axis=1)
        dy = np.abs(y - y[i]).max(axis=1)
        dz = np.maximum(dx, dy)
        dx[i] = dy[i] = dz[i] = np.inf  # exclude i itself
        eps = np.sort(dz)[k - 1]
        total += digamma(np.sum(dx < eps) + 1) + digamma(np.sum(dy < eps) + 1)
    return float(digamma(k) + digamma(n) - total / n)
