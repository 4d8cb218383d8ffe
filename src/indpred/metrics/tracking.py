"""Unsupervised object tracks from what each factor draws, scored against ground-truth centres.

A track is the intensity-weighted centre of an image, frame by frame. Pixel coordinates are
(row, col) with pixel (i, j) at (i, j). Shapes: images (..., C, H, W) → centres (..., 2);
tracks (N, T, K, 2) against centres (N, T, J, 2).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = ["intensity_centres", "layer_weights", "tracking_error"]

WITHIN_PX = 3.0  # a track "on" its object: the 3-pixel radius


def intensity_centres(images: np.ndarray) -> np.ndarray:
    """The intensity-weighted centre (row, col) of each image (channels summed): (..., C, H, W)
    → (..., 2); NaN where an image has no weight at all. Weights must be non-negative."""
    w = np.asarray(images, dtype=np.float64).sum(axis=-3)  # (..., H, W)
    if (w < 0).any():
        raise ValueError("intensity weights must be non-negative")
    H, W = w.shape[-2:]
    total = w.sum(axis=(-2, -1))  # (...,)
    rows = (w.sum(axis=-1) * np.arange(H)).sum(axis=-1)  # (...,)
    cols = (w.sum(axis=-2) * np.arange(W)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([rows / total, cols / total], axis=-1)  # (..., 2)


def layer_weights(layers: np.ndarray) -> np.ndarray:
    """How much of a factor's own image stands out from its background: (..., C, H, W) logits
    (a per-factor generator's layers) → non-negative weights, ``sigmoid(layer)`` less each
    channel's median (most of a frame is background, so the median is its level; per channel,
    because a layer's offset can differ between channels where another factor cancels it)."""
    pixels = expit(np.asarray(layers, dtype=np.float64))
    level = np.median(pixels, axis=(-2, -1), keepdims=True)
    return np.clip(pixels - level, 0.0, None)


def tracking_error(tracks: np.ndarray, centres: np.ndarray, assignment: list[list[int]]) -> dict:
    """Distance in pixels between each factor's track and its object's centre, for the
    one-to-one ``assignment`` [[factor, object], ...] (the alignment's): mean, median and the
    fraction of frames within ``WITHIN_PX``, over all matched pairs and frames, and per pair.
    Frames where a track is undefined (a blank layer) count as misses."""
    tracks, centres = np.asarray(tracks, np.float64), np.asarray(centres, np.float64)
    ks, js = np.asarray(assignment, dtype=int).reshape(-1, 2).T
    dist = np.linalg.norm(tracks[:, :, ks] - centres[:, :, js], axis=-1)  # (N, T, pairs)
    dist = dist.reshape(-1, len(ks))  # (N·T, pairs)

    def summary(d: np.ndarray) -> dict:
        defined = np.isfinite(d)
        return {"error_px": float(d[defined].mean()) if defined.any() else None,
                "median_px": float(np.median(d[defined])) if defined.any() else None,
                "within": float((d[defined] <= WITHIN_PX).sum() / d.size)}

    pairs = [{"factor": int(k), "object": int(j), **summary(dist[:, p])}
             for p, (k, j) in enumerate(zip(ks, js))]
    return {**summary(dist), "within_px": WITHIN_PX, "undefined_frames": int((~np.isfinite(dist)).sum()),
            "pairs": pairs}
