"""Mutual information between vectors with the KSG estimator (SPEC §3.3).

``ksg_mi`` is algorithm 1 of Kraskov, Stögbauer and Grassberger (2004), "Estimating
mutual information", Phys. Rev. E 69, 066138, with the max-norm, in nats. On top of it:
``mi_matrix`` (every factor at t against every factor at t+1), ``mi_summary`` (the
same-factor and cross-factor averages in nats and bits) and ``best_partition`` (the
paper's protocol for an entangled model: random groupings of its units, keep the best).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma

from indpred.errors import UserError

__all__ = ["BACKENDS", "best_partition", "ksg_mi", "ksg_mi_across", "mi_matrix", "mi_summary"]

LN2 = math.log(2.0)
NONFINITE = ("contains NaN or inf values; drop those samples (or check the model for divergence) "
             "before estimating mutual information")


def _as_samples(a: np.ndarray, name: str) -> np.ndarray:
    """(N,) or (N, d) array-like -> float64 (N, d); rejects NaN/inf with a UserError."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D (N,) or 2-D (N, d), got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError(f"{name} has no columns (shape {a.shape})")
    if not np.isfinite(a).all():
        raise UserError(f"{name} {NONFINITE}")
    return a


def _check_k(k: int, n: int) -> int:
    if int(k) != k or k < 1:
        raise UserError(f"k must be a positive integer (number of neighbours), got {k!r}")
    k = int(k)
    if n < k + 1:
        raise UserError(f"KSG with k={k} needs at least k+1={k + 1} samples, got N={n}; "
                        "use more samples or a smaller k")
    return k


def _prepare(a: np.ndarray, *, standardize: bool, jitter: float, rng: np.random.Generator | None
             ) -> np.ndarray:
    """Optional per-column standardisation, then optional Gaussian jitter (see ``ksg_mi``)."""
    if not (standardize or jitter > 0):
        return a
    std = a.std(axis=0)
    scale = np.where(std > 0, std, 1.0)  # a constant column keeps scale 1
    if standardize:
        a = (a - a.mean(axis=0)) / scale
        scale = np.ones_like(scale)
    if jitter > 0:
        assert rng is not None
        a = a + jitter * scale * rng.standard_normal(a.shape)
    return a


def _marginal_tree(a: np.ndarray) -> cKDTree:
    """k-d tree for the strict-count queries, with a leaf size that grows with dimension.

    Radius queries in a few dimensions touch many cells; larger leaves (scanned by brute
    force) are several times faster there (about 3x at d = 8, N = 10,000) and cost little
    in one or two dimensions. The counts are exact whatever the leaf size.
    """
    leafsize = int(min(1024, max(16, 16 * 2 ** (a.shape[1] / 2))))
    return cKDTree(a, leafsize=leafsize)


def _strict_counts(tree: cKDTree, points: np.ndarray, eps: np.ndarray, workers: int) -> np.ndarray:
    """n(i) = #{j != i : ||p_j - p_i||_inf < eps_i}, for all i at once.

    ``d < eps`` is ``d <= nextafter(eps, 0)`` exactly for floats, so a closed ball of that
    radius counts the strict neighbours plus the point itself (distance 0), which we take
    off. Where eps_i = 0 (a duplicated joint point) no distance is < 0, so n(i) = 0.
    """
    radius = np.nextafter(eps, 0.0)
    lengths = tree.query_ball_point(points, radius, p=np.inf, return_length=True, workers=workers)
    return np.where(eps > 0, np.asarray(lengths) - 1, 0)


BACKENDS = ("auto", "tree", "compiled", "torch")
COMPILED_FROM = 4000  # samples from which the compiled brute force beats the k-d trees


def _backend(backend: str, n: int) -> str:
    if backend not in BACKENDS:
        raise UserError(f"unknown KSG backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "compiled" if n >= COMPILED_FROM else "tree"
    return backend


def _ksg_value(k: int, n: int, n_x: np.ndarray, n_y: np.ndarray) -> float:
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_x + 1) + digamma(n_y + 1)))


