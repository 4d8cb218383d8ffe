"""Factor–object alignment from independent generations (SPEC §4)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from indpred.errors import UserError

__all__ = ["alignment_score", "chance_score"]


def chance_score(K: int) -> float:
    """The alignment score of factors that drive every object equally: 1 / K."""
    if K < 1:
        raise ValueError(f"K must be positive, got {K}")
    return 1.0 / K


def alignment_score(delta: np.ndarray) -> dict[str, object]:
    """How one-to-one the factors drive the objects: 1.0 aligned, 1/K at chance.

    delta: (K factors, J objects), delta[k, j] >= 0 the mean absolute change of object
    j's channel when only factor k follows its posterior (the others held fixed).

    R[k, j] = delta[k, j] / sum_k' delta[k', j] is normalised **per object**: the share of
    object j's change that factor k causes, i.e. which factor drives object j. An object
    that no factor moves (a column of zeros) gets R[:, j] = 1/K. Factors are then assigned
    to objects one-to-one to maximise sum R (Hungarian, ``linear_sum_assignment``;
    min(K, J) pairs when K != J) and the score is the mean of the assigned R.

    Why per object: normalising per factor (the share of factor k's change that lands on
    each object) is misleading. A decoder that renders one object less stably makes every
    factor's change land mostly on that object's channel, so two factors that are not
    separated at all would each look "aligned" (mostly one object). Per object, that same
    case shows both factors sharing each object, a score near chance and the same dominant
    factor for both objects.

    Returns ``{"score", "chance": 1/K, "R": K x J list, "delta": K x J list,
    "assignment": [[k, j], ...], "distinct": bool, "dominant": [argmax_k R[:, j] per
    object j], "dominant_distinct": bool}``. ``distinct`` says the assigned factors differ
    between objects (always true of a one-to-one assignment; kept for reports);
    ``dominant_distinct`` is the stricter check that each object's dominant factor is a
    different factor (ties go to the lowest factor index).
    """
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim != 2 or 0 in delta.shape:
        raise ValueError(f"delta must be a non-empty (K factors, J objects) matrix, got shape {delta.shape}")
    if not np.isfinite(delta).all():
        raise UserError("delta contains NaN or inf; the generations it was measured from are broken "
                        "(check the model or the frames)")
    if (delta < 0).any():
        raise ValueError("delta must be non-negative (it is a mean absolute change)")
    K, J = delta.shape
    total = delta.sum(axis=0)  # (J,)
    R = np.full((K, J), 1.0 / K)
    moved = total > 0
    R[:, moved] = delta[:, moved] / total[moved]
    rows, cols = linear_sum_assignment(R, maximize=True)
    score = float(R[rows, cols].mean())
    dominant = [int(k) for k in R.argmax(axis=0)]
    return {
        "score": score,
        "chance": chance_score(K),
        "R": R.tolist(),
        "delta": delta.tolist(),
        "assignment": [[int(k), int(j)] for k, j in zip(rows, cols)],
        "distinct": len(set(rows.tolist())) == len(rows),
        "dominant": dominant,
        "dominant_distinct": len(set(dominant)) == J,
    }
