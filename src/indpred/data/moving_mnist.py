"""Moving MNIST generated on the fly, with ground truth (positions, velocities, labels).

Digits bounce inside a square canvas (or, with ``kinematics="circular"``, inside a circular
arena, where a bounce couples a digit's two axes); in colour mode digit k is drawn on channel k
(red, green, blue), so the objects of a frame are known exactly. Kinematics are a
closed-form triangle wave and rendering is one advanced-indexing write, both
vectorised over batch, time and digits (torch ops, so they also run on a GPU).

Conventions (all positions and velocities are (row, col) in pixels):

* ``positions[t, k]`` is the unrounded top-left corner of digit k at frame t,
  always in ``[0, L]`` with ``L = image_size - 28``.
* ``velocities[t, k]`` is the velocity the digit leaves frame t with: if frame t
  sits exactly on an edge it already points back inside. So per axis
  ``positions[t+1] = fold(positions[t] + velocities[t])``, where ``fold`` is the
  triangle wave of period 2L onto ``[0, L]`` (when the speed is at most L, one
  reflection: ``x < 0 -> -x``, ``x > L -> 2L - x``); without a bounce between the
  two frames this is ``positions[t] + velocities[t]``, and a bounce flips the sign
  of that axis' velocity (``velocities[t+1] = -velocities[t]``).
* In the circular arena (:func:`arena_bounce`) the top-left corner moves inside the disc of
  radius ``L/2`` about ``(L/2, L/2)``, straight between contacts, and a contact reflects the
  velocity about the wall's normal there; ``velocities[t]`` is again the velocity leaving
  frame t, and speed and the angular momentum about the centre are conserved.
* The digit is drawn with its top-left at ``torch.round(positions)`` of the float32
  positions returned, i.e. round half to even.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from indpred.data.batched import BatchedDataset, check_int
from indpred.data.mnist import load_digits
from indpred.data.seeding import check_split, item_rng
from indpred.errors import UserError

__all__ = [
    "DIGIT_SIZE",
    "INTEGER_MAX_SPEED",
    "KINEMATICS",
    "STANDARD_SPEED",
    "Draws",
    "MovingMNIST",
    "arena_bounce",
    "bounce",
    "render",
    "resize_digits",
]

DIGIT_SIZE = 28
"""Side of an MNIST digit patch, in pixels."""

STANDARD_SPEED = 3.6
"""Speed of the standard (Srivastava et al. 2015) kinematics, pixels per frame."""

INTEGER_MAX_SPEED = 4
"""Integer (SVG/DrNet) kinematics draw each velocity component from {-4..4}."""

KINEMATICS = ("standard", "integer", "circular")
MAX_CONTACTS = 64  # wall contacts followed within one frame (only near-tangent paths need more than 1)
CONTACT_SLACK = 1e-9  # frames of time: a contact this close after a frame counts as in it


class Draws(NamedTuple):
    """The random draws of B sequences, all that differs between them: CPU tensors, cheap to pickle."""

    pool: Tensor  # (B, D) int64: each digit's index into the split's digit pool
    p0: Tensor  # (B, D, 2) float64: start positions (row, col)
    v0: Tensor  # (B, D, 2) float64: start velocities, pixels per frame


def bounce(p0: Tensor, v0: Tensor, T: int, L: float) -> tuple[Tensor, Tensor]:
    """Closed-form motion with reflection at 0 and L, for all frames at once.

    The unfolded coordinate ``u = p0 + v0 * t`` is folded onto ``[0, L]`` by a
    triangle wave of period 2L: with ``m = u mod 2L``, the position is ``m`` on
    the way out (``m < L``, velocity ``+v0``) and ``2L - m`` on the way back
    (velocity ``-v0``). The returned velocity at frame t is the one carried to
    frame t+1 (see the module docstring): on an edge it already points inside.
    ``L == 0`` gives zero positions and velocities (a digit filling the canvas
    cannot move).

    Args:
        p0: start positions (..., D, 2), in ``[0, L]``.
        v0: start velocities (..., D, 2), pixels per frame.
        T: number of frames.
        L: largest position, ``image_size - 28``.

    Returns:
        positions, velocities: (..., T, D, 2), floating (float64 for integer inputs).
    """
    p0 = torch.as_tensor(p0)
    v0 = torch.as_tensor(v0, device=p0.device)
    dtype = torch.promote_types(p0.dtype, v0.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    p0 = p0.to(dtype).unsqueeze(-3)  # (..., 1, D, 2)
    v0 = v0.to(dtype).unsqueeze(-3)  # (..., 1, D, 2)
    t = torch.arange(T, dtype=dtype, device=p0.device).view(T, 1, 1)  # (T, 1, 1)
    u = p0 + v0 * t  # (..., T, D, 2) unfolded coordinate
    if L == 0:
        return torch.zeros_like(u), torch.zeros_like(u)
    m = torch.remainder(u, 2 * L)  # (..., T, D, 2) in [0, 2L]
    # On an edge (m == 0 or m == L) the velocity leaving the frame is already
    # reflected: decide the leg on the side of m that the motion goes to.
    outward = torch.where(v0 >= 0, m < L, (m > 0) & (m <= L))  # (..., T, D, 2)
    positions = torch.where(m < L, m, 2 * L - m)
    # "+ 0.0" turns the -0.0 of a reflected zero velocity into +0.0.
    velocities = torch.where(outward, v0, -v0) + 0.0  # (..., T, D, 2)
    return positions, velocities


def arena_bounce(p0: Tensor, v0: Tensor, T: int, L: float) -> tuple[Tensor, Tensor]:
    """Motion inside the circular arena of radius ``L/2`` about ``(L/2, L/2)``, all sequences at once.

    Straight flight between contacts; at a contact point ``x`` (relative to the centre) the
    velocity is reflected about the wall's normal ``n = x / |x|``: ``v − 2 (v·n) n``. Each
    frame's unit of time is followed through every contact it holds (a near-tangent path can
    graze the wall several times; after ``MAX_CONTACTS`` the rest of the frame is dropped).
    The returned velocity at frame t is the one leaving it, as in :func:`bounce`.

    Args:
        p0: start positions (..., D, 2), inside the disc.
        v0: start velocities (..., D, 2), pixels per frame.
        T: number of frames.
        L: largest position, ``image_size - 28``.

    Returns:
        positions, velocities: (..., T, D, 2) float64.
    """
    x = torch.as_tensor(p0, dtype=torch.float64) - L / 2  # (..., D, 2) relative to the centre
    v = torch.as_tensor(v0, dtype=torch.float64, device=x.device).clone()
    if L == 0:
        zeros = torch.zeros(*x.shape[:-2], T, *x.shape[-2:], dtype=torch.float64, device=x.device)
        return zeros, zeros.clone()
    R = L / 2
    xs, vs = [x], [v]
    for _ in range(T - 1):
        left = torch.ones(x.shape[:-1], dtype=torch.float64, device=x.device)  # (..., D) time left
        for _ in range(MAX_CONTACTS):
            a = (v * v).sum(-1)  # |v|²
            b = (x * v).sum(-1)
            c = ((x * x).sum(-1) - R * R).clamp(max=0.0)  # ≤ 0 inside
            # Time to the wall: the positive root of |x + v s|² = R² (infinite when still).
            s = torch.where(a > 0, (-b + (b * b - a * c).clamp(min=0.0).sqrt()) / a.clamp(min=1e-300),
                            torch.inf)
            # A contact within CONTACT_SLACK of the frame's end belongs to this frame, so that
            # a wall reached at the frame (up to rounding) sends the digit off reflected.
            hit = (s <= left + CONTACT_SLACK) & (left > 0)  # (..., D)
            step = torch.where(hit, s, left)
            x = x + v * step[..., None]
            n = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-300)
            x = torch.where(hit[..., None], n * R, x)  # exactly on the wall at a contact
            v = torch.where(hit[..., None], v - 2 * (v * n).sum(-1, keepdim=True) * n, v)
            left = torch.where(hit, (left - step).clamp(min=0.0), torch.zeros_like(left))
            if not bool((left > 0).any()):
                break
        xs.append(x)
        vs.append(v)
    positions = (torch.stack(xs, dim=-3) + L / 2).clamp(0.0, L)  # (..., T, D, 2)
    return positions, torch.stack(vs, dim=-3)


def resize_digits(digits: Tensor, size: int) -> Tensor:
    """Digits (B, D, 28, 28) at ``size`` x ``size``: area averaging to shrink (exact 2 x 2 means
    at 14), pixel repetition to grow (56); unchanged at 28."""
    if size == digits.shape[-1]:
        return digits
    mode = "area" if size < digits.shape[-1] else "nearest"
    return torch.nn.functional.interpolate(digits, size=(size, size), mode=mode)


def render(digits: Tensor, positions: Tensor, *, image_size: int, colour: bool) -> Tensor:
    """Draw digits on blank canvases, every batch item, frame and digit at once.

    Each S x S digit (28 x 28 at 64 px) is written with its top-left at ``torch.round(positions)``
    (round half to even). In colour mode digit k goes to channel k of 3 channels
    (D <= 3; channels without a digit stay zero); in grayscale the D digit layers
    are combined by elementwise maximum into one channel.

    Args:
        digits: (B, D, S, S) pixel values, e.g. floats in [0, 1].
        positions: (B, T, D, 2) top-left (row, col), in ``[0, image_size - S]``.
        image_size: canvas side H = W.
        colour: 3 channels, one per digit, or 1 channel.

    Returns:
        frames: (B, T, C, H, W), dtype and device of ``digits``; C = 3 or 1.
    """
    B, D = digits.shape[:2]
    T = positions.shape[1]
    S = digits.shape[-1]
    if digits.dim() != 4 or digits.shape[2] != S or positions.shape != (B, T, D, 2):
        raise ValueError(
            f"render: digits {tuple(digits.shape)} and positions {tuple(positions.shape)} "
            "must be (B, D, S, S) and (B, T, D, 2)"
        )
    if colour and D > 3:
        raise ValueError(f"render: colour mode draws at most 3 digits, got {D}")
    dev = digits.device
    top_left = torch.round(positions).long()  # (B, T, D, 2), where the positions are (the CPU)
    if top_left.device.type == "cpu":  # checked where it costs no wait for the device
        lo, hi = int(top_left.min()), int(top_left.max())
        if lo < 0 or hi > image_size - S:
            raise ValueError(f"render: top-left corners {lo}..{hi} fall off a {image_size} canvas")
    top_left = top_left.to(dev, non_blocking=True)
    offsets = torch.arange(S, device=dev)  # (S,)
    rows = top_left[..., 0, None] + offsets  # (B, T, D, S)
    cols = top_left[..., 1, None] + offsets  # (B, T, D, S)
    b = torch.arange(B, device=dev).view(B, 1, 1, 1, 1)
    t = torch.arange(T, device=dev).view(1, T, 1, 1, 1)
    d = torch.arange(D, device=dev).view(1, 1, D, 1, 1)
    layers = 3 if colour else D
    canvas = digits.new_zeros(B, T, layers, image_size, image_size)  # (B, T, layers, H, W)
    patches = digits[:, None].expand(B, T, D, S, S)  # (B, T, D, S, S)
    canvas[b, t, d, rows[..., :, None], cols[..., None, :]] = patches
    if colour:
        return canvas  # (B, T, 3, H, W)
    return canvas.amax(dim=2, keepdim=True)  # (B, T, 1, H, W)


class MovingMNIST(BatchedDataset):
    """Bouncing MNIST digits with ground truth, generated on the fly and reproducibly.

    Item i of (seed, split) is fixed: its random draws come from
    ``PCG64(SeedSequence([seed, split_code, i]))`` (split_code 0 train, 1 test), so
    it is the same in every process and DataLoader worker. Per item, in this order:
    ``n_digits`` pool indices (uniform, with replacement), then the kinematics:

    * ``"standard"`` (Srivastava et al. 2015): start uniform in ``[0, L]^2``, direction
      theta uniform in ``[0, 2 pi)``, velocity ``3.6 * (sin theta, cos theta)`` (row, col).
    * ``"integer"`` (SVG/DrNet): start uniform on ``{0..L}^2``, velocity uniform on
      ``{-4..4}^2`` (zero included).
    * ``"circular"``: a circular arena (:func:`arena_bounce`): start uniform on the disc of
      radius ``L/2`` about ``(L/2, L/2)`` (radius ``L/2 · sqrt(u)``, angle uniform), then the
      standard velocity: a wall contact mixes a digit's row and column motion, so only a
      split by digit (not by axis) leaves the factors independent.

    ``digit_size`` S (default 28) sets the unit of everything: digits are resized to S x S
    (:func:`resize_digits`), speeds scale by S/28 and positions lie in ``[0, image_size − S]``;
    with ``image_size`` = 64 · S/28 (32 px with 14-px digits, 128 with 56) a sequence is the
    64-px one scaled, its ground truth in the new pixel units. No draw depends on ``colour``,
    ``seq_len`` or ``length``, so e.g. the grayscale
    item is the channel maximum of the colour item. Train items take digits from
    MNIST's train split, test items from its test split (see :func:`load_digits`
    for ``source``).

    Items are dicts: ``frames`` float32 (T, C, H, W) in [0, 1]; ``positions`` and
    ``velocities`` float32 (T, n_digits, 2), per the module docstring's conventions;
    ``labels`` int64 (n_digits,).

    On a GPU the frames can be made there: :meth:`draw_batch` makes the few random
    numbers of each sequence on the CPU (in DataLoader workers) and :meth:`render_draws`
    turns them into frames on the device; ``get_batch(indices, device=...)`` does both.
    The frames are the same as the CPU's.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        n_digits: int = 2,
        seq_len: int = 10,
        colour: bool = True,
        kinematics: str = "standard",
        image_size: int = 64,
        digit_size: int = DIGIT_SIZE,
        seed: int = 0,
        length: int = 100_000,
        source: str | Path | None = None,
    ) -> None:
        check_split(split)
        if kinematics not in KINEMATICS:
            raise UserError(f"unknown kinematics {kinematics!r}: use one of {', '.join(KINEMATICS)}")
        self.n_digits = check_int("n_digits", n_digits, 1, 3)
        self.seq_len = check_int("seq_len", seq_len, 1)
        self.digit_size = check_int("digit_size", digit_size, 1)
        self.image_size = check_int("image_size", image_size, self.digit_size)
        self.scale = self.digit_size / DIGIT_SIZE  # the kinematics' unit: speeds scale with the digits
        self.seed = check_int("seed", seed, 0)
        self.length = check_int("length", length, 1)
        self.split = split
        self.kinematics = kinematics
        self.colour = bool(colour)
        self.max_position = self.image_size - self.digit_size  # L
        self._images, self._labels = load_digits(split, source)  # (N, 28, 28) uint8, (N,)
        self._pools: dict[torch.device, tuple[Tensor, Tensor]] = {}  # device: (digit pool, 255.0)

    @property
    def channels(self) -> int:
        """C: 3 in colour mode, 1 in grayscale."""
        return 3 if self.colour else 1

    def get_batch(self, indices: Sequence[int],
                  device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Items ``indices`` stacked on a leading batch dimension, rendered in one go.

        Returns frames (B, T, C, H, W), positions and velocities (B, T, n_digits, 2),
        labels (B, n_digits); exactly the stacked ``self[i]``. With ``device`` the frames
        are rendered there (:meth:`render_draws`; the same values) and the ground truth
        stays on the CPU.
        """
        draws = self.draw_batch(indices)
        positions, velocities = self._motion(draws)  # (B, T, D, 2) float32
        if device is None:
            digits = torch.from_numpy(self._images[draws.pool.numpy()]).float().div_(255.0)  # (B, D, 28, 28)
            digits = resize_digits(digits, self.digit_size)  # (B, D, S, S)
            frames = render(digits, positions, image_size=self.image_size, colour=self.colour)
        else:
            frames = self._render_on(torch.device(device), draws.pool, positions)
        return {
            "frames": frames,  # (B, T, C, H, W)
            "positions": positions,  # (B, T, D, 2)
            "velocities": velocities,  # (B, T, D, 2)
            "labels": torch.from_numpy(self._labels[draws.pool.numpy()]),  # (B, D) int64
        }

    def draw_batch(self, indices: Sequence[int]) -> Draws:
        """The random draws of items ``indices``, made on the CPU (cheap: for DataLoader workers,
        the frames then made by :meth:`render_draws` on the training device)."""
        if len(indices) == 0:
            raise UserError("get_batch needs at least one index")
        drawn = [self._draw(self._check_index(i)) for i in indices]
        pool, p0, v0 = (torch.from_numpy(np.stack([d[j] for d in drawn])) for j in range(3))
        return Draws(pool, p0, v0)  # (B, D), (B, D, 2), (B, D, 2)

    def render_draws(self, draws: Draws | tuple[Tensor, Tensor, Tensor],
                     device: torch.device | str) -> Tensor:
        """The frames (B, T, C, H, W) of :meth:`draw_batch`'s ``draws``, rendered on ``device``.

        The motion is computed on the CPU (:func:`bounce`, a few numbers per sequence)
        and the pixels on ``device`` (:func:`render`) from the digit pool, copied there
        once and kept; they equal ``get_batch``'s frames.
        """
        draws = Draws(*draws)
        positions, _ = self._motion(draws)
        return self._render_on(torch.device(device), draws.pool, positions)

    def _motion(self, draws: Draws) -> tuple[Tensor, Tensor]:
        """Positions and velocities (B, T, D, 2) float32 on the CPU, from the draws' start state."""
        move = arena_bounce if self.kinematics == "circular" else bounce
        positions, velocities = move(draws.p0, draws.v0, self.seq_len, self.max_position)  # float64
        return positions.float(), velocities.float()  # render from the float32 values we return

    def _render_on(self, device: torch.device, pool: Tensor, positions: Tensor) -> Tensor:
        """Frames (B, T, C, H, W) on ``device`` of the digits ``pool`` (B, D) at ``positions`` (CPU)."""
        if device not in self._pools:
            images = torch.from_numpy(self._images.copy()).to(device)  # (N, 28, 28) uint8
            self._pools[device] = images, torch.tensor(255.0, device=device)  # a tensor: exact on CUDA too
        images, levels = self._pools[device]
        digits = resize_digits(images[pool.to(device, non_blocking=True)].float() / levels,
                               self.digit_size)  # (B, D, S, S)
        # The positions stay on the CPU: render checks them there and copies the corners over.
        return render(digits, positions, image_size=self.image_size, colour=self.colour)

    def _draw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ``index``'s random draws: pool indices (D,), p0 (D, 2), v0 (D, 2) float64."""
        rng = item_rng(self.seed, self.split, index)
        D, L = self.n_digits, self.max_position
        pool_idx = rng.integers(0, len(self._images), size=D)  # (D,)
        if self.kinematics == "standard":
            p0 = rng.uniform(0.0, L, size=(D, 2))
            theta = rng.uniform(0.0, 2.0 * math.pi, size=D)  # (D,)
            v0 = self.scale * STANDARD_SPEED * np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # (D, 2)
        elif self.kinematics == "circular":
            radius = L / 2 * np.sqrt(rng.uniform(0.0, 1.0, size=D))  # uniform on the disc
            angle = rng.uniform(0.0, 2.0 * math.pi, size=D)
            p0 = L / 2 + radius[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
            theta = rng.uniform(0.0, 2.0 * math.pi, size=D)
            v0 = self.scale * STANDARD_SPEED * np.stack([np.sin(theta), np.cos(theta)], axis=-1)
        else:  # integer positions and velocities in the 28-px digit's units
            unit_L = round(L / self.scale)
            p0 = self.scale * rng.integers(0, unit_L + 1, size=(D, 2)).astype(np.float64)
            v0 = rng.integers(-INTEGER_MAX_SPEED, INTEGER_MAX_SPEED + 1, size=(D, 2))
            v0 = self.scale * v0.astype(np.float64)
        return pool_idx, p0, v0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pools"] = {}  # device copies of the digit pool are made again where needed
        return state

    def __repr__(self) -> str:
        return (
            f"MovingMNIST(split={self.split!r}, n_digits={self.n_digits}, "
            f"seq_len={self.seq_len}, colour={self.colour}, kinematics={self.kinematics!r}, "
            f"image_size={self.image_size}, digit_size={self.digit_size}, seed={self.seed}, "
            f"length={self.length})"
        )

