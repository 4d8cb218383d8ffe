"""What the factors know about each object's motion and identity: the prior's one-step error
in latent space against "stay put", velocity probes from the one state or the two states the
prior reads, and a digit-identity probe (Moving MNIST ground truth).

Shapes: latents (N, T, K, d), regrouped (N, T, G, size); ground truth (N, T, J, 2), labels (N, J).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indpred.eval.context import EvalContext
from indpred.eval.groups import UnitGroups, regroup
from indpred.eval.latents import Latents
from indpred.metrics import active_units, identity_accuracy, one_step_error, probe_matrix


def _grouped(z: np.ndarray, groups: UnitGroups) -> np.ndarray:
    """(N, T, K, d) → (N, T, G, size): each group's units side by side."""
    N, T = z.shape[:2]
    return regroup(z.reshape(N * T, *z.shape[2:]), groups.units).reshape(N, T, groups.count, -1)


def motion_metrics(ctx: EvalContext, lat: Latents, groups: UnitGroups) -> dict[str, Any]:
    """The prior's one-step error (always), velocity and identity probes (where the data has
    ground truth); see the module docstring."""
    means = _grouped(lat.means, groups)  # (N, T, G, size)
    T = means.shape[1]
    out: dict[str, Any] = {"order": ctx.cfg.model.transition_order}
    if T < 3:
        out["one_step"] = {"skipped": f"sequences of {T} frames; the one-step error needs 3"}
    else:
        out["one_step"] = one_step_error(means, _grouped(lat.prior_means, groups), active_units(means))
    if lat.velocities is None:
        out["velocity"] = out["identity"] = {"skipped": "no ground-truth motion or labels for this data"}
        return out
    out["velocity"] = _velocity_probes(means, lat.velocities, ctx.seed)
    out["identity"] = _identity_probe(means, lat.labels, ctx.seed)
    return out


def _velocity_probes(means: np.ndarray, velocities: np.ndarray, seed: int) -> dict[str, Any]:
    """(G, J) held-out R² of ridge probes to each digit's velocity leaving frame t (mean of the
    row and column), from z_t alone and from (z_{t-1}, z_t), over frames t = 2..T."""
    G, size = means.shape[2:]
    one = means[:, 1:].reshape(-1, G, size)  # (N·(T−1), G, size)
    two = np.concatenate([means[:, :-1], means[:, 1:]], axis=-1).reshape(-1, G, 2 * size)
    target = velocities[:, 1:].reshape(-1, *velocities.shape[2:])  # (N·(T−1), J, 2)
    r2_one = probe_matrix(one, target, seed=seed)
    r2_two = probe_matrix(two, target, seed=seed)
    return {"r2_one_state": r2_one, "r2_two_states": r2_two,
            "best_one_state": r2_one.max(axis=0), "best_two_states": r2_two.max(axis=0),
            "target": "velocity leaving frame t (row, col), R² averaged over the two"}


def _identity_probe(means: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, Any]:
    """(G + 1, J) held-out accuracy of a linear classifier from each group's state (then from
    all units) to each digit's class, sequences split in half, with each digit's chance level."""
    G, J = means.shape[2], labels.shape[1]
    features = [means[:, :, g] for g in range(G)] + [means.reshape(*means.shape[:2], -1)]
    accuracy = np.empty((G + 1, J))
    chance = np.empty(J)
    for row, f in enumerate(features):
        for j in range(J):
            accuracy[row, j], chance[j] = identity_accuracy(f, labels[:, j], seed=seed)
    return {"accuracy": accuracy[:G], "accuracy_all_units": accuracy[G], "chance": chance,
            "best": accuracy[:G].max(axis=0),
            "model": "least-squares linear classifier on one-hot labels, half of the sequences held out"}
