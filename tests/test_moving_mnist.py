"""Tests for indpred.data.moving_mnist: kinematics, rendering, determinism, device rendering,
arguments; and the per-item seeding (indpred.data.seeding) it shares with video."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from indpred.data import MovingMNIST, load_digits
from indpred.data.moving_mnist import STANDARD_SPEED, Draws, arena_bounce, bounce, render
from indpred.data.seeding import SPLIT_CODES, item_rng
from indpred.errors import UserError

L64 = 64 - 28


def make(**kwargs) -> MovingMNIST:
    """A small dataset on the embedded digits (never a user's INDPRED_MNIST_DIR)."""
    kwargs.setdefault("source", "embedded")
    kwargs.setdefault("length", 1000)
    return MovingMNIST(**kwargs)


def simulate(p: float, v: float, n_frames: int, edge: float) -> tuple[list[float], list[float]]:
    """One axis in [0, edge], step by step: move, reflect off an edge; on an edge, leave inward."""
    L = edge
    positions, velocities = [], []
    for _ in range(n_frames):
        if (p <= 0 and v < 0) or (p >= L and v > 0):
            v = -v
        positions.append(p)
        velocities.append(v)
        p = p + v
        if p < 0:
            p, v = -p, -v
        elif p > L:
            p, v = 2 * L - p, -v
    return positions, velocities


def fold(x: torch.Tensor, edge: float) -> torch.Tensor:
    """Reflect values at most one canvas beyond an edge back into [0, edge]."""
    L = edge
    x = torch.where(x < 0, -x, x)
    return torch.where(x > L, 2 * L - x, x)


def box_mask(top_left: torch.Tensor, size: int = 64) -> torch.Tensor:
    """(size, size) bool: the 28x28 box with the given integer top-left (row, col)."""
    r, c = (int(x) for x in top_left)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[r : r + 28, c : c + 28] = True
    return mask


# --- kinematics -----------------------------------------------------------------------


@pytest.mark.parametrize("integer", [False, True])
def test_bounce_matches_step_by_step_simulation(integer: bool) -> None:
    rng = np.random.default_rng(1)
    T, L, n = 100, 36.0, 40
    if integer:
        p0 = rng.integers(0, 37, size=(n, 2)).astype(float)
        v0 = rng.integers(-4, 5, size=(n, 2)).astype(float)
        p0[:4] = [[0, 0], [36, 36], [0, 36], [36, 0]]  # starts on edges, moving either way
    else:
        p0 = rng.uniform(0, L, size=(n, 2))
        v0 = rng.normal(size=(n, 2)) * 5
    pos, vel = bounce(torch.from_numpy(p0), torch.from_numpy(v0), T, L)
    assert pos.shape == vel.shape == (T, n, 2)
    for i in range(n):
        for axis in range(2):
            sp, sv = simulate(p0[i, axis], v0[i, axis], T, L)
            np.testing.assert_allclose(pos[:, i, axis].numpy(), sp, atol=1e-4)
            np.testing.assert_allclose(vel[:, i, axis].numpy(), sv, atol=1e-4)


def test_bounce_batch_shape_and_still_canvas() -> None:
    p0 = torch.zeros(5, 3, 2)
    pos, vel = bounce(p0, torch.ones(5, 3, 2), 7, 36)
    assert pos.shape == vel.shape == (5, 7, 3, 2)
    pos, vel = bounce(p0, torch.ones(5, 3, 2), 7, 0)
    assert not pos.any() and not vel.any()


def test_standard_kinematics_physics() -> None:
    T = 100
    b = make(seq_len=T, n_digits=3, colour=False).get_batch(range(16))
    pos, vel = b["positions"].double(), b["velocities"].double()  # (B, T, D, 2)
    assert pos.min() >= 0 and pos.max() <= L64
    np.testing.assert_allclose(vel.norm(dim=-1).numpy(), STANDARD_SPEED, atol=1e-5)
    torch.testing.assert_close(fold(pos[:, :-1] + vel[:, :-1], L64), pos[:, 1:], atol=1e-4, rtol=0)
    step = pos[:, 1:] - pos[:, :-1]
    flipped = torch.sign(vel[:, 1:]) != torch.sign(vel[:, :-1])  # a bounce on that axis
    assert flipped.sum() > 50  # reflections do occur over 100 frames
    torch.testing.assert_close(step[~flipped], vel[:, :-1][~flipped], atol=1e-4, rtol=0)
    torch.testing.assert_close(vel[:, 1:][flipped], -vel[:, :-1][flipped], atol=1e-6, rtol=0)
    # an independent step-by-step simulation from frame 0 agrees with the closed form
    for i in range(4):
        for k in range(3):
            for axis in range(2):
                sp, sv = simulate(float(pos[i, 0, k, axis]), float(vel[i, 0, k, axis]), T, L64)
                np.testing.assert_allclose(pos[i, :, k, axis].numpy(), sp, atol=1e-4)
                np.testing.assert_allclose(vel[i, :, k, axis].numpy(), sv, atol=1e-4)


def test_standard_start_and_direction_are_spread() -> None:
    b = make(seq_len=1, n_digits=1, colour=False).get_batch(range(400))
    p0, v0 = b["positions"][:, 0, 0], b["velocities"][:, 0, 0]  # (400, 2)
    assert abs(p0.mean().item() - L64 / 2) < 2.0
    assert p0.min() < 2 and p0.max() > L64 - 2
    angles = torch.atan2(v0[:, 0], v0[:, 1])
    counts = torch.histc(angles, bins=8, min=-np.pi, max=np.pi)
    assert counts.min() > 20  # about 50 per octant


def test_integer_kinematics() -> None:
    T = 100
    b = make(seq_len=T, kinematics="integer").get_batch(range(32))
    pos, vel = b["positions"], b["velocities"]
    assert torch.equal(pos, pos.round()) and torch.equal(vel, vel.round())
    assert pos.min() >= 0 and pos.max() <= L64
    assert vel.abs().max() <= 4
    assert set(vel[:, 0].flatten().tolist()) == set(range(-4, 5))
    assert torch.equal(vel.abs(), vel[:, :1].abs().expand_as(vel))  # speed per axis constant
    assert torch.equal(fold(pos[:, :-1] + vel[:, :-1], L64), pos[:, 1:])
    assert (torch.sign(vel[:, 1:]) != torch.sign(vel[:, :-1])).any()


def test_arena_head_on_bounce_returns_along_the_diameter() -> None:
    """From the centre at 3.6 px/frame to the right, the wall (radius 18) is reached at frame 5
    exactly: the digit leaves it moving left, crosses the centre at frame 10, the far wall at 15."""
    f64 = torch.float64
    start, speed = torch.tensor([[18.0, 18.0]], dtype=f64), torch.tensor([[0.0, 3.6]], dtype=f64)
    pos, vel = arena_bounce(start, speed, 16, L64)
    cols = pos[:, 0, 1].numpy()
    np.testing.assert_allclose(cols[[0, 5, 6, 10, 15]], [18, 36, 32.4, 18, 0], atol=1e-9)
    np.testing.assert_allclose(vel[[4, 5, 14, 15], 0, 1].numpy(), [3.6, -3.6, -3.6, 3.6], atol=1e-12)
    assert not pos[:, 0, 0].sub(18).any() and not vel[:, 0, 0].any()  # the row never moves


def test_circular_kinematics_physics() -> None:
    """Inside the disc at constant speed, angular momentum about the centre conserved, straight
    between contacts, and at a contact the velocity reflected about the wall's normal at a point
    that the straight path reaches within the frame; the axes are coupled."""
    T, R = 60, L64 / 2
    b = make(seq_len=T, kinematics="circular").get_batch(range(24))
    pos, vel = b["positions"].double(), b["velocities"].double()  # (B, T, D, 2)
    x = pos - R  # relative to the centre
    assert x.norm(dim=-1).max() <= R + 1e-4
    np.testing.assert_allclose(vel.norm(dim=-1).numpy(), STANDARD_SPEED, atol=1e-5)
    spin = x[..., 0] * vel[..., 1] - x[..., 1] * vel[..., 0]  # (B, T, D)
    torch.testing.assert_close(spin, spin[:, :1].expand_as(spin), atol=1e-3, rtol=0)
    dv = vel[:, 1:] - vel[:, :-1]  # (B, T − 1, D, 2)
    contact = dv.norm(dim=-1) > 1e-4
    assert contact.float().mean() > 0.05
    free = ~contact
    torch.testing.assert_close((pos[:, :-1] + vel[:, :-1])[free], pos[:, 1:][free], atol=1e-4, rtol=0)
    # one contact: the normal is along dv; the path p_t + s v_t meets the wall there, s in [0, 1],
    # and the frame ends (1 − s) further along the reflected velocity
    n = -dv[contact] / dv[contact].norm(dim=-1, keepdim=True)  # outward normal at the contact
    hit = R * n
    s = ((hit - x[:, :-1][contact]) * vel[:, :-1][contact]).sum(-1) / STANDARD_SPEED ** 2
    assert s.min() > -1e-4 and s.max() < 1 + 1e-4
    torch.testing.assert_close(x[:, :-1][contact] + s[:, None] * vel[:, :-1][contact], hit, atol=1e-3, rtol=0)
    after = hit + (1 - s[:, None]) * vel[:, 1:][contact]
    torch.testing.assert_close(after, x[:, 1:][contact], atol=1e-3, rtol=0)
    reflected = vel[:, :-1][contact] - 2 * (vel[:, :-1][contact] * n).sum(-1, keepdim=True) * n
    torch.testing.assert_close(reflected, vel[:, 1:][contact], atol=1e-4, rtol=0)
    # coupling: unlike the square canvas, a bounce changes the speed along each axis
    assert ((vel[:, 1:].abs() - vel[:, :-1].abs()).abs() > 0.5)[contact].any()


def test_circular_start_is_uniform_on_the_disc() -> None:
    b = make(seq_len=1, n_digits=1, kinematics="circular", length=2000).get_batch(range(2000))
    r2 = (b["positions"][:, 0, 0].double() - L64 / 2).square().sum(-1) / (L64 / 2) ** 2  # (N,) in [0, 1]
    assert r2.max() <= 1 and abs(r2.mean().item() - 0.5) < 0.03  # uniform on a disc: E r² = R²/2
    with pytest.raises(UserError, match="circular"):
        make(kinematics="hexagonal")


# --- rendering ------------------------------------------------------------------------


def test_render_places_digit_at_rounded_position_half_to_even() -> None:
    digit = torch.rand(1, 1, 28, 28) + 0.1  # nonzero everywhere
    positions = torch.tensor([[2.5, 3.5], [0.49, 35.5], [1.51, 0.0]]).view(1, 3, 1, 2)
    frames = render(digit, positions, image_size=64, colour=False)  # (1, 3, 1, 64, 64)
    for t, (r, c) in enumerate([(2, 4), (0, 36), (2, 0)]):
        expected = torch.zeros(64, 64)
        expected[r : r + 28, c : c + 28] = digit[0, 0]
        assert torch.equal(frames[0, t, 0], expected)


def test_colour_channels_hold_one_translated_digit_each() -> None:
    ds = make(seq_len=20)
    pool, pool_labels = load_digits("train", "embedded")
    pool_bytes = {bytes(im): int(lab) for im, lab in zip(pool, pool_labels, strict=True)}
    for i in range(6):
        item = ds[i]
        frames, pos = item["frames"], item["positions"]  # (T, 3, 64, 64), (T, 2, 2)
        assert frames.shape == (20, 3, 64, 64) and frames.dtype == torch.float32
        assert not frames[:, 2].any()  # blue empty with two digits
        top_left = torch.round(pos).long()
        for k in range(2):
            patches = []
            for t in range(20):
                mask = box_mask(top_left[t, k])
                assert not frames[t, k][~mask].any()
                r, c = top_left[t, k].tolist()
                patches.append(frames[t, k, r : r + 28, c : c + 28])
            assert all(torch.equal(p, patches[0]) for p in patches)
            digit = (patches[0] * 255).round().to(torch.uint8).numpy()
            assert pool_bytes[bytes(digit)] == item["labels"][k].item()  # a pool digit


def test_three_digits_fill_blue_and_test_split_uses_test_pool() -> None:
    ds = make(split="test", n_digits=3, seq_len=2)
    test_bytes = {bytes(im) for im in load_digits("test", "embedded")[0]}
    item = ds[3]
    for k in range(3):
        r, c = torch.round(item["positions"][0, k]).long().tolist()
        patch = (item["frames"][0, k, r : r + 28, c : c + 28] * 255).round().to(torch.uint8)
        assert patch.any()
        assert bytes(patch.numpy()) in test_bytes


def test_grayscale_is_max_of_colour_channels() -> None:
    for kinematics in ("standard", "integer"):
        colour = make(kinematics=kinematics, seed=7).get_batch(range(8))
        gray = make(kinematics=kinematics, seed=7, colour=False).get_batch(range(8))
        assert gray["frames"].shape == (8, 10, 1, 64, 64)
        assert torch.equal(gray["frames"][:, :, 0], colour["frames"].amax(dim=2))
        for key in ("positions", "velocities", "labels"):
            assert torch.equal(gray[key], colour[key])


def test_frames_range_and_other_canvas_sizes() -> None:
    b = make(n_digits=1, image_size=100, seq_len=5, colour=False).get_batch([0, 1])
    assert b["frames"].shape == (2, 5, 1, 100, 100)
    assert b["positions"].max() <= 72
    b = make(image_size=28, seq_len=3).get_batch([0])
    assert not b["positions"].any()
    f = make().get_batch(range(4))["frames"]
    assert f.dtype == torch.float32 and f.min() == 0 and 0.9 < f.max() <= 1


# --- determinism ----------------------------------------------------------------------


def test_same_seed_and_index_give_the_same_item_elsewhere() -> None:
    a, b = make(seed=3), make(seed=3, length=50)
    for key, value in a[17].items():
        assert torch.equal(value, b[17][key])
    assert not torch.equal(a[17]["frames"], a[18]["frames"])
    assert not torch.equal(a[17]["positions"], make(seed=4)[17]["positions"])
    assert not torch.equal(a[17]["positions"], make(seed=3, split="test")[17]["positions"])
    assert torch.equal(a[-1]["frames"], a[999]["frames"])


def test_get_batch_equals_stacked_items() -> None:
    ds = make(kinematics="integer", n_digits=3, colour=False)
    idx = [5, 0, 5, 42]
    batch = ds.get_batch(idx)
    assert batch["frames"].shape == (4, 10, 1, 64, 64)
    assert batch["positions"].shape == batch["velocities"].shape == (4, 10, 3, 2)
    assert batch["labels"].shape == (4, 3) and batch["labels"].dtype == torch.int64
    for key in batch:
        assert torch.equal(batch[key], torch.stack([ds[i][key] for i in idx]))


def test_dataloader_workers_agree() -> None:
    ds = make(length=12, seed=11)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 3
    for j, batch in enumerate(batches):
        expected = ds.get_batch(range(4 * j, 4 * j + 4))
        for key in expected:
            assert torch.equal(batch[key], expected[key])


def test_item_rng_is_the_per_item_seed_sequence() -> None:
    for seed, split, index in [(0, "train", 0), (7, "test", 123456), (3, "train", 2**40)]:
        ss = np.random.SeedSequence([seed, SPLIT_CODES[split], index])
        expected = np.random.Generator(np.random.PCG64(ss)).integers(0, 2**31, size=3)
        assert np.array_equal(item_rng(seed, split, index).integers(0, 2**31, size=3), expected)
    # hard-coded: the draws indpred has always made
    assert item_rng(0, "train", 0).integers(0, 2**31, size=3).tolist() == [1826701615, 1367864807,
                                                                           1097657232]
    assert item_rng(7, "test", 123456).integers(0, 2**31, size=3).tolist() == [634995884, 1158893093,
                                                                               879998393]
    assert item_rng(3, "train", 2**40).uniform() == 0.6347941008337691


def test_draws_are_todays_draws() -> None:
    draws = make(seed=3).draw_batch([0, 999])
    assert draws.pool.tolist() == [[3246, 342], [3594, 269]] and draws.pool.dtype == torch.int64
    assert draws.p0.dtype == draws.v0.dtype == torch.float64
    assert draws.p0.tolist() == [
        [[8.525178237459588, 28.84588074743029], [20.95783329831724, 3.3886311206543707]],
        [[3.4760079972472826, 19.389717044397692], [4.537341125103727, 22.18726561026315]]]
    assert draws.v0.tolist() == [
        [[1.4685155713300917, -3.286862031902321], [0.47248141761464985, -3.5688599454179832]],
        [[3.3815690640994527, 1.2349051237749207], [-1.6033447823271934, -3.223241459925732]]]


# --- rendering on a device ------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"kinematics": "integer", "n_digits": 3, "colour": False},
                                    {"n_digits": 1, "image_size": 100, "seq_len": 4}])
