"""Lagged Pearson correlations between every unit at t and every unit at t+1 (SPEC §3.2)."""

from __future__ import annotations

import numpy as np

__all__ = ["block_summary", "lagged_correlation"]


def lagged_correlation(z_t: np.ndarray, z_next: np.ndarray) -> np.ndarray:
    """D x D Pearson correlations C[a, b] = corr(z_t[:, a], z_next[:, b]).

    z_t, z_next: (N, D) paired samples of the D latent units at t and t+1. Each column
    is standardised (population standard deviation) and the matrix is one product,
    C = zs_t^T zs_next / N, clipped to [-1, 1] against rounding.

    A constant column has no correlation: its row (in z_t) or column (in z_next) of C
    is NaN, silently (no runtime warnings). Use NaN-aware reductions downstream, such as
    :func:`block_summary`.
    """
    z_t = np.asarray(z_t, dtype=np.float64)
    z_next = np.asarray(z_next, dtype=np.float64)
    if z_t.ndim != 2 or z_next.ndim != 2 or z_t.shape[0] != z_next.shape[0]:
        raise ValueError(f"z_t and z_next must be (N, D) with the same N, got {z_t.shape} and {z_next.shape}")
    if z_t.shape[0] < 2:
        raise ValueError(f"correlations need at least 2 samples, got {z_t.shape[0]}")

    def standardise(a: np.ndarray) -> np.ndarray:
        centred = a - a.mean(axis=0)
        std = np.sqrt(np.mean(centred**2, axis=0))
        std = np.where(std > 0, std, np.nan)  # constant column -> NaN, not inf
        return centred / std

    with np.errstate(invalid="ignore", divide="ignore"):
        C = standardise(z_t).T @ standardise(z_next) / z_t.shape[0]  # (D, D)
        return np.clip(C, -1.0, 1.0)


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def block_summary(C: np.ndarray, factors: int, d: int) -> dict[str, float | int | None]:
    """Mean |correlation| inside the diagonal factor blocks and outside them.

    C: (D, D) with D = factors * d, units ordered factor by factor (units k*d .. k*d+d-1
    belong to factor k). A block is "diagonal" when row and column units belong to the
    same factor. NaN entries (constant units) are left out of the means.

    Returns ``{"within": mean |C| in diagonal blocks, "between": mean |C| off them (None
    for one factor), "within_minus_between", "nan_entries": count of NaN entries}``.
    """
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape != (factors * d, factors * d):
        raise ValueError(f"C must be ({factors * d}, {factors * d}) for {factors} factors of {d} units, "
                         f"got {C.shape}")
    owner = np.arange(factors * d) // d
    same = owner[:, None] == owner[None, :]
    absC = np.abs(C)
    within = _finite_mean(absC[same])
    between = _finite_mean(absC[~same]) if factors > 1 else None
    return {
        "within": within,
        "between": between,
        "within_minus_between": None if between is None else within - between,
        "nan_entries": int(np.isnan(C).sum()),
    }
