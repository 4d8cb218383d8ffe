"""Exact max-norm neighbour figures for the KSG estimator, compiled (numba) or in torch.

For samples (x_i, y_i), i < N, KSG needs eps_i, the max-norm distance from z_i = [x_i, y_i]
to its k-th nearest neighbour (i excluded), and the strict counts
n_x(i) = #{j != i : ||x_j - x_i||_inf < eps_i}, n_y(i) likewise. ``counts`` computes them
exactly (the same float64 subtractions and comparisons a k-d tree makes, so the same
integers) by brute force with a sorted-projection window: points are sorted by their first
x coordinate, and since ||z_j - z_i||_inf >= |x_j0 - x_i0|, the neighbour search for i
widens from i outwards through that order until the gap exceeds the k-th best distance so
far; each count scans only the window where the sorted coordinate is within eps_i (found
by bisection on the same predicate, so nothing is cut by rounding). The distance tiles are
inner loops over samples that LLVM vectorises; rows run in parallel with numba's threads.

``counts_torch`` is the same computation as blocked tensor operations, for samples that
already live on a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np
import torch

__all__ = ["counts", "counts_torch"]

TILE = 256  # samples per distance tile: a tile's buffers stay in the L1 cache
ROWS = 4  # rows computed together: each sample loaded is compared with four rows


@numba.njit(cache=True, boundscheck=False)
def _edge(key: np.ndarray, v0: float, e: float, lo: int, hi: int, upward: bool) -> int:
    """Bisection on the monotone predicate |key[j] - v0| < e over a sorted key: the boundary.

    upward: the first j in [lo, hi) above v0 whose gap is >= e (hi if none); downward: the
    first j in [lo, hi) below v0 whose gap is < e (every later one up to v0 is inside).
    """
    while lo < hi:
        mid = (lo + hi) // 2
        inside = abs(key[mid] - v0) < e
        if inside == upward:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, boundscheck=False)
def _insert(best: np.ndarray, r: int, d: float, k: int) -> None:
    """Insert d into row r of best, the sorted k+1 smallest distances so far."""
    m = k
    while m > 0 and best[r, m - 1] > d:
        best[r, m] = best[r, m - 1]
        m -= 1
    best[r, m] = d


@numba.njit(inline="always", cache=True, boundscheck=False)
def _dist4(at: np.ndarray, a0: np.ndarray, a1: np.ndarray, a2: np.ndarray, a3: np.ndarray, j: int,
           d: int) -> tuple[float, float, float, float]:
    """Max-norm distances from sample j of at: (d, N) to four rows, over d coordinates.

    Inlined where d is a compile-time constant, so the loop over coordinates unrolls.
    """
    d0 = 0.0
    d1 = 0.0
    d2 = 0.0
    d3 = 0.0
    for c in range(d):
        v = at[c, j]
        w = abs(v - a0[c])
        d0 = w if w > d0 else d0
        w = abs(v - a1[c])
        d1 = w if w > d1 else d1
        w = abs(v - a2[c])
        d2 = w if w > d2 else d2
        w = abs(v - a3[c])
        d3 = w if w > d3 else d3
    return d0, d1, d2, d3


# The kernels below are built per number of coordinates, compiled with it fixed: with
# constant dimensions LLVM unrolls the loop over coordinates and vectorises the loop over
# samples, several times faster than a loop with a run-time bound. Cached per process
# (and by numba on disk), so x and y of the same width share one count kernel.


@functools.cache
def _eps_kernel(dx: int, dy: int) -> Callable:
    """The k-th nearest joint distance kernel for dx + dy coordinates."""

    @numba.njit(parallel=True, cache=True, boundscheck=False)
    def eps(xs, ys, k):
        """k-th nearest joint distance (self excluded) of every sample; xs sorted by xs[:, 0].

        Rows go ROWS at a time (the last block repeats its last row). The k+1 smallest
        distances over all j, self (0) included, end at the k-th smallest over j != i.
        """
        n = xs.shape[0]
        xt = np.ascontiguousarray(xs.T)
        yt = np.ascontiguousarray(ys.T)
        key = xt[0]
        out = np.empty(n)
        blocks = (n + ROWS - 1) // ROWS
        for b in numba.prange(blocks):
            rows = np.minimum(np.arange(b * ROWS, b * ROWS + ROWS), n - 1)
            x0, x1, x2, x3 = xs[rows[0]], xs[rows[1]], xs[rows[2]], xs[rows[3]]
            y0, y1, y2, y3 = ys[rows[0]], ys[rows[1]], ys[rows[2]], ys[rows[3]]
            keys = np.array([x0[0], x1[0], x2[0], x3[0]])
            best = np.full((ROWS, k + 1), np.inf)
            acc = np.empty((ROWS, TILE))
            thr = np.full(ROWS, np.inf)
            lo = max(0, min(rows[0] - TILE // 2, n - TILE))
            hi = lo
            first = True
            while True:
                if first:
                    j0, j1 = lo, min(n, lo + TILE)
                    hi = j1
                    first = False
                else:
                    up = False
                    down = False
                    for r in range(ROWS):
                        if hi < n and key[hi] - keys[r] < thr[r]:
                            up = True
                        if lo > 0 and keys[r] - key[lo - 1] < thr[r]:
                            down = True
                    if up:
                        j0, j1 = hi, min(n, hi + TILE)
                        hi = j1
                    elif down:
                        j0, j1 = max(0, lo - TILE), lo
                        lo = j0
                    else:
                        break
                for j in range(j0, j1):
                    a0, a1, a2, a3 = _dist4(xt, x0, x1, x2, x3, j, dx)
                    b0, b1, b2, b3 = _dist4(yt, y0, y1, y2, y3, j, dy)
                    acc[0, j - j0] = a0 if a0 > b0 else b0
                    acc[1, j - j0] = a1 if a1 > b1 else b1
                    acc[2, j - j0] = a2 if a2 > b2 else b2
                    acc[3, j - j0] = a3 if a3 > b3 else b3
                for r in range(ROWS):
                    t = thr[r]
                    for jj in range(j1 - j0):
                        if acc[r, jj] < t:
                            _insert(best, r, acc[r, jj], k)
                            t = best[r, k]
                    thr[r] = t
            for r in range(ROWS):
                out[rows[r]] = best[r, k]
        return out

    return eps


@functools.cache
def _count_kernel(d: int) -> Callable:
    """The strict count kernel for d coordinates."""

    @numba.njit(parallel=True, cache=True, boundscheck=False)
    def count(a, e):
        """#{j != i : ||a_j - a_i||_inf < e_i} for every i; a sorted by a[:, 0]."""
        n = a.shape[0]
        at = np.ascontiguousarray(a.T)
        key = at[0]
        out = np.zeros(n, np.int64)
        blocks = (n + ROWS - 1) // ROWS
        for b in numba.prange(blocks):
            rows = np.minimum(np.arange(b * ROWS, b * ROWS + ROWS), n - 1)
            a0, a1, a2, a3 = a[rows[0]], a[rows[1]], a[rows[2]], a[rows[3]]
            e0, e1, e2, e3 = e[rows[0]], e[rows[1]], e[rows[2]], e[rows[3]]
            lo = n
            hi = 0
            for r in range(ROWS):
                i = rows[r]
                if e[i] > 0:
                    lo = min(lo, _edge(key, key[i], e[i], 0, i, False))
                    hi = max(hi, _edge(key, key[i], e[i], i, n, True))
            c0 = 0
            c1 = 0
            c2 = 0
            c3 = 0
            for j in range(lo, hi):
                d0, d1, d2, d3 = _dist4(at, a0, a1, a2, a3, j, d)
                c0 += d0 < e0
                c1 += d1 < e1
                c2 += d2 < e2
                c3 += d3 < e3
            # i itself is at distance 0 < e_i; where e_i = 0 nobody is at distance < 0
            counts = (c0, c1, c2, c3)
            for r in range(ROWS):
                i = rows[r]
                out[i] = counts[r] - 1 if e[i] > 0 else 0
        return out

    return count