def test_render_draws_equals_get_batch(kwargs: dict) -> None:
    ds = make(seed=5, **kwargs)
    idx = range(10, 26)
    batch = ds.get_batch(idx)
    draws = ds.draw_batch(idx)
    assert isinstance(draws, Draws) and draws.pool.shape == (16, ds.n_digits)
    assert draws.p0.shape == draws.v0.shape == (16, ds.n_digits, 2)
    cpu = torch.device("cpu")
    assert torch.equal(ds.render_draws(draws, cpu), batch["frames"])
    assert torch.equal(ds.render_draws(tuple(draws), "cpu"), batch["frames"])  # a plain tuple will do
    on_device = ds.get_batch(idx, device=cpu)
    for key in batch:
        assert torch.equal(on_device[key], batch[key])
    if torch.cuda.is_available():
        frames = ds.get_batch(idx, device="cuda")["frames"]
        assert frames.device.type == "cuda" and torch.equal(frames.cpu(), batch["frames"])


def test_draws_pickle_and_device_pools_are_not_pickled() -> None:
    ds = make(seed=2)
    draws = pickle.loads(pickle.dumps(ds.draw_batch(range(4))))
    ds.render_draws(draws, "cpu")
    assert ds._pools  # the pool copied to the device is kept for the next batch
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._pools
    assert torch.equal(clone.render_draws(draws, "cpu"), ds.get_batch(range(4))["frames"])
    with pytest.raises(UserError):
        ds.draw_batch([])


