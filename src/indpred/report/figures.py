"""Figures from evaluation arrays: heatmaps, curves, frame grids and GIFs.

Everything here takes NumPy arrays (or anything ``np.asarray`` accepts) and writes
files; nothing knows about the model. Matplotlib is driven through
:class:`matplotlib.figure.Figure` directly (never ``pyplot``), so no display, no
global backend switch and no figure registry are involved. Plot functions write
``out_stem + ".png"`` and ``out_stem + ".svg"`` and return both paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw, ImageFont

PathLike = str | os.PathLike[str]

SEPARATOR = 2  # px of white between (and around) frames in grids and GIFs
LABEL_PAD = 4  # px of white either side of a row label
PNG_DPI = 120
NAN_COLOUR = "#9e9e9e"


# --------------------------------------------------------------------------- matplotlib plots

def _save(fig: Figure, out_stem: PathLike) -> list[Path]:
    """Write ``fig`` as PNG and SVG next to each other; reproducible bytes (no dates, fixed ids)."""
    stem = str(out_stem)
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    png, svg = Path(stem + ".png"), Path(stem + ".svg")
    with matplotlib.rc_context({"svg.hashsalt": "indpred"}):
        fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None})
    return [png, svg]


def plot_lagged_correlation(
    C: np.ndarray,
    *,
    factors: int,
    factor_dim: int,
    out_stem: PathLike,
    title: str = "Lagged correlation corr($z_t$, $z_{t+1}$)",
    factor_labels: Sequence[str] | None = None,
) -> list[Path]:
    """Heatmap of a (D, D) lagged correlation matrix, D = factors * factor_dim.

    Row i, column j is corr(z_t[i], z_{t+1}[j]). The diverging colour scale is fixed
    to [-1, 1] so figures of different models compare; NaN (a constant unit) is grey.
    Diagonal factor blocks are outlined and thin lines separate factors, so "strong
    diagonal blocks, weak off-diagonal blocks" can be read at a glance (SPEC §3.2).
    """
    C = np.asarray(C, dtype=np.float64)
    D = factors * factor_dim
    if C.shape != (D, D):
        raise ValueError(f"C has shape {C.shape}, expected ({D}, {D}) for {factors} x {factor_dim}")
    labels = list(factor_labels) if factor_labels is not None else [f"f{k}" for k in range(factors)]
    if len(labels) != factors:
        raise ValueError(f"{len(labels)} factor labels for {factors} factors")

    side = float(np.clip(3.0 + 0.12 * D, 4.0, 11.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=NAN_COLOUR)
    im = ax.imshow(np.ma.masked_invalid(C), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.set_label("Pearson r")

    for k in range(1, factors):  # lines between factors
        edge = k * factor_dim - 0.5
        ax.axhline(edge, color="0.25", lw=0.8)
        ax.axvline(edge, color="0.25", lw=0.8)
    for k in range(factors):  # the same-factor blocks
        corner = k * factor_dim - 0.5
        ax.add_patch(Rectangle((corner, corner), factor_dim, factor_dim,
                               fill=False, edgecolor="black", lw=2.0))

    centres = [k * factor_dim + (factor_dim - 1) / 2 for k in range(factors)]
    ax.set_xticks(centres, labels)
    ax.set_yticks(centres, labels)
    ax.set_xticks(np.arange(D), minor=True)
    ax.set_yticks(np.arange(D), minor=True)
    ax.tick_params(which="minor", length=2)
    ax.tick_params(which="major", length=0)
    ax.set_xlabel("$z_{t+1}$ unit")
    ax.set_ylabel("$z_t$ unit")
    ax.set_title(title)
    return _save(fig, out_stem)


def plot_matrix(
    M: np.ndarray,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    out_stem: PathLike,
    title: str,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = ".2f",
) -> list[Path]:
    """Annotated heatmap of a small (R, C) matrix: MI, alignment R and Δ, probe R².

    Each cell shows its value formatted with ``fmt`` in black or white, whichever
    reads better on the cell's colour. NaN cells are grey and say "nan". The colour
    range defaults to the finite values' min and max.
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2:
        raise ValueError(f"M must be 2-D, got shape {M.shape}")
    n_rows, n_cols = M.shape
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise ValueError(f"labels ({len(row_labels)}, {len(col_labels)}) do not match M {M.shape}")
    finite = M[np.isfinite(M)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:  # a constant matrix still needs a non-empty range
        hi = lo + 1.0
    norm = Normalize(vmin=lo, vmax=hi)
    colours = matplotlib.colormaps[cmap].with_extremes(bad=NAN_COLOUR)

    width = float(np.clip(2.4 + 0.75 * n_cols, 3.5, 14.0))
    height = float(np.clip(1.6 + 0.55 * n_rows, 2.5, 12.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(M), cmap=colours, norm=norm, aspect="auto",
                   interpolation="nearest")
    fig.colorbar(im, ax=ax)
    fontsize = float(np.clip(70.0 / max(n_rows, n_cols, 1), 6.0, 10.0))
    for i in range(n_rows):
        for j in range(n_cols):
            v = M[i, j]
            if np.isfinite(v):
                r, g, b, _ = colours(norm(v))
                ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                text = format(v, fmt)
            else:
                ink, text = "black", "nan"
            ax.text(j, i, text, ha="center", va="center", color=ink, fontsize=fontsize)
    ax.set_xticks(np.arange(n_cols), list(col_labels))
    ax.set_yticks(np.arange(n_rows), list(row_labels))
    ax.tick_params(length=0)
    ax.set_title(title)
    return _save(fig, out_stem)


def plot_curves(
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    *,
    xlabel: str,
    ylabel: str,
    out_stem: PathLike,
    title: str,
) -> list[Path]:
    """Line plot of named curves over a shared x of shape (S,), each curve (S,).

    E.g. per-step prediction MSE or PSNR for the mean rollout and best-of-N.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}")
    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    marker = "o" if x.size <= 30 else None
    for name, y in curves.items():
        y = np.asarray(y, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"curve {name!r} has shape {y.shape}, x has {x.shape}")
        ax.plot(x, y, marker=marker, markersize=3.5, lw=1.6, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    return _save(fig, out_stem)


# --------------------------------------------------------------------------- frames

def frames_to_rgb(frames: np.ndarray) -> np.ndarray:
    """Float frames (..., C, H, W) in [0, 1] -> uint8 RGB (..., H, W, 3).

    C = 1 is grey (copied to all three channels), C = 3 is RGB, C = 2 (two-digit
    colour Moving MNIST) is red and green with a zero blue channel. Values are
    clipped to [0, 1] and rounded to the nearest of 256 levels; NaN becomes 0.
    """
    a = np.asarray(frames, dtype=np.float64)
    if a.ndim < 3 or a.shape[-3] not in (1, 2, 3):
        raise ValueError(f"expected frames (..., C, H, W) with C in 1, 2, 3; got shape {a.shape}")
    a = np.rint(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    channels = a.shape[-3]
    if channels == 1:
        a = np.repeat(a, 3, axis=-3)
    elif channels == 2:
        a = np.concatenate([a, np.zeros_like(a[..., :1, :, :])], axis=-3)
    return np.ascontiguousarray(np.moveaxis(a, -3, -1))


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(text: str, font) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def label_width(row_labels: Sequence[str] | None) -> int:
    """Width in px of the label column that :func:`save_frame_grid` draws (0 without labels)."""
    if not row_labels:
        return 0
    font = _font()
    return max(_text_size(s, font)[0] for s in row_labels) + 2 * LABEL_PAD


def _rows_rgb(rows: np.ndarray, scale: int) -> np.ndarray:
    """(R, T, C, H, W) floats -> (R, T, H*scale, W*scale, 3) uint8, nearest-neighbour upscaled."""
    rows = np.asarray(rows)
    if rows.ndim != 5:
        raise ValueError(f"rows must be (R, T, C, H, W), got shape {rows.shape}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    rgb = frames_to_rgb(rows)
    return rgb.repeat(scale, axis=2).repeat(scale, axis=3)


def _compose(
    rgb: np.ndarray,
    labels: Sequence[str] | None,
    label_w: int,
    header: str | None = None,
    min_width: int = 0,
) -> Image.Image:
    """Lay out cells (R, T, h, w, 3) on white: labels | sep | cell | sep | cell ... | sep.

    An optional header line of text goes above the cells (used for GIF frame numbers).
    """
    R, T, h, w, _ = rgb.shape
    font = _font()
    header_h = _text_size(header, font)[1] + 2 * LABEL_PAD if header else 0
    width = max(label_w + T * w + (T + 1) * SEPARATOR, min_width)
    height = header_h + R * h + (R + 1) * SEPARATOR
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r in range(R):
        top = header_h + SEPARATOR + r * (h + SEPARATOR)
        for t in range(T):
            left = label_w + SEPARATOR + t * (w + SEPARATOR)
            canvas[top:top + h, left:left + w] = rgb[r, t]
    image = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(image)
    if header:
        draw.text((LABEL_PAD, LABEL_PAD), header, fill=(0, 0, 0), font=font)
    for r, text in enumerate(labels or []):
        _, th = _text_size(text, font)
        top = header_h + SEPARATOR + r * (h + SEPARATOR)
        draw.text((LABEL_PAD, top + max(0, (h - th) // 2)), text, fill=(0, 0, 0), font=font)
    return image


def _check_labels(row_labels: Sequence[str] | None, n_rows: int) -> None:
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row labels for {n_rows} rows")


def save_frame_grid(
    rows: np.ndarray,
    *,
    row_labels: Sequence[str] | None,
    out_path: PathLike,
    scale: int = 2,
) -> Path:
    """Save rows (R, T, C, H, W) of frames in [0, 1] as one PNG grid: a row per entry, T columns.

    Used for independent generations (ground truth on top, then one row per factor)
    and for prediction (truth vs. rollout). Frames are upscaled ``scale`` times
    (nearest neighbour) and separated by ``SEPARATOR`` px of white, also around the
    edge; labels sit in a column at the left. The PNG is exactly
    ``label_width(row_labels) + T*W*scale + (T+1)*SEPARATOR`` wide and
    ``R*H*scale + (R+1)*SEPARATOR`` high.
    """
    rgb = _rows_rgb(rows, scale)
    _check_labels(row_labels, rgb.shape[0])
    image = _compose(rgb, row_labels, label_width(row_labels))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=True)
    return out


def save_gif(
    rows: np.ndarray,
    *,
    out_path: PathLike,
    scale: int = 2,
    duration_ms: int = 200,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Save rows (R, T, C, H, W) as a looping GIF of T frames: frame t stacks every row's frame t.

    Each frame carries a "frame t/T" header, which also keeps Pillow from merging
    identical consecutive frames, so the GIF always has exactly T frames. One
    palette (from all frames together) is shared so colours do not flicker.
    """
    rgb = _rows_rgb(rows, scale)
    R, T = rgb.shape[:2]
    _check_labels(row_labels, R)
    label_w = label_width(row_labels)
    font = _font()
    headers = [f"frame {t + 1}/{T}" for t in range(T)]
    min_width = max(_text_size(s, font)[0] for s in headers) + 2 * LABEL_PAD
    images = [_compose(rgb[:, t:t + 1], row_labels, label_w, header=headers[t], min_width=min_width)
              for t in range(T)]
    # A shared adaptive palette from a montage of all frames.
    montage = Image.fromarray(np.concatenate([np.asarray(im) for im in images], axis=0), mode="RGB")
    palette = montage.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=int(duration_ms), disposal=1, optimize=False)
    return out
