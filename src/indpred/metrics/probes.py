"""Linear probes: how well each factor predicts each object's ground truth (SPEC §4)."""

from __future__ import annotations

import numpy as np

from indpred.errors import UserError

__all__ = ["identity_accuracy", "probe_matrix", "probe_r2"]


def probe_r2(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    train_fraction: float = 0.5,
    ridge: float = 1e-3,
    seed: int = 0,
) -> np.ndarray:
    """Held-out R² of a ridge linear regression from ``features`` to each target column.

    features: (N, F) (or (N,)); targets: (N, T) (or (N,)). The samples are split at
    random (``np.random.default_rng(seed)``) into ``train_fraction`` for fitting and the
    rest for scoring. Features are standardised with the training mean and standard
    deviation (a constant feature is only centred); the fit is the closed form
    w = (X^T X + ridge * n_train * I)^-1 X^T (y - mean y) with the intercept the training
    mean of y, so ``ridge`` is relative to standardised features and does not shrink the
    intercept.

    Returns (T,) R² = 1 - SSE / SST on the held-out part (SST about the held-out mean).
    R² can be negative (worse than predicting the mean) and is not clipped; a target that
    is constant on the held-out part gives NaN.
    """
    X = np.asarray(features, dtype=np.float64)
    Y = np.asarray(targets, dtype=np.float64)
    X = X[:, None] if X.ndim == 1 else X
    Y = Y[:, None] if Y.ndim == 1 else Y
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"features (N, F) and targets (N, T) must share N, got {X.shape} and {Y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise UserError("probe features or targets contain NaN or inf; drop those samples first")
    if not 0.0 < train_fraction < 1.0:
        raise UserError(f"train_fraction must be strictly between 0 and 1, got {train_fraction}")
    if ridge < 0:
        raise UserError(f"ridge must be non-negative, got {ridge}")
    n = X.shape[0]
    n_train = round(train_fraction * n)
    if n_train < 2 or n - n_train < 2:
        raise UserError(f"{n} samples with train_fraction={train_fraction} leave fewer than 2 samples "
                        "to fit or to score; use more samples")
    order = np.random.default_rng(seed).permutation(n)
    train, test = order[:n_train], order[n_train:]

    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    Xtr = (X[train] - mean) / std  # (n_train, F)
    Xte = (X[test] - mean) / std  # (n_test, F)
    y_mean = Y[train].mean(axis=0)  # (T,)
    gram = Xtr.T @ Xtr + ridge * n_train * np.eye(X.shape[1])
    W = np.linalg.lstsq(gram, Xtr.T @ (Y[train] - y_mean), rcond=None)[0]  # (F, T)
    pred = Xte @ W + y_mean

    sse = ((Y[test] - pred) ** 2).sum(axis=0)
    sst = ((Y[test] - Y[test].mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def probe_matrix(z: np.ndarray, targets: np.ndarray, **kwargs: float) -> np.ndarray:
    """(K, J) matrix: held-out R² of factor k predicting object j's ground truth.

    z: (N, K, d) factor samples; targets: (N, J, m) per-object ground truth (e.g. each
    object's position and velocity, m = 4). Entry [k, j] is the mean over the m columns of
    :func:`probe_r2` from z[:, k] to targets[:, j] (keyword arguments go to it; every
    probe uses the same split). Linear on purpose: it asks whether a factor carries an
    object's state in a directly readable form.
    """
    z = np.asarray(z, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if z.ndim != 3 or targets.ndim != 3 or z.shape[0] != targets.shape[0]:
        raise ValueError(f"z must be (N, K, d) and targets (N, J, m) with the same N, "
                         f"got {z.shape} and {targets.shape}")
    N, K, _ = z.shape
    _, J, m = targets.shape
    flat = targets.reshape(N, J * m)
    out = np.empty((K, J))
    for k in range(K):
        out[k] = probe_r2(z[:, k, :], flat, **kwargs).reshape(J, m).mean(axis=1)
    return out


def identity_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    classes: int = 10,
    train_fraction: float = 0.5,
    ridge: float = 1e-3,
    seed: int = 0,
) -> tuple[float, float]:
    """Held-out accuracy of a linear classifier from every frame's features to its sequence's
    label, and the chance level (the held-out frequency of the commonest label).

    features: (N, T, F), one row per frame of N sequences; labels: (N,) integers in
    [0, classes). The sequences (not the frames: a sequence's frames share its label) are
    split at random into ``train_fraction`` for fitting and the rest for scoring. The
    classifier is the ridge regression of :func:`probe_r2` onto one-hot labels, the
    prediction the largest output: the least-squares linear probe.
    """
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if X.ndim != 3 or y.shape != X.shape[:1]:
        raise ValueError(f"features (N, T, F) and labels (N,) must share N, got {X.shape} and {y.shape}")
    N, T, F = X.shape
    n_train = round(train_fraction * N)
    if n_train < 2 or N - n_train < 2:
        raise UserError(f"{N} sequences leave fewer than 2 to fit or to score; use more sequences")
    order = np.random.default_rng(seed).permutation(N)
    train, test = order[:n_train], order[n_train:]
    Xtr, Xte = X[train].reshape(-1, F), X[test].reshape(-1, F)  # (n·T, F)
    ytr, yte = np.repeat(y[train], T), np.repeat(y[test], T)  # (n·T,)
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    onehot = np.eye(classes)[ytr]  # (n·T, classes)
    gram = Xtr.T @ Xtr + ridge * len(Xtr) * np.eye(F)
    W = np.linalg.lstsq(gram, Xtr.T @ (onehot - onehot.mean(axis=0)), rcond=None)[0]  # (F, classes)
    predicted = (Xte @ W + onehot.mean(axis=0)).argmax(axis=1)
    chance = np.bincount(yte, minlength=classes).max() / len(yte)
    return float((predicted == yte).mean()), float(chance)
