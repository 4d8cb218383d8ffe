"""What the factors do to the scene's objects: independent generations (Figure 3), the
factor–object alignment (colour Moving MNIST) and linear probes of each object's ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indpred.eval.context import EvalContext
from indpred.eval.generations import channel_change, independent_generations
from indpred.eval.groups import UnitGroups, regroup
from indpred.eval.latents import Latents
from indpred.metrics import alignment_score, probe_matrix, probe_r2
from indpred.report import plot_matrix, save_frame_grid, save_gif

GENERATED_SEQUENCES = 64  # independent generations (and the alignment) use at most this many
PROBE_TARGETS = ["row", "col", "v_row", "v_col"]


def generations(ctx: EvalContext, lat: Latents, groups: UnitGroups) -> torch.Tensor:
    """Decode, for the first sequences, the state held at t = 1 except one group; save the
    figure (data, reconstruction, a row per group) and its GIF. Returns (G, n, T, C, H, W)."""
    n_gen = min(GENERATED_SEQUENCES, len(lat.means))
    means = torch.from_numpy(lat.means[:n_gen]).to(ctx.device)  # (n, T, K, d)
    gens = independent_generations(ctx.model, means, groups.units)  # (G, n, T, C, H, W)
    truth = ctx.data.get_batch(range(n_gen))["frames"].to(ctx.device)
    with torch.no_grad():
        recon = ctx.model.decode(means)
    rows = torch.cat([truth[:1], recon[:1], gens[:, 0]]).cpu().numpy()  # (2 + G, T, C, H, W)
    row_labels = ["data", "reconstruction", *[f"{lab} moves" for lab in groups.labels]]
    ctx.figure("generations", save_frame_grid(rows, row_labels=row_labels,
                                              out_path=ctx.out / "generations.png"))
    ctx.figure("generations_gif", save_gif(rows, out_path=ctx.out / "generations.gif"))
    return gens


def alignment_metrics(ctx: EvalContext, gens: torch.Tensor, groups: UnitGroups) -> dict[str, Any]:
    """R[k, j], the share of digit j's channel change that group k drives, and its one-to-one
    score; skipped (with the reason) where digits do not have channels of their own."""
    data = ctx.cfg.data
    if data.dataset == "video":
        return {"skipped": "real video: no ground-truth objects to align factors with"}
    if not data.colour:
        return {"skipped": "grayscale data: digits share one channel, so a "
                "factor's change cannot be attributed to a digit by channel"}
    alignment = alignment_score(channel_change(gens, data.n_digits))  # from Δ (G, J)
    digit_labels = [f"digit {j + 1} ({'RGB'[j]})" for j in range(data.n_digits)]
    ctx.figure("alignment", plot_matrix(
        np.asarray(alignment["R"]), row_labels=groups.labels, col_labels=digit_labels,
        out_stem=ctx.out / "alignment", title="R: which factor drives each digit", vmin=0, vmax=1))
    return alignment


def probe_metrics(ctx: EvalContext, lat: Latents, groups: UnitGroups) -> dict[str, Any]:
    """Held-out R² of ridge probes from each group's posterior means to each digit's position
    and velocity: averaged (groups × digits), per target, and from all units together."""
    if lat.positions is None:
        return {"skipped": "no ground-truth positions or velocities for this data"}
    mc = ctx.cfg.model
    z_all = regroup(lat.means.reshape(-1, mc.factors, mc.factor_dim), groups.units)  # (N·T, G, size)
    targets = np.concatenate([lat.positions, lat.velocities], axis=-1)  # (N, T, J, 4)
    flat_targets = targets.reshape(-1, *targets.shape[2:])  # (N·T, J, 4)
    P = probe_matrix(z_all, flat_targets, seed=ctx.seed)
    per_target = np.stack([  # (G + 1, J, 4): each group, then all units together
        probe_r2(z, flat_targets.reshape(len(z), -1), seed=ctx.seed).reshape(flat_targets.shape[1:])
        for z in [*z_all.transpose(1, 0, 2), z_all.reshape(len(z_all), -1)]])
    ctx.figure("probes", plot_matrix(
        P, row_labels=groups.labels, col_labels=[f"digit {j + 1}" for j in range(P.shape[1])],
        out_stem=ctx.out / "probes", title="probe R², position and velocity", vmin=0, vmax=1))
    return {"r2": P, "targets": list(PROBE_TARGETS), "r2_per_target": per_target[:-1],
            "r2_all_units": per_target[-1], "model": "ridge linear regression, half of the frames held out"}
