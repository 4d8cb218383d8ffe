"""Metrics as pure functions on NumPy arrays (no torch, no model code).

KSG mutual information and the same/cross-factor summaries (SPEC §3.3), lagged
correlations (§3.2), factor–object alignment and linear probes (§4).
"""

from indpred.metrics.alignment import alignment_score, chance_score
from indpred.metrics.correlation import block_summary, lagged_correlation
from indpred.metrics.mutual_info import best_partition, ksg_mi, mi_matrix, mi_summary
from indpred.metrics.probes import probe_matrix, probe_r2

__all__ = [
    "alignment_score",
    "best_partition",
    "block_summary",
    "chance_score",
    "ksg_mi",
    "lagged_correlation",
    "mi_matrix",
    "mi_summary",
    "probe_matrix",
    "probe_r2",
]
