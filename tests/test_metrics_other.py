"""Lagged correlations, factor–object alignment, linear probes and the motion baselines against
known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from indpred.errors import UserError
from indpred.eval.dependence import active_reading, authors_reading, unit_snr
from indpred.eval.groups import UnitGroups
from indpred.metrics import (
    active_units,
    alignment_score,
    block_summary,
    chance_score,
    identity_accuracy,
    intensity_centres,
    lagged_correlation,
    layer_weights,
    mi_matrix,
    one_step_error,
    probe_matrix,
    probe_r2,
    tracking_error,
)

# --- lagged correlation -------------------------------------------------------------------


def test_lagged_correlation_matches_corrcoef():
    rng = np.random.default_rng(0)
    z_t = rng.normal(size=(300, 5)) * np.array([1, 10, 0.1, 3, 1]) + 2
    z_next = 0.7 * z_t[:, ::-1] + rng.normal(size=(300, 5))
    C = lagged_correlation(z_t, z_next)
    expected = np.corrcoef(np.hstack([z_t, z_next]).T)[:5, 5:]
    np.testing.assert_allclose(C, expected, atol=1e-12)


def test_lagged_correlation_constant_column_is_nan_quietly():
    rng = np.random.default_rng(1)
    z_t = rng.normal(size=(100, 3))
    z_next = rng.normal(size=(100, 3))
    z_t[:, 1] = 4.0
    z_next[:, 2] = -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C = lagged_correlation(z_t, z_next)
    assert np.isnan(C[1]).all() and np.isnan(C[:, 2]).all()
    assert np.isfinite(C[[0, 2]][:, [0, 1]]).all()


def test_block_summary_hand_matrix():
    C = np.array([[0.9, -0.7, 0.1, 0.0],
                  [0.5, np.nan, -0.3, 0.2],
                  [0.0, 0.2, -0.8, 0.6],
                  [0.4, 0.0, 1.0, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = block_summary(C, factors=2, d=2)
    within = (0.9 + 0.7 + 0.5 + 0.8 + 0.6 + 1.0 + 0.4) / 7  # the NaN is left out
    between = (0.1 + 0.0 + 0.3 + 0.2 + 0.0 + 0.2 + 0.4 + 0.0) / 8
    assert s["within"] == pytest.approx(within)
    assert s["between"] == pytest.approx(between)
    assert s["within_minus_between"] == pytest.approx(within - between)
    assert s["nan_entries"] == 1
    assert block_summary(np.eye(3), factors=1, d=3)["between"] is None
    with pytest.raises(ValueError):
        block_summary(C, factors=3, d=2)


# --- alignment ----------------------------------------------------------------------------


def test_alignment_identity_and_uniform():
    s = alignment_score(np.diag([0.5, 1.0, 2.0]))
    assert s["score"] == pytest.approx(1.0)
    assert s["assignment"] == [[0, 0], [1, 1], [2, 2]]
    assert s["dominant"] == [0, 1, 2] and s["dominant_distinct"] and s["distinct"]
    u = alignment_score(np.full((4, 4), 0.3))
    assert u["score"] == pytest.approx(0.25) == chance_score(4)
    assert u["chance"] == pytest.approx(0.25)


def test_alignment_pitfall_less_stable_object():
    # Both factors move object 0 a lot (it is rendered less stably) and object 1 a little:
    # the two factors are not separated.
    delta = np.array([[0.9, 0.1],
                      [0.8, 0.1]])
    s = alignment_score(delta)
    # per object, by hand: column 0 -> 0.9/1.7, 0.8/1.7; column 1 -> 0.1/0.2 = 0.5 each
    np.testing.assert_allclose(s["R"], [[9 / 17, 0.5], [8 / 17, 0.5]])
    # best assignment: f0->o0, f1->o1 (9/17 + 1/2 beats 1/2 + 8/17)
    assert s["assignment"] == [[0, 0], [1, 1]]
    assert s["score"] == pytest.approx((9 / 17 + 0.5) / 2)  # = 35/68 ~ 0.515, chance is 0.5
    assert s["score"] - chance_score(2) < 0.02
    assert s["dominant"] == [0, 0] and not s["dominant_distinct"]
    assert s["distinct"]  # one-to-one by construction; the dominant check is what tells
    assert s["delta"] == delta.tolist()
    # What per-factor normalisation would say: each factor's change lands mostly on
    # object 0 (0.9 and 0.8/0.9 ~ 0.889), i.e. both look "aligned" with an object.
    per_factor = delta / delta.sum(axis=1, keepdims=True)
    assert per_factor[0, 0] == pytest.approx(0.9) and per_factor[1, 0] == pytest.approx(8 / 9)


def test_alignment_more_factors_than_objects():
    delta = np.array([[0.8, 0.05],
                      [0.1, 0.9],
                      [0.1, 0.05]])
    s = alignment_score(delta)
    np.testing.assert_allclose(s["R"], [[0.8, 0.05], [0.1, 0.9], [0.1, 0.05]])
    assert s["assignment"] == [[0, 0], [1, 1]]
    assert s["score"] == pytest.approx(0.85)
    assert s["chance"] == pytest.approx(1 / 3)
    assert s["dominant"] == [0, 1] and s["dominant_distinct"]


def test_alignment_zero_column_and_bad_input():
    s = alignment_score(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(np.array(s["R"])[:, 1], [1 / 3] * 3)
    assert s["score"] == pytest.approx((1.0 + 1 / 3) / 2)
    with pytest.raises(UserError, match="NaN"):
        alignment_score(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        alignment_score(np.array([[-0.1, 1.0]]))


# --- probes -------------------------------------------------------------------------------


def test_probe_r2_matches_least_squares_without_ridge():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 3)) * np.array([1.0, 5.0, 0.2])
    Y = X @ rng.normal(size=(3, 2)) + rng.normal(size=(400, 2))
    r2 = probe_r2(X, Y, ridge=0.0, seed=9)
    order = np.random.default_rng(9).permutation(400)
    train, test = order[:200], order[200:]
    A = np.column_stack([X[train], np.ones(200)])
    coef = np.linalg.lstsq(A, Y[train], rcond=None)[0]
    pred = np.column_stack([X[test], np.ones(200)]) @ coef
    expected = 1 - ((Y[test] - pred) ** 2).sum(0) / ((Y[test] - Y[test].mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(r2, expected, atol=1e-10)


def test_probe_matrix_linear_targets():
    rng = np.random.default_rng(4)
    n = 2000
    z = rng.normal(size=(n, 2, 3))  # factor 0 and an independent factor 1
    targets = (z[:, 0, :] @ rng.normal(size=(3, 4)) + 1.5)[:, None, :]  # (N, 1, 4), linear in factor 0
    P = probe_matrix(z, targets)
    assert P.shape == (2, 1)
    assert P[0, 0] > 0.999
    assert P[1, 0] <= 0.1


def test_probe_noise_and_bad_input():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1000, 3, 2))
    noise = rng.normal(size=(1000, 2, 4))
    P = probe_matrix(z, noise, seed=1)
    assert P.shape == (3, 2)
    assert (P <= 0.05).all()
    assert math.isnan(probe_r2(rng.normal(size=(10, 1)), np.ones(10))[0])
    with pytest.raises(UserError, match="train_fraction"):
        probe_r2(z[:, 0], noise[:, 0], train_fraction=1.0)
    with pytest.raises(UserError, match="fewer than 2"):
        probe_r2(z[:3, 0], noise[:3, 0])


# --- motion and identity ------------------------------------------------------------------


def _bouncing_latents(N: int = 40, T: int = 8) -> np.ndarray:
    """(N, T, 2, 3): factor 0 moves at constant velocity on two units (its third unit is
    constant), factor 1 is constant: positions p0 + v t, exactly linear in t."""
    rng = np.random.default_rng(0)
    t = np.arange(T)[None, :, None]
    z = np.zeros((N, T, 2, 3))
    z[:, :, 0, :2] = rng.normal(size=(N, 1, 2)) + rng.normal(size=(N, 1, 2)) * t
    z[:, :, 0, 2] = 5.0
    z[:, :, 1] = rng.normal(size=(N, 1, 3))
    return z


def test_active_units_are_those_whose_mean_varies():
    active = active_units(_bouncing_latents())
    assert active.tolist() == [[True, True, False], [True, True, True]]  # factor 1 varies across sequences
    assert not active_units(np.full((4, 5, 2, 3), 7.0)).any()


def test_one_step_error_of_linear_motion():
    """Constant velocity: extrapolation is exact, a perfect prior scores 0, staying put errs by
    v² per unit and step, and a prior that stays put scores 1."""
    z = _bouncing_latents()
    active = np.zeros((2, 3), dtype=bool)
    active[0, :2] = True
    perfect = one_step_error(z, z.copy(), active)
    assert perfect["prior_over_stay"] == 0.0
    assert perfect["extrapolate_over_stay"] == pytest.approx(0.0, abs=1e-20)
    assert perfect["prior_over_stay_per_factor"] == [0.0, None]  # factor 1 has no active unit
    velocity = z[:, 1, 0, :2] - z[:, 0, 0, :2]  # (N, 2)
    assert perfect["mse"]["stay"] == pytest.approx((velocity ** 2).mean())
    lazy = np.concatenate([z[:, :1], z[:, :-1]], axis=1)  # the prior's mean of z_t is z_{t-1}
    assert one_step_error(z, lazy, active)["prior_over_stay"] == pytest.approx(1.0)
    half = one_step_error(z, z + 0.5 * (lazy - z), active)  # halfway between staying and the truth
    assert half["prior_over_stay"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        one_step_error(z, z, active, first=1)


def test_identity_accuracy_separable_and_noise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, size=200)
    codes = rng.normal(size=(10, 6)) * 3
    features = codes[labels][:, None, :] + 0.1 * rng.normal(size=(200, 5, 6))  # (N, T, F)
    accuracy, chance = identity_accuracy(features, labels, seed=0)
    assert accuracy == 1.0 and 0.1 <= chance < 0.25
    noise, _ = identity_accuracy(rng.normal(size=(200, 5, 6)), labels, seed=0)
    assert noise < 0.25
    with pytest.raises(ValueError):
        identity_accuracy(features[:, 0], labels)
    with pytest.raises(UserError):
        identity_accuracy(features[:3], labels[:3])


def test_authors_reading_uses_the_last_thousand_pairs_of_the_groups():
    rng = np.random.default_rng(2)
    z_t = rng.normal(size=(1300, 2, 2))
    z_next = np.concatenate([z_t[:300] * 0, z_t[300:]]) + 0.3 * rng.normal(size=(1300, 2, 2))
    groups = UnitGroups([[2, 3], [0, 1]], None)  # factor order reversed: the reading follows the groups
    a = authors_reading(z_t, z_next, groups)
    M = mi_matrix(z_t[-1000:, ::-1], z_next[-1000:, ::-1], k=3)
    assert a["pairs"] == 1000 and a["k"] == 3
    np.testing.assert_allclose(a["matrix_nats"], M, rtol=1e-12)
    assert a["same_nats"] == pytest.approx(np.diag(M).mean()) and a["same_nats"] > 1.0
    assert a["cross_one_direction_nats"] == pytest.approx(M[0, 1])


# --- tracks from layers -------------------------------------------------------------------


def blob(centre: tuple[float, float], size: int = 64, radius: int = 4) -> np.ndarray:
    """A symmetric cone of intensity about an integer or half-integer centre, zero elsewhere."""
    rows, cols = np.mgrid[:size, :size]
    return np.clip(radius - np.hypot(rows - centre[0], cols - centre[1]), 0, None)


def test_the_track_of_a_blob_is_its_centre_exactly_and_a_blank_frame_has_none():
    frames = np.stack([blob((10, 20)), blob((30.5, 41.5)), np.zeros((64, 64))])[:, None]  # (3, 1, H, W)
    centres = intensity_centres(frames)
    np.testing.assert_allclose(centres[:2], [[10, 20], [30.5, 41.5]], atol=1e-12)
    assert np.isnan(centres[2]).all()


def test_layer_tracks_read_the_blob_off_its_background_and_are_scored_after_the_matching():
    # Two factors' layers (logits): a blob on a flat background each; their digits sit where
    # factor 1's blob is off by (3, 4) (5 px) and factor 2's exact.
    n, T = 2, 3
    layers = np.full((n, T, 2, 1, 64, 64), -8.0)
    truth = np.zeros((n, T, 2, 2))
    for i in range(n):
        for t in range(T):
            a, b = (12 + 5 * t + i, 15 + 2 * t), (40 - 3 * t, 30 + 4 * t + i)
            layers[i, t, 0, 0] += 12 * blob(a) / 4
            layers[i, t, 1, 0] += 12 * blob(b) / 4
            truth[i, t] = [b, (a[0] + 3, a[1] + 4)]  # digit 1 is factor 2's, digit 2 factor 1's
    tracks = intensity_centres(layer_weights(layers))  # (n, T, K, 2)
    result = tracking_error(tracks, truth, [[0, 1], [1, 0]])
    assert [p["error_px"] for p in result["pairs"]] == pytest.approx([5.0, 0.0], abs=1e-9)
    assert result["error_px"] == pytest.approx(2.5, abs=1e-9) and result["within"] == 0.5
    assert tracking_error(tracks, truth, [[0, 0], [1, 1]])["within"] == 0  # the wrong matching


def test_layer_weights_are_zero_on_the_background_and_tracking_counts_blank_layers_as_misses():
    weights = layer_weights(np.full((1, 8, 8), -3.0))
    assert (weights == 0).all()
    tracks = np.array([[[[np.nan, np.nan]], [[1.0, 1.0]]]])  # (1, 2, K=1, 2)
    result = tracking_error(tracks, np.ones((1, 2, 1, 2)), [[0, 0]])
    assert result["undefined_frames"] == 1 and result["within"] == 0.5 and result["error_px"] == 0


def test_a_layer_whose_channels_sit_at_different_levels_still_tracks_its_blob():
    # channel 0's background at logit −3, the others at −6 (another factor's layer cancels it)
    layer = np.full((3, 64, 64), -6.0)
    layer[0] = -3.0
    layer += 12 * blob((8, 8), radius=4) / 4
    np.testing.assert_allclose(intensity_centres(layer_weights(layer)), [8.0, 8.0], atol=1e-9)


def test_active_reading_recovers_the_information_that_noise_units_hide_from_ksg():
    """Two factors of 8 units: 2 units follow a Gaussian AR(1) chain (ρ = 0.95, I = −log(1 − ρ²)
    nats in closed form), 6 are the prior's noise. KSG on all 8 reads a fraction of it; on the
    units whose posterior SNR exceeds 1 it reads the closed form."""
    rng = np.random.default_rng(5)
    P, rho = 1500, 0.95
    signal_t = rng.normal(size=(P, 2, 2))
    signal_next = rho * signal_t + math.sqrt(1 - rho**2) * rng.normal(size=(P, 2, 2))
    z_t = np.concatenate([signal_t, rng.normal(size=(P, 2, 6))], axis=-1)  # (P, K, d)
    z_next = np.concatenate([signal_next, rng.normal(size=(P, 2, 6))], axis=-1)
    means = np.concatenate([signal_t, 0.01 * rng.normal(size=(P, 2, 6))], axis=-1)  # noise units: mean ≈ 0
    variances = np.concatenate([np.full((P, 2, 2), 1e-3), np.ones((P, 2, 6))], axis=-1)
    snr = unit_snr(means, variances)
    signal = [0, 1, 8, 9]
    assert snr.shape == (16,) and (snr[signal] > 100).all() and (np.delete(snr, signal) < 1e-3).all()
    exact = -math.log(1 - rho**2)  # nats: two independent units of correlation ρ
    groups = UnitGroups([list(range(8)), list(range(8, 16))], None)
    a = active_reading(z_t, z_next, groups, snr, np.arange(P), k=3)  # every pair its own sequence
    assert a["units"] == [[0, 1], [8, 9]] and a["counts"] == [2, 2]
    assert a["same_nats"] == pytest.approx(exact, rel=0.1)
    assert abs(a["cross_nats"]) < 0.1
    everything = np.diag(mi_matrix(z_t, z_next, k=3)).mean()
    assert everything < 0.5 * exact  # what the usual reading sees through six noise units
    silent = active_reading(z_t, z_next, groups, np.where(np.arange(16) < 8, 0.0, snr), np.arange(P), k=3)
    assert silent["counts"] == [0, 2] and silent["matrix_nats"][0].tolist() == [0.0, 0.0]
    two_sequences = active_reading(z_t[:4], z_next[:4], groups, snr, np.array([0, 0, 1, 1]), k=3)
    assert "too few sequences" in two_sequences["skipped"]  # 2 pairs outside each sequence, k = 3