def _ksg_core(x: np.ndarray, y: np.ndarray, k: int, tree_x: cKDTree | None, tree_y: cKDTree | None,
              workers: int, backend: str = "tree") -> float:
    """Algorithm 1 on prepared (N, dx), (N, dy) arrays (with their marginal trees for "tree").

    Every backend computes the same float64 distances and strict comparisons, so the same
    eps and counts: "tree" with scipy's k-d trees, "compiled" with the brute force of
    :mod:`indpred.metrics.neighbours`, "torch" with its tensor version.
    """
    n = x.shape[0]
    if backend == "compiled":
        from indpred.metrics import neighbours  # numba loads only where the brute force runs

        _, n_x, n_y = neighbours.counts(x, y, k, workers)
        return _ksg_value(k, n, n_x, n_y)
    if backend == "torch":
        _, n_x_t, n_y_t = _counts_torch(torch.from_numpy(x), torch.from_numpy(y), k)
        return _ksg_value(k, n, n_x_t.numpy(), n_y_t.numpy())
    tree_x = _marginal_tree(x) if tree_x is None else tree_x
    tree_y = _marginal_tree(y) if tree_y is None else tree_y
    joint = np.hstack([x, y])
    # k+1 neighbours: the point itself (or a duplicate) is among them at distance 0, so
    # column k is the k-th nearest distance with i excluded, duplicates or not.
    dist, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf, workers=workers)
    eps = dist[:, k]
    n_x = _strict_counts(tree_x, x, eps, workers)
    n_y = _strict_counts(tree_y, y, eps, workers)
    return _ksg_value(k, n, n_x, n_y)


def _ksg_torch(x: torch.Tensor, y: torch.Tensor, k: int, standardize: bool) -> float:
    """KSG on tensors where they are (a GPU): standardised in float64 there, then counted."""
    x = x.detach().to(torch.float64).reshape(len(x), -1)
    y = y.detach().to(torch.float64).reshape(len(y), -1)
    for name, a in (("x", x), ("y", y)):
        if not torch.isfinite(a).all():
            raise UserError(f"{name} {NONFINITE}")
    if standardize:
        x, y = (_standardize_torch(a) for a in (x, y))
    _, n_x, n_y = _counts_torch(x, y, k)
    return _ksg_value(k, x.shape[0], n_x.cpu().numpy(), n_y.cpu().numpy())


def _counts_torch(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    from indpred.metrics import neighbours  # the module imports numba

    return neighbours.counts_torch(x, y, k)


def _standardize_torch(a: torch.Tensor) -> torch.Tensor:
    std = a.std(dim=0, unbiased=False)
    return (a - a.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))


