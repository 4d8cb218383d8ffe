"""Prediction: observe the first frames, roll the learned prior forward, score and show it."""

from __future__ import annotations

from typing import Any

import numpy as np

from indpred.data.factory import make_dataset
from indpred.eval.context import EvalContext
from indpred.eval.generations import predict, psnr
from indpred.report import plot_curves, save_frame_grid

PREDICTED_SEQUENCES = 64  # prediction is scored on at most this many sequences


def prediction_metrics(ctx: EvalContext, *, split: str, sequences: int, context: int, horizon: int,
                       samples: int) -> dict[str, Any]:
    """Per-step MSE and PSNR of the prior's mean rollout, of the best of ``samples`` sampled
    rollouts and of copying the last observed frame (the baseline a model without motion
    matches), after ``context`` observed frames (sequences of ``context + horizon`` frames)."""
    pred_data = make_dataset(ctx.cfg.data, split, min(sequences, PREDICTED_SEQUENCES), seed=ctx.seed,
                             seq_len=context + horizon)
    frames = pred_data.get_batch(range(len(pred_data)))["frames"].to(ctx.device)
    pred = predict(ctx.model, frames, context=context, samples=samples, generator=ctx.noise)
    copy_mse = (frames[:, context:] - frames[:, context - 1:context]).square().flatten(2).mean(-1)  # (B, h)
    metrics = {
        "context": context, "horizon": horizon, "samples": samples, "sequences": len(frames),
        "mse_mean_rollout": pred["mse_mean"].mean(0).cpu().numpy(),
        "mse_best_of_samples": pred["mse_best"].mean(0).cpu().numpy(),
        "psnr_mean_rollout": psnr(pred["mse_mean"].cpu().numpy()).mean(0),
        "psnr_best_of_samples": psnr(pred["mse_best"].cpu().numpy()).mean(0),
        "mse_copy_last": copy_mse.mean(0).cpu().numpy(),
        "psnr_copy_last": psnr(copy_mse.cpu().numpy()).mean(0),
    }
    metrics["psnr_gain_over_copy"] = metrics["psnr_mean_rollout"] - metrics["psnr_copy_last"]
    ctx.figure("prediction_curves", plot_curves(
        np.arange(1, horizon + 1), {"prior mean rollout": metrics["psnr_mean_rollout"],
                                    f"best of {samples} samples": metrics["psnr_best_of_samples"],
                                    "copy the last frame": metrics["psnr_copy_last"]},
        xlabel="steps after the last observed frame", ylabel="PSNR (dB)",
        out_stem=ctx.out / "prediction_psnr", title=f"prediction after {context} observed frames"))
    pred_rows = np.stack([frames[0, context:].cpu().numpy(), pred["mean_frames"][0].cpu().numpy()])
    ctx.figure("prediction_frames", save_frame_grid(
        pred_rows, row_labels=["truth", "prior rollout"], out_path=ctx.out / "prediction.png"))
    return metrics
