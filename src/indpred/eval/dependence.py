"""How z_t depends on z_{t-1}: the lagged correlation (Figure 2) and the mutual information
between groups of units (Table 2), with their figures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from indpred.eval.context import EvalContext
from indpred.eval.groups import UnitGroups, regroup
from indpred.metrics import block_summary, ksg_mi_across, lagged_correlation, mi_matrix, mi_summary
from indpred.report import plot_lagged_correlation, plot_matrix

LN2 = math.log(2.0)
AUTHORS_PAIRS = 1000  # the authors' code: KSG (k = 3) over the last 1,000 (z_t, z_t+1) pairs
ACTIVE_SNR = 1.0  # a unit is active when its posterior mean varies more than its posterior noise


def correlation_metrics(ctx: EvalContext, z_t: np.ndarray, z_next: np.ndarray,
                        groups: UnitGroups) -> dict[str, Any]:
    """Pearson correlation of every unit at t with every unit at t+1, units ordered by group;
    z_t, z_next: (P, K, d) pairs."""
    D = ctx.cfg.model.z_dim
    order = groups.order
    C = lagged_correlation(z_t.reshape(len(z_t), D)[:, order], z_next.reshape(len(z_next), D)[:, order])
    ctx.figure("correlation", plot_lagged_correlation(
        C, factors=groups.count, factor_dim=groups.size, out_stem=ctx.out / "correlation",
        title=f"corr(z_t, z_t+1), {ctx.run_dir.name}"))
    return {"unit_order": order, **block_summary(C, groups.count, groups.size)}


def mutual_information_metrics(ctx: EvalContext, z_t: np.ndarray, z_next: np.ndarray,
                               groups: UnitGroups, *, k: int, partitions: int, snr: np.ndarray,
                               sequence: np.ndarray) -> dict[str, Any]:
    """The K × K matrix I(z_t^i ; z_t+1^j) (KSG, nats) and its same/cross-factor summary; for an
    entangled model the best partition's, already computed when its groups were chosen. Also
    the authors' protocol, and the reading on active units across sequences from ``snr``
    (K·d,), the units' signal-to-noise ratios, and ``sequence`` (P,), each pair's sequence."""
    partition = groups.partition
    if partition is None:
        M = mi_matrix(z_t, z_next, k=k)
        summary = mi_summary(M)
    else:
        M = np.asarray(partition["matrix"])
        summary = partition["summary"]
    labels = groups.labels
    ctx.figure("mutual_information", plot_matrix(
        M / LN2, row_labels=[f"{lab} @ t" for lab in labels],
        col_labels=[f"{lab} @ t+1" for lab in labels], out_stem=ctx.out / "mutual_information",
        title="I(z_t^i ; z_t+1^j), bits"))
    return {
        "k": k, "pairs": len(z_t), "matrix_nats": M, **summary,
        "authors": authors_reading(z_t, z_next, groups),
        "active": active_reading(z_t, z_next, groups, snr, sequence, k=k),
        "partition": None if partition is None else {
            "groups": groups.count, "size": groups.size, "units": groups.units,
            "partitions": partitions, "scores_nats": partition["scores"],
            "best_index": partition["best_index"]},
    }


def authors_reading(z_t: np.ndarray, z_next: np.ndarray, groups: UnitGroups) -> dict[str, Any]:
    """The same figures under the authors' protocol: KSG with k = 3 on the last 1,000 pairs
    (here: of the evaluation's pairs, in sequence order), cross pairs read both ways and i < j."""
    n = min(AUTHORS_PAIRS, len(z_t))
    M = mi_matrix(regroup(z_t[-n:], groups.units), regroup(z_next[-n:], groups.units), k=3)
    return {"k": 3, "pairs": n, "matrix_nats": M, **mi_summary(M)}


def unit_snr(means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Each unit's signal-to-noise ratio, Var(posterior mean) / E[posterior variance] over every
    frame: (..., K, d) means and variances → (K·d,). Near 0: the unit is the prior's noise."""
    flat_m = means.reshape(-1, means.shape[-2] * means.shape[-1])
    flat_v = variances.reshape(flat_m.shape)
    return flat_m.var(axis=0) / flat_v.mean(axis=0)


def active_reading(z_t: np.ndarray, z_next: np.ndarray, groups: UnitGroups, snr: np.ndarray,
                   sequence: np.ndarray, *, k: int) -> dict[str, Any]:
    """KSG on each group's active units only (SNR > ACTIVE_SNR), neighbours from other sequences.

    A sample of an inactive unit is the prior's noise: it carries nothing, yet in the max-norm
    every noise unit widens every neighbourhood, and KSG reads a fraction of what the active
    units hold. On precise active units a pair's nearest neighbours would be its own
    sequence's pairs, which plain KSG reads as dependence even between independent digits, so
    they are excluded (:func:`ksg_mi_across`; docs/EVALUATION.md). A group with no active
    unit reads 0."""
    _, sizes = np.unique(sequence, return_counts=True)
    if len(z_t) - sizes.max() < k:
        return {"skipped": f"too few sequences: KSG with k = {k} needs {k} pairs outside each one"}
    flat_t, flat_n = (a.reshape(len(a), -1) for a in (z_t, z_next))
    units = [[u for u in g if snr[u] > ACTIVE_SNR] for g in groups.units]
    M = np.array([[ksg_mi_across(flat_t[:, ui], flat_n[:, uj], sequence, k=k) if ui and uj else 0.0
                   for uj in units] for ui in units])
    return {"k": k, "pairs": len(z_t), "sequences": len(sizes),
            "snr_threshold": ACTIVE_SNR, "snr": snr, "units": units,
            "counts": [len(u) for u in units], "matrix_nats": M, **mi_summary(M)}