def ksg_mi(
    x: np.ndarray,
    y: np.ndarray,
    k: int = 3,
    *,
    standardize: bool = True,
    jitter: float = 0.0,
    seed: int = 0,
    workers: int = 1,
    backend: str = "auto",
) -> float:
    """Mutual information I(x; y) in **nats** by the KSG estimator (algorithm 1, max-norm).

    x: (N, dx), y: (N, dy); a 1-D array is one column, (N, 1). For each sample i,
    eps_i is the max-norm distance to its k-th nearest neighbour in the joint space
    z = [x, y] (i itself excluded); n_x(i) counts the j != i with ||x_j - x_i||_inf < eps_i
    (strictly), n_y(i) likewise; then

        I = psi(k) + psi(N) - mean_i[psi(n_x(i) + 1) + psi(n_y(i) + 1)].

    Computed with k-d trees (``query`` for eps, ``query_ball_point(return_length=True)``
    at radius ``nextafter(eps, 0)`` for the strict counts), no loop over samples.

    Rules, chosen so that the function is exact where the algorithm is defined and never
    crashes where it is not:

    - ``standardize`` (default True): each column is centred and divided by its standard
      deviation first (a constant column is only centred). The max-norm makes the raw
      estimate depend on the relative scales of the coordinates although the true MI does
      not; standardising makes the estimate invariant to per-coordinate rescaling. Pass
      False for the raw algorithm on the given coordinates.
    - Ties: a duplicated joint point gives eps_i = 0, where "distance < 0" counts nobody,
      so n_x(i) = n_y(i) = 0 and the term is psi(1): finite, never -inf, but ties (discrete
      or duplicated data) bias the estimate upwards. ``jitter`` > 0 adds Gaussian noise
      of standard deviation ``jitter`` times each column's standard deviation (times 1 for
      a constant column), drawn from ``np.random.default_rng(seed)``, to break ties
      (e.g. ``jitter=1e-10``); it is off by default so that the result is deterministic
      and exact. A constant column is fine: it adds no distance to anything.
    - The estimate is returned as is: KSG is nearly unbiased, so for (nearly)
      independent variables it can be slightly **negative**; it is not clipped to zero.
    - N < k + 1, k < 1, NaN or inf: :class:`UserError`. Different N for x and y:
      ``ValueError``.

    ``workers``: threads (-1: all cores). ``backend``: "tree" (scipy's k-d trees), "compiled"
    (an exact brute force compiled with numba, several times faster from a few thousand
    samples: N = 50,000 of 8 + 8 units in seconds; its first call on a machine compiles it,
    about 20 s, cached on disk), "torch" (the same brute force as tensor operations, on the
    device the samples are on) or "auto" ("compiled" from ``COMPILED_FROM`` samples,
    "tree" below). All give the same value on the same float64 samples. Torch tensors on
    a GPU go to "torch" there (with ``standardize`` computed in torch; no jitter).
    """
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.device.type != "cpu":
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of samples, got {len(x)} and {len(y)}")
        if jitter > 0:
            raise UserError("jitter is not supported for samples on a GPU; pass numpy arrays")
        return _ksg_torch(x, y, _check_k(k, x.shape[0]), standardize)
    x = _as_samples(x, "x")
    y = _as_samples(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    k = _check_k(k, x.shape[0])
    rng = np.random.default_rng(seed) if jitter > 0 else None
    x = _prepare(x, standardize=standardize, jitter=jitter, rng=rng)
    y = _prepare(y, standardize=standardize, jitter=jitter, rng=rng)
    return _ksg_core(x, y, k, None, None, workers, _backend(backend, x.shape[0]))


def ksg_mi_across(x: np.ndarray, y: np.ndarray, sequence: np.ndarray, k: int = 3, *,
                  standardize: bool = True, workers: int = 1) -> float:
    """KSG (algorithm 1, max-norm) with each sample's neighbours sought only among samples of
    *other* sequences, in nats.

    Pairs (z_t, z_t+1) from one sequence are not independent: where a code is precise, a
    pair's nearest neighbours are its own sequence's other pairs in x and in y alike, and
    plain KSG reads dependence between anything that is constant along a sequence (two
    independent digits' positions read 0.6 bits). Excluding a sample's own sequence from its
    neighbourhoods (a Theiler window over sequences) removes that; with one sample per
    sequence it is :func:`ksg_mi` exactly. ``sequence`` (N,): each sample's sequence label;
    ψ(N) becomes the mean of ψ(samples outside the sample's sequence + 1); ``standardize`` as in
    :func:`ksg_mi`. On k-d trees: the joint query asks for k + (longest sequence) neighbours,
    which always holds k from other sequences, and the marginal counts take off the sample's
    own sequence, counted directly.
    """
    x, y = _as_samples(x, "x"), _as_samples(y, "y")
    sequence = np.asarray(sequence)
    n = x.shape[0]
    if y.shape[0] != n or sequence.shape != (n,):
        raise ValueError(f"x, y and sequence must have the same length, got {n}, {y.shape[0]} "
                         f"and shape {sequence.shape}")
    k = _check_k(k, n)
    x = _prepare(x, standardize=standardize, jitter=0.0, rng=None)
    y = _prepare(y, standardize=standardize, jitter=0.0, rng=None)
    _, label, sizes = np.unique(sequence, return_inverse=True, return_counts=True)
    others = n - sizes[label]  # (N,) samples a neighbourhood may hold
    if others.min() < k:
        raise UserError(f"KSG with k={k} needs at least {k} samples outside each sequence; "
                        "use more sequences or a smaller k")
    longest = int(sizes.max())
    joint = np.hstack([x, y])
    dist, index = cKDTree(joint).query(joint, k=k + longest, p=np.inf, workers=workers)  # (N, k + m)
    other = label[index] != label[:, None]  # at most m of each row are the sample's own sequence
    kth = np.argmax(np.cumsum(other, axis=1) == k, axis=1)  # column of the k-th other neighbour
    eps = dist[np.arange(n), kth]
    members = np.full((len(sizes), longest), -1)  # each sequence's samples, padded with -1
    by_label = np.argsort(label, kind="stable")
    members[label[by_label], np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)] = by_label
    own = members[label]  # (N, m): the sample's sequence, itself included
    real = (own >= 0) & (own != np.arange(n)[:, None])

    def counts(a: np.ndarray) -> np.ndarray:
        """Strict neighbours within eps in ``a`` among other sequences' samples."""
        near = np.abs(a[own] - a[:, None, :]).max(-1) < eps[:, None]  # (N, m)
        return np.where(eps > 0, _strict_counts(_marginal_tree(a), a, eps, workers)
                        - (near & real).sum(1), 0)

    n_x, n_y = counts(x), counts(y)
    return float(digamma(k) + np.mean(digamma(others + 1)) - np.mean(digamma(n_x + 1) + digamma(n_y + 1)))