# --- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_digits": 0},
        {"n_digits": 4},
        {"n_digits": 4, "colour": False},
        {"n_digits": 1.5},
        {"seq_len": 0},
        {"image_size": 27},
        {"kinematics": "brownian"},
        {"split": "valid"},
        {"seed": -1},
        {"length": 0},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(UserError):
        make(**kwargs)


def test_index_and_batch_errors() -> None:
    ds = make(length=5)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(UserError):
        ds.get_batch([])
    with pytest.raises(TypeError):
        MovingMNIST(2)  # keyword-only


# --- frames of 32 and 128 pixels ----------------------------------------------------------


@pytest.mark.parametrize("kinematics", ["standard", "integer", "circular"])
@pytest.mark.parametrize(("size", "digit"), [(32, 14), (128, 56)])
def test_other_frame_sizes_are_the_64_pixel_sequences_scaled(size, digit, kinematics):
    base = make(seq_len=12, kinematics=kinematics).get_batch(range(6))
    other = make(seq_len=12, kinematics=kinematics, image_size=size, digit_size=digit).get_batch(range(6))
    s = size / 64
    torch.testing.assert_close(other["positions"], base["positions"] * s, atol=1e-4, rtol=0)
    torch.testing.assert_close(other["velocities"], base["velocities"] * s, atol=1e-4, rtol=0)
    assert torch.equal(other["labels"], base["labels"])
    assert other["frames"].shape == (6, 12, 3, size, size)
    # physics in the new units: inside [0, size − digit], speed 3.6 · s for the standard kinematics
    assert other["positions"].min() >= 0 and other["positions"].max() <= size - digit + 1e-4
    if kinematics != "integer":
        speed = other["velocities"].norm(dim=-1)
        torch.testing.assert_close(speed, torch.full_like(speed, STANDARD_SPEED * s), atol=1e-4, rtol=0)


def test_a_scaled_digit_is_drawn_resized_where_its_position_says():
    data = make(n_digits=1, seq_len=3, image_size=32, digit_size=14, colour=False)
    item = data.get_batch([0])
    digit = torch.from_numpy(data._images[data.draw_batch([0]).pool.numpy()]).float() / 255  # (1, 1, 28, 28)
    small = torch.nn.functional.avg_pool2d(digit, 2)  # (1, 1, 14, 14): exact 2 x 2 means
    for t in range(3):
        r, c = torch.round(item["positions"][0, t, 0]).long().tolist()
        drawn = item["frames"][0, t, 0, r:r + 14, c:c + 14]
        torch.testing.assert_close(drawn, small[0, 0], atol=1e-6, rtol=0)
        assert item["frames"][0, t].sum() == pytest.approx(float(small.sum()), abs=1e-4)  # nothing else drawn