def counts(x: np.ndarray, y: np.ndarray, k: int, workers: int = 1
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eps, n_x, n_y) for float64 x: (N, dx), y: (N, dy), on ``workers`` threads (-1: all)."""
    most = numba.config.NUMBA_NUM_THREADS
    threads = most if workers < 1 else min(workers, most)
    eps_kernel = _eps_kernel(x.shape[1], y.shape[1])
    count_x, count_y = _count_kernel(x.shape[1]), _count_kernel(y.shape[1])
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        order = np.argsort(x[:, 0], kind="stable")
        xs, ys = np.ascontiguousarray(x[order]), np.ascontiguousarray(y[order])
        eps_sorted = eps_kernel(xs, ys, k)
        n_x_sorted = count_x(xs, eps_sorted)
        order_y = np.argsort(ys[:, 0], kind="stable")
        n_y_sorted = np.empty_like(n_x_sorted)
        n_y_sorted[order_y] = count_y(np.ascontiguousarray(ys[order_y]), eps_sorted[order_y])
    finally:
        numba.set_num_threads(previous)
    eps, n_x, n_y = np.empty_like(eps_sorted), np.empty_like(n_x_sorted), np.empty_like(n_y_sorted)
    eps[order], n_x[order], n_y[order] = eps_sorted, n_x_sorted, n_y_sorted
    return eps, n_x, n_y


def counts_torch(x: torch.Tensor, y: torch.Tensor, k: int, block: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eps, n_x, n_y) as ``counts``, by blocked brute force in float64 on x's device.

    x: (N, dx), y: (N, dy). Each block of ``block`` rows holds (block, N) distance
    matrices: a few hundred MB at N = 50,000, so lower ``block`` on a small device.
    """
    x, y = x.to(torch.float64), y.to(torch.float64)
    n = x.shape[0]
    eps = torch.empty(n, dtype=torch.float64, device=x.device)
    n_x = torch.empty(n, dtype=torch.int64, device=x.device)
    n_y = torch.empty(n, dtype=torch.int64, device=x.device)
    for s in range(0, n, block):
        d_x = _block_max_dist(x[s:s + block], x)  # (b, N)
        d_y = _block_max_dist(y[s:s + block], y)  # (b, N)
        e = torch.maximum(d_x, d_y).topk(k + 1, dim=1, largest=False).values[:, k]  # (b,)
        inside = e > 0
        n_x[s:s + block] = torch.where(inside, (d_x < e[:, None]).sum(1) - 1, 0)
        n_y[s:s + block] = torch.where(inside, (d_y < e[:, None]).sum(1) - 1, 0)
        eps[s:s + block] = e
    return eps, n_x, n_y


def _block_max_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(m, N) max-norm distances between a: (m, d) and b: (N, d), one coordinate at a time."""
    out = (a[:, None, 0] - b[None, :, 0]).abs()
    for c in range(1, a.shape[1]):
        out = torch.maximum(out, (a[:, None, c] - b[None, :, c]).abs())
    return out
