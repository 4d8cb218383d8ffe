"""Metrics as pure functions on NumPy arrays (no torch, no model code).

KSG mutual information and the same/cross-factor summaries (SPEC §3.3), lagged
correlations (§3.2), factor–object alignment and linear probes (§4), and the prior's
one-step error against motion baselines, and object tracks from each factor's layer.
"""

from indpred.metrics.alignment import alignment_score, chance_score
from indpred.metrics.correlation import block_summary, lagged_correlation
from indpred.metrics.motion import active_units, one_step_error
from indpred.metrics.mutual_info import best_partition, ksg_mi, ksg_mi_across, mi_matrix, mi_summary
from indpred.metrics.probes import identity_accuracy, probe_matrix, probe_r2
from indpred.metrics.tracking import intensity_centres, layer_weights, tracking_error

__all__ = [
    "active_units",
    "alignment_score",
    "best_partition",
    "block_summary",
    "chance_score",
    "identity_accuracy",
    "intensity_centres",
    "ksg_mi",
    "ksg_mi_across",
    "lagged_correlation",
    "layer_weights",
    "mi_matrix",
    "mi_summary",
    "one_step_error",
    "probe_matrix",
    "probe_r2",
    "tracking_error",
]