def mi_matrix(
    z_t: np.ndarray,
    z_next: np.ndarray,
    k: int = 3,
    *,
    standardize: bool = True,
    jitter: float = 0.0,
    seed: int = 0,
    workers: int = 1,
    backend: str = "auto",
) -> np.ndarray:
    """K x K matrix M[i, j] = I(z_t^i ; z_next^j) in nats, by :func:`ksg_mi`.

    z_t, z_next: (N, K, d), N paired samples of K factors of d units each (factor i at
    time t against factor j at time t+1, each a d-dimensional vector). The keyword
    arguments mean what they mean in :func:`ksg_mi` (with jitter, each factor gets its
    own stream derived from ``seed``). With the trees, each factor's marginal tree is built once.
    """
    z_t = np.asarray(z_t, dtype=np.float64)
    z_next = np.asarray(z_next, dtype=np.float64)
    if z_t.ndim != 3 or z_next.ndim != 3:
        raise ValueError(f"z_t and z_next must be (N, K, d), got shapes {z_t.shape} and {z_next.shape}")
    if z_t.shape != z_next.shape:
        raise ValueError(f"z_t and z_next must have the same shape, got {z_t.shape} and {z_next.shape}")
    n, K, _ = z_t.shape
    k = _check_k(k, n)
    seeds = np.random.SeedSequence(seed).spawn(2 * K)
    xs, ys = [], []
    for i in range(K):
        for arrays, source, name, s in ((xs, z_t, "z_t", seeds[i]), (ys, z_next, "z_next", seeds[K + i])):
            a = _as_samples(source[:, i, :], f"{name}[:, {i}]")
            rng = np.random.default_rng(s) if jitter > 0 else None
            arrays.append(_prepare(a, standardize=standardize, jitter=jitter, rng=rng))
    backend = _backend(backend, n)
    trees = backend == "tree"
    trees_x = [_marginal_tree(a) if trees else None for a in xs]
    trees_y = [_marginal_tree(a) if trees else None for a in ys]
    M = np.empty((K, K))
    for i in range(K):
        for j in range(K):
            M[i, j] = _ksg_core(xs[i], ys[j], k, trees_x[i], trees_y[j], workers, backend)
    return M


