"""KSG mutual information: a brute-force reference, analytic Gaussian answers, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import digamma

from indpred.errors import UserError
from indpred.metrics import best_partition, ksg_mi, ksg_mi_across, mi_matrix, mi_summary
from indpred.testing.ksg import brute_force_ksg


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("dx", [1, 3])
@pytest.mark.parametrize("dy", [1, 3])
def test_matches_brute_force(k, dx, dy):
    rng = np.random.default_rng(100 * k + 10 * dx + dy)
    x = rng.normal(size=(200, dx))
    y = 0.8 * x[:, :1] + rng.standard_t(3, size=(200, dy))
    expected = brute_force_ksg(x, y, k)
    assert ksg_mi(x, y, k, standardize=False) == pytest.approx(expected, abs=1e-10)
    # standardize=True is the same algorithm on standardised columns
    xs, ys = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    assert ksg_mi(x, y, k) == pytest.approx(brute_force_ksg(xs, ys, k), abs=1e-10)


def test_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=(200, 2)), 1)  # many exact ties, some duplicated rows
    y = np.round(x[:, :1] + rng.normal(size=(200, 1)), 0)
    for k in (1, 3):
        assert ksg_mi(x, y, k, standardize=False) == pytest.approx(brute_force_ksg(x, y, k), abs=1e-10)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_bivariate_gaussian(rho):
    rng = np.random.default_rng(7)
    n = 4000
    x = rng.normal(size=n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n)
    assert ksg_mi(x, y) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.03)


def test_multivariate_gaussian():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6))
    cov = A @ A.T + 3 * np.eye(6)
    sx, sy = cov[:3, :3], cov[3:, 3:]
    analytic = 0.5 * math.log(np.linalg.det(sx) * np.linalg.det(sy) / np.linalg.det(cov))
    assert 0.2 < analytic < 2.0  # a non-trivial amount of information
    z = rng.multivariate_normal(np.zeros(6), cov, size=4000)
    assert ksg_mi(z[:, :3], z[:, 3:]) == pytest.approx(analytic, abs=0.05)


def test_independent_uniform_near_zero_and_not_clipped():
    rng = np.random.default_rng(11)
    estimates = [ksg_mi(rng.uniform(size=(2000, 2)), rng.uniform(size=(2000, 2))) for _ in range(4)]
    assert all(abs(e) < 0.03 for e in estimates)
    assert min(estimates) < 0  # KSG is nearly unbiased: some estimates fall below zero, as returned


def test_rescaling_invariance_and_symmetry():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 3))
    y = x @ rng.normal(size=(3, 2)) + rng.normal(size=(500, 2))
    base = ksg_mi(x, y)
    scaled = ksg_mi(x * np.array([1e3, 1e-2, 7.0]), y * np.array([0.1, 42.0]))
    assert scaled == pytest.approx(base, abs=1e-10)
    assert ksg_mi(y, x) == base
    assert ksg_mi(y, x, standardize=False) == ksg_mi(x, y, standardize=False)


def test_bad_input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1))
    with pytest.raises(UserError, match="k\\+1"):
        ksg_mi(x, x, k=3)
    ksg_mi(rng.normal(size=(4, 1)), rng.normal(size=(4, 1)), k=3)  # N = k + 1 is enough
    with pytest.raises(UserError, match="positive integer"):
        ksg_mi(x, x, k=0)
    bad = rng.normal(size=(50, 2))
    bad[3, 1] = np.nan
    with pytest.raises(UserError, match="NaN"):
        ksg_mi(bad, rng.normal(size=50))
    bad[3, 1] = np.inf
    with pytest.raises(UserError, match="NaN or inf"):
        ksg_mi(rng.normal(size=50), bad)
    with pytest.raises(ValueError, match="same number of samples"):
        ksg_mi(rng.normal(size=50), rng.normal(size=49))


def test_constant_and_duplicates():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(300, 2))
    # x constant: it says nothing, and with distinct y the estimate is exactly 0
    assert ksg_mi(np.ones(300), y) == pytest.approx(0.0, abs=1e-12)
    # a constant column next to an informative one does not crash
    x = np.column_stack([y[:, 0] + 0.3 * rng.normal(size=300), np.zeros(300)])
    assert np.isfinite(ksg_mi(x, y))
    # duplicated rows: eps = 0 counts nobody, so each such term is psi(1), finite
    dup = np.repeat(rng.normal(size=(50, 2)), 4, axis=0)  # every row 4 times
    value = ksg_mi(dup[:, :1], dup[:, 1:], k=3)
    n = len(dup)
    assert value == pytest.approx(digamma(3) + digamma(n) - 2 * digamma(1), abs=1e-12)
    # jitter breaks the ties reproducibly
    a = ksg_mi(dup[:, :1], dup[:, 1:], k=3, jitter=1e-10, seed=4)
    assert np.isfinite(a) and a < value
    assert a == ksg_mi(dup[:, :1], dup[:, 1:], k=3, jitter=1e-10, seed=4)


def test_mi_matrix_factored():
    # z_next^k = z_t^k + small noise, independently for each factor: (N, K, d) twice
    rng = np.random.default_rng(0)
    z_t = rng.normal(size=(2000, 3, 2))
    z_next = z_t + 0.1 * rng.normal(size=(2000, 3, 2))
    M = mi_matrix(z_t, z_next)
    assert M.shape == (3, 3)
    off = M[~np.eye(3, dtype=bool)]
    assert np.diag(M).min() > 2.5
    assert np.abs(off).max() < 0.05
    assert M[0, 1] == pytest.approx(ksg_mi(z_t[:, 0], z_next[:, 1]), abs=1e-12)


def test_mi_summary_hand_matrix():
    M = np.array([[1.0, 2.0, 3.0],
                  [0.5, 4.0, 6.0],
                  [0.1, 0.2, 7.0]])
    s = mi_summary(M)
    assert s["K"] == 3
    assert s["same_nats"] == pytest.approx(4.0)
    assert s["cross_nats"] == pytest.approx(11.8 / 6)  # all six off-diagonal entries
    assert s["cross_one_direction_nats"] == pytest.approx(11.0 / 3)  # M[0,1], M[0,2], M[1,2]
    assert s["same_minus_cross_nats"] == pytest.approx(4.0 - 11.8 / 6)
    for key in ("same", "cross", "cross_one_direction", "same_minus_cross"):
        assert s[f"{key}_nats"] / s[f"{key}_bits"] == pytest.approx(math.log(2))
    one = mi_summary(np.array([[2.0]]))
    assert one["same_bits"] == pytest.approx(2.0 / math.log(2))
    assert one["cross_nats"] is None and one["cross_one_direction_bits"] is None


def test_best_partition_finds_the_chains():
    # two independent chains of d = 2 units; within a chain the next step rotates the units
    # into each other, so a grouping that splits a chain loses same-group information
    d = 2
    rng = np.random.default_rng(1)
    rotation = np.array([[0.6, 0.8], [-0.8, 0.6]])
    z_t = rng.normal(size=(1000, 2, d))
    z_next = z_t @ rotation.T + 0.3 * rng.normal(size=(1000, 2, d))
    z_t, z_next = z_t.reshape(1000, 2 * d), z_next.reshape(1000, 2 * d)  # units 0..d-1, d..2d-1
    scramble = np.array([2, 0, 3, 1])  # new column c holds old unit scramble[c]
    z_t, z_next = z_t[:, scramble], z_next[:, scramble]
    result = best_partition(z_t, z_next, groups=2, size=d, n_partitions=20, seed=0)
    assert len(result["scores"]) == 20
    assert result["scores"][result["best_index"]] == max(result["scores"])
    assert result["summary"]["same_minus_cross_nats"] == max(result["scores"])
    np.testing.assert_array_equal(result["matrix"], mi_matrix(z_t[:, result["units"]],
                                                              z_next[:, result["units"]]))
    # the true chains, in scrambled column numbers: old units {0, 1} and {2, 3}
    found = {frozenset(scramble[g].tolist()) for g in result["units"]}
    assert found == {frozenset({0, 1}), frozenset({2, 3})}
    assert min(result["scores"]) < max(result["scores"]) - 0.5  # worse random groupings were drawn

    again = best_partition(z_t, z_next, groups=2, size=d, n_partitions=20, seed=0)
    assert again["units"] == result["units"] and again["scores"] == result["scores"]
    other = best_partition(z_t, z_next, groups=2, size=d, n_partitions=20, seed=1)
    assert other["scores"] != result["scores"]


def test_best_partition_bad_sizes():
    z = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(UserError, match="cannot draw"):
        best_partition(z, z, groups=3, size=2)
    small = best_partition(z, z, groups=1, size=3, n_partitions=2)  # fewer units than D is fine
    assert len(small["units"]) == 1 and len(small["units"][0]) == 3


def _samples(kind: str, n: int, dx: int, dy: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous, tied (rounded, with duplicated rows) or constant-column samples."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = 0.7 * x[:, :1] + rng.normal(size=(n, dy))
    if kind == "ties":
        x, y = np.round(x, 0), np.round(y, 0)
        m = min(20, n // 3)
        x[n // 2:n // 2 + m], y[n // 2:n // 2 + m] = x[:m], y[:m]
    elif kind == "constant":
        x[:, -1] = 1.5
    return x, y


@pytest.mark.parametrize("dx, dy", [(1, 1), (3, 2)])
@pytest.mark.parametrize("kind", ["continuous", "ties", "constant"])
def test_every_backend_gives_the_trees_value_exactly(dx, dy, kind):
    # 1,037 samples: several tiles, and a last block of rows that is not full
    x, y = _samples(kind, 1037, dx, dy, seed=dx + 10 * dy)
    for k in (1, 3, 5):
        for standardize in (False, True):
            tree = ksg_mi(x, y, k, standardize=standardize, backend="tree")
            for backend in ("compiled", "torch"):
                assert ksg_mi(x, y, k, standardize=standardize, backend=backend) == tree, (backend, k)
    small_x, small_y = _samples(kind, 7, dx, dy, seed=3)  # fewer samples than a tile or a row block
    value = brute_force_ksg(small_x, small_y, 3)
    for backend in ("tree", "compiled", "torch"):
        got = ksg_mi(small_x, small_y, 3, standardize=False, backend=backend)
        assert got == pytest.approx(value, abs=1e-10)


def test_neighbour_counts_are_the_trees_and_threads_do_not_change_them():
    from scipy.spatial import cKDTree

    from indpred.metrics import neighbours

    x, y = _samples("ties", 2003, 3, 2, seed=5)
    joint = np.hstack([x, y])
    eps_tree = cKDTree(joint).query(joint, k=4, p=np.inf)[0][:, 3]
    n_x_tree = cKDTree(x).query_ball_point(x, np.nextafter(eps_tree, 0), p=np.inf, return_length=True) - 1
    n_x_tree = np.where(eps_tree > 0, n_x_tree, 0)
    one = neighbours.counts(x, y, 3, workers=1)
    tensors = neighbours.counts_torch(torch.from_numpy(x), torch.from_numpy(y), 3, block=300)
    for got in (neighbours.counts(x, y, 3, workers=-1), one, [t.numpy() for t in tensors]):
        np.testing.assert_array_equal(got[0], eps_tree)
        np.testing.assert_array_equal(got[1], n_x_tree)
        np.testing.assert_array_equal(got[2], one[2])


def test_auto_backend_and_bad_backend():
    from indpred.metrics import mutual_info

    assert mutual_info._backend("auto", mutual_info.COMPILED_FROM - 1) == "tree"
    assert mutual_info._backend("auto", mutual_info.COMPILED_FROM) == "compiled"
    x, y = _samples("continuous", 50, 1, 1, seed=0)
    with pytest.raises(UserError, match="unknown KSG backend"):
        ksg_mi(x, y, backend="kd")
    M = mi_matrix(np.stack([x, y], 1), np.stack([y, x], 1), backend="compiled")
    np.testing.assert_array_equal(M, mi_matrix(np.stack([x, y], 1), np.stack([y, x], 1), backend="tree"))


def ar_sequences(rho: float, sequences: int, T: int, seed: int) -> np.ndarray:
    """(S, T, 2, 2): two independent factors, each two independent stationary Gaussian AR(1)
    units with coefficient ``rho`` along every sequence."""
    rng = np.random.default_rng(seed)
    z = np.empty((sequences, T, 2, 2))
    z[:, 0] = rng.normal(size=(sequences, 2, 2))
    for t in range(1, T):
        z[:, t] = rho * z[:, t - 1] + math.sqrt(1 - rho**2) * rng.normal(size=(sequences, 2, 2))
    return z


def test_ksg_across_sequences_removes_the_dependence_that_shared_sequences_fake():
    """Pairs (z_t, z_t+1) pooled from 300 slow sequences: plain KSG reads ~0.9 nats between two
    independent factors (their pairs' neighbours are their own sequence's); excluding a
    pair's own sequence reads ≈ 0, and the same factor's closed form −log(1 − ρ²) (two units)."""
    rho, S, T = 0.98, 300, 10
    z = ar_sequences(rho, S, T, seed=3)
    z_t, z_next = z[:, :-1].reshape(-1, 2, 2), z[:, 1:].reshape(-1, 2, 2)
    sequence = np.repeat(np.arange(S), T - 1)
    exact = -math.log(1 - rho**2)
    assert ksg_mi(z_t[:, 0], z_next[:, 1]) > 0.5  # the fake: independent factors
    assert abs(ksg_mi_across(z_t[:, 0], z_next[:, 1], sequence)) < 0.15
    assert ksg_mi_across(z_t[:, 0], z_next[:, 0], sequence) == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize("length", [1, 7, 9])
def test_ksg_across_is_the_brute_force_leaving_each_sequence_out(length):
    """Ties (values rounded), a duplicated sample, sequences of unequal length (301 = 43 × 7,
    33 × 9 + 4) and their samples scattered through the arrays."""
    rng = np.random.default_rng(length)
    x = np.round(rng.normal(size=(301, 3)), 1)
    y = x[:, :2] + 0.3 * rng.normal(size=(301, 2))
    x[5], y[5] = x[6], y[6]
    sequence = rng.permutation(np.arange(301) // length)

    def standardise(a):
        return (a - a.mean(axis=0)) / a.std(axis=0)

    found = ksg_mi_across(x, y, sequence, k=3)
    assert found == pytest.approx(brute_force_ksg(standardise(x), standardise(y), 3, sequence), abs=1e-12)
    if length == 1:
        assert found == pytest.approx(ksg_mi(x, y), abs=1e-12)


def test_ksg_across_one_sample_per_sequence_is_plain_ksg_and_refuses_too_few_others():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 3))
    y = x[:, :2] + 0.5 * rng.normal(size=(400, 2))
    assert ksg_mi_across(x, y, np.arange(400)) == pytest.approx(ksg_mi(x, y), abs=1e-12)
    assert ksg_mi_across(x, y, np.arange(400) // 4, k=3) != pytest.approx(ksg_mi(x, y), abs=1e-6)
    with pytest.raises(UserError, match="outside each sequence"):
        ksg_mi_across(x[:5], y[:5], np.array([0, 0, 0, 1, 1]), k=3)
    with pytest.raises(ValueError, match="same length"):
        ksg_mi_across(x, y, np.arange(399))
