"""What each factor draws (a per-factor generator's layers) and the object tracks read off them.

With ``model.decoder=per-factor`` every factor renders its own layer ``g_k(z^k)`` and the
frame is ``sigmoid`` of their sum. A factor's track is the intensity-weighted centre of its
layer's excess over its background (:func:`indpred.metrics.layer_weights`); on colour
Moving MNIST it is compared with each digit's centre (the intensity-weighted centre of its
channel in the data) after the alignment's one-to-one matching: unsupervised tracking.

Shapes: means (n, T, K, d); layers (n, T, K, C, H, W); tracks (n, T, K, 2); centres (n, T, J, 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.special import expit

from indpred.eval.context import EvalContext
from indpred.eval.latents import Latents
from indpred.eval.objects import GENERATED_SEQUENCES
from indpred.metrics import intensity_centres, layer_weights, tracking_error
from indpred.report import save_frame_grid, save_gif


def layer_metrics(ctx: EvalContext, lat: Latents, alignment: dict[str, Any]) -> dict[str, Any]:
    """The "what each factor draws" strip (data, then each factor's layer) and, where the data
    has a channel per digit, the tracking error of each factor against its matched digit."""
    mc, data = ctx.cfg.model, ctx.cfg.data
    if mc.decoder != "per-factor":
        return {"skipped": "the shared generator mixes the factors from its first layer, so no image "
                "belongs to one factor"}
    if mc.factors < 2:
        return {"skipped": "one factor: its layer is the whole frame"}
    n = min(GENERATED_SEQUENCES, len(lat.means))
    means = torch.from_numpy(lat.means[:n]).to(ctx.device)  # (n, T, K, d)
    with torch.no_grad():
        layers = ctx.model.layers(means).cpu().numpy()  # (n, T, K, C, H, W) logits
    truth = ctx.data.get_batch(range(n))["frames"].numpy()  # (n, T, C, H, W)
    drawn = expit(layers)  # (n, T, K, C, H, W): each factor's layer as an image
    rows = np.concatenate([truth[:1], drawn[0].transpose(1, 0, 2, 3, 4)])  # (1 + K, T, C, H, W)
    labels = ["data", *[f"factor {k + 1} draws" for k in range(mc.factors)]]
    ctx.figure("layers", save_frame_grid(rows, row_labels=labels, out_path=ctx.out / "layers.png"))
    ctx.figure("layers_gif", save_gif(rows, out_path=ctx.out / "layers.gif"))
    tracks = intensity_centres(layer_weights(layers))  # (n, T, K, 2)
    out: dict[str, Any] = {"sequences": n, "track": "intensity-weighted centre of sigmoid(layer) less "
                           "each channel's median, (row, col) in pixels"}
    if data.dataset != "mmnist" or not data.colour or "assignment" not in alignment:
        out["tracking"] = {"skipped": "no ground-truth object channels to track against"}
        return out
    centres = intensity_centres(truth[:, :, :data.n_digits, None])  # (n, T, J, 2), one channel each
    out["tracking"] = tracking_error(tracks, centres, alignment["assignment"])
    return out