def mi_summary(M: np.ndarray) -> dict[str, float | int | None]:
    """Same-factor and cross-factor averages of an MI matrix (nats in, nats and bits out).

    M: (K, K), M[i, j] = I(z_t^i; z_next^j) in nats. Returns

    - ``same_nats``: mean of the diagonal;
    - ``cross_nats``: mean over all i != j (both directions, K(K-1) entries);
    - ``cross_one_direction_nats``: mean over i < j of M[i, j], each pair once, as the
      paper's authors computed it;
    - ``same_minus_cross_nats``: ``same_nats - cross_nats``;
    - the same four with ``_bits`` (divided by ln 2), and ``K``.

    With K = 1 there are no cross pairs: the cross figures (and the differences) are None.
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be a square (K, K) matrix, got shape {M.shape}")
    K = M.shape[0]
    same = float(np.mean(np.diag(M)))
    if K > 1:
        off = ~np.eye(K, dtype=bool)
        cross: float | None = float(np.mean(M[off]))
        cross_one: float | None = float(np.mean(M[np.triu_indices(K, 1)]))
        diff: float | None = same - cross
    else:
        cross = cross_one = diff = None

    def bits(v: float | None) -> float | None:
        return None if v is None else v / LN2

    return {
        "K": K,
        "same_nats": same,
        "cross_nats": cross,
        "cross_one_direction_nats": cross_one,
        "same_minus_cross_nats": diff,
        "same_bits": bits(same),
        "cross_bits": bits(cross),
        "cross_one_direction_bits": bits(cross_one),
        "same_minus_cross_bits": bits(diff),
    }


def best_partition(
    z_t: np.ndarray,
    z_next: np.ndarray,
    *,
    groups: int,
    size: int,
    n_partitions: int = 20,
    seed: int = 0,
    k: int = 3,
    **ksg_kwargs: object,
) -> dict[str, object]:
    """The best of ``n_partitions`` random groupings of an entangled model's units (SPEC §3.3).

    z_t, z_next: (N, D) units at t and t+1. Each partition is a random permutation of
    range(D), of which the first ``groups * size`` units are reshaped to (groups, size);
    the permutations come from ``np.random.default_rng(seed)``, so the result is
    reproducible. For each partition the regrouped (N, groups, size) arrays go through
    :func:`mi_matrix` and are scored by same - cross (nats, cross over both directions;
    same alone when groups = 1); the highest score wins (the first on ties).

    Returns ``{"units": [[unit, ...] per group], "matrix": M (groups x groups, nats),
    "summary": mi_summary(M), "scores": [same - cross per partition], "best_index": i}``.
    Extra keyword arguments go to :func:`mi_matrix`.
    """
    z_t = np.asarray(z_t, dtype=np.float64)
    z_next = np.asarray(z_next, dtype=np.float64)
    if z_t.ndim != 2 or z_t.shape != z_next.shape:
        raise ValueError(f"z_t and z_next must both be (N, D), got shapes {z_t.shape} and {z_next.shape}")
    D = z_t.shape[1]
    if groups < 1 or size < 1:
        raise UserError(f"groups and size must be positive, got groups={groups}, size={size}")
    if groups * size > D:
        raise UserError(f"cannot draw {groups} groups of {size} units from {D} units; "
                        "lower groups or size")
    if n_partitions < 1:
        raise UserError(f"n_partitions must be at least 1, got {n_partitions}")
    rng = np.random.default_rng(seed)
    best: dict[str, object] | None = None
    best_score = -np.inf
    scores: list[float] = []
    for p in range(n_partitions):
        units = rng.permutation(D)[: groups * size].reshape(groups, size)
        M = mi_matrix(z_t[:, units], z_next[:, units], k, **ksg_kwargs)  # (N, groups, size) each
        summary = mi_summary(M)
        score = summary["same_nats"] if groups == 1 else summary["same_minus_cross_nats"]
        scores.append(float(score))
        if best is None or score > best_score:
            best_score = score
            best = {"units": units.tolist(), "matrix": M, "summary": summary, "best_index": p}
    assert best is not None
    best["scores"] = scores
    return best
