"""Has the prior learned the motion? Its one-step prediction error in latent space against
two baselines that need no learning: "stay put" and constant-velocity extrapolation.

Shapes: posterior means and the prior's means of them (N, T, K, d), unit masks (K, d).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ACTIVE_THRESHOLD", "active_units", "one_step_error"]

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Var_x E_q[z] > 0.01


def active_units(means: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> np.ndarray:
    """(K, d) mask of the units whose posterior mean varies across frames by more than
    ``threshold`` (variance over every frame of every sequence); means: (N, T, K, d)."""
    means = np.asarray(means, dtype=np.float64)
    return means.reshape(-1, *means.shape[2:]).var(axis=0) > threshold


def one_step_error(post_means: np.ndarray, prior_means: np.ndarray, active: np.ndarray, *,
                   first: int = 2) -> dict[str, object]:
    """Squared one-step errors on the active units, summed over frames t ≥ ``first``, of

    - the prior: its mean of z_t given the posterior means before t (``prior_means[:, t]``);
    - "stay put": z_{t-1};
    - constant velocity: 2 z_{t-1} − z_{t-2} (what a prior that learned linear motion
      of linearly encoded positions would say);

    each target being the posterior mean z_t. Returns the two ratios to "stay put" overall
    (``prior_over_stay``, ``extrapolate_over_stay``), per factor (K,) (None where a factor has
    no active unit), and the mean squared errors per active unit and frame. ``first`` = 2 gives
    both the second-order prior and the extrapolation their two previous states.
    """
    z = np.asarray(post_means, dtype=np.float64)  # (N, T, K, d)
    prior = np.asarray(prior_means, dtype=np.float64)
    if z.shape != prior.shape or z.ndim != 4 or active.shape != z.shape[2:]:
        raise ValueError(f"post_means and prior_means (N, T, K, d) with active (K, d), got "
                         f"{z.shape}, {prior.shape} and {active.shape}")
    if not 2 <= first < z.shape[1]:
        raise ValueError(f"first must be in [2, T), got {first} with T = {z.shape[1]}")
    target = z[:, first:]  # (N, S, K, d)
    errors = {
        "prior": prior[:, first:] - target,
        "stay": z[:, first - 1:-1] - target,
        "extrapolate": 2 * z[:, first - 1:-1] - z[:, first - 2:-2] - target,
    }
    per_factor = {name: (e ** 2 * active).sum(axis=(0, 1, 3)) for name, e in errors.items()}  # (K,)
    total = {name: float(v.sum()) for name, v in per_factor.items()}
    counts = active.sum(axis=1)  # (K,) active units per factor
    frames = target.shape[0] * target.shape[1]

    def ratio(a: np.ndarray, b: np.ndarray) -> list[float | None]:
        return [float(x / y) if n and y > 0 else None for x, y, n in zip(a, b, counts)]

    stay = total["stay"]
    return {
        "prior_over_stay": total["prior"] / stay if stay > 0 else None,
        "extrapolate_over_stay": total["extrapolate"] / stay if stay > 0 else None,
        "prior_over_stay_per_factor": ratio(per_factor["prior"], per_factor["stay"]),
        "extrapolate_over_stay_per_factor": ratio(per_factor["extrapolate"], per_factor["stay"]),
        "mse": {name: v / max(int(counts.sum()) * frames, 1) for name, v in total.items()},
        "active_units": counts.tolist(),
        "first_step": first,
    }
