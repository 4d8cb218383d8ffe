"""`indpred eval`'s numbers against references computed here, independently, from the same latents.

A tiny run is trained and evaluated once; each test rebuilds the evaluation sequences
(the run's Moving MNIST, made by the data factory, with the evaluation seed), runs the trained
model's pieces over them exactly as the evaluation documents (posterior samples from a
generator seeded with the seed, posterior means), and recomputes one figure of
``metrics.json`` with plain NumPy / math: a brute-force O(N²) KSG estimator, Pearson
correlations by ``np.corrcoef``, the alignment by brute force over assignments, ridge
probes by least squares on an augmented design, the bounds from hand-written Gaussian
log densities and a ``math`` logsumexp, prediction by a step-by-step rollout.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from indpred.checkpoint import save_checkpoint
from indpred.config import apply_overrides, entangled, get_preset
from indpred.data.factory import make_dataset
from indpred.eval import dependence
from indpred.eval.evaluate import evaluate_run
from indpred.eval.latents import collect_latents
from indpred.metrics import one_step_error
from indpred.run import load_config, load_model
from indpred.train import train
from tests.conftest import TINY

SEED = 11
SEQUENCES = 24  # 24 × 3 = 72 pairs (z_t, z_t+1), 96 frames for the probes
IW = dict(iw_samples=3, iw_sequences=4)
OPTIONS = dict(sequences=SEQUENCES, seed=SEED, partitions=3, pred_samples=2, progress=False, **IW)
EULER = 0.5772156649015329


def trained_run(cfg, run):
    """A run trained a few steps, its batch-norm running statistics then re-estimated from
    training batches and saved as its newest checkpoint: a few steps leave those statistics
    near their initial values, where the eval-mode decoder draws an almost constant image
    (every factor's change ~1e-8), which would make the alignment and prediction checks empty."""
    train(cfg, run, steps=2, progress=False)
    data = make_dataset(cfg.data, "train", 48, seed=3)
    model = calibrate_batch_norm(load_model(run), [data.get_batch(range(s, s + 16))["frames"]
                                                   for s in range(0, 48, 16)])
    save_checkpoint(run / "checkpoints", 3, model)


def calibrate_batch_norm(model, batches):
    """Re-estimate every batch-norm layer's running statistics as the plain average over the
    batches (filter, then decode the samples, in training mode); returns the model in eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for frames in batches:
            model.decode(model.filter(frames, generator=torch.Generator().manual_seed(0)).z)
    return model.eval()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny factored run and its entangled twin, trained and evaluated."""
    root = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(2)
    cfg = apply_overrides(get_preset("demo"), [*TINY, "data.seq_len=4"])
    trained_run(cfg, root / "factored")
    trained_run(entangled(cfg), root / "entangled")
    # A few steps leave every unit's SNR far below 1 (~1e-4): with the threshold at 0 every unit
    # counts as active, so the active reading's KSG across sequences runs on real latents.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dependence, "ACTIVE_SNR", 0.0)
        for name in ("factored", "entangled"):
            evaluate_run(root / name, **OPTIONS)
    return root


class Evaluated:
    """A run's metrics.json, its model, and its evaluation sequences with their latents."""

    def __init__(self, run):
        self.metrics = json.loads((run / "eval" / "metrics.json").read_text())
        self.cfg = load_config(run)
        self.model = load_model(run)
        self.batch = self.dataset(self.cfg.data.seq_len).get_batch(range(SEQUENCES))
        self.frames = self.batch["frames"]
        with torch.no_grad():
            g = torch.Generator().manual_seed(SEED)
            self.samples = self.model.filter(self.frames, generator=g).z.double().numpy()  # (N, T, K, d)
            by_means = self.model.filter(self.frames, sample=False)
            self.means = by_means.post_mean  # (N, T, K, d)
            self.variances = by_means.post_logvar.exp().double().numpy()
        K, d = self.samples.shape[2:]
        self.z_t = self.samples[:, :-1].reshape(-1, K * d)  # (N·(T−1), D)
        self.z_next = self.samples[:, 1:].reshape(-1, K * d)
        part = self.metrics["mutual_information"]["partition"]  # the groups standing for factors
        self.units = part["units"] if part else [list(range(k * d, (k + 1) * d)) for k in range(K)]

    def dataset(self, seq_len):
        return make_dataset(self.cfg.data, "test", length=SEQUENCES, seq_len=seq_len, seed=SEED)


@pytest.fixture(scope="module")
def factored(evaluated):
    return Evaluated(evaluated / "factored")


@pytest.fixture(scope="module")
def twin(evaluated):
    return Evaluated(evaluated / "entangled")


# --- references ------------------------------------------------------------------------------


def digamma_int(n: np.ndarray) -> np.ndarray:
    """ψ(n) for positive integers: −γ + Σ_{i<n} 1/i."""
    n = np.asarray(n)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n.max() + 1))])
    return -EULER + harmonic[n - 1]


def ksg_brute_force(x: np.ndarray, y: np.ndarray, k: int = 3, sequence: np.ndarray | None = None) -> float:
    """KSG algorithm 1 (max-norm, columns standardised), every pairwise distance computed; with
    ``sequence``, a sample's own sequence is left out of its neighbourhoods and ψ(N) becomes the
    mean ψ(samples outside it + 1)."""
    def standardise(a):
        std = a.std(axis=0)
        return (a - a.mean(axis=0)) / np.where(std > 0, std, 1.0)

    x, y = standardise(x), standardise(y)
    n = len(x)
    dx = np.abs(x[:, None, :] - x[None, :, :]).max(-1)  # (N, N)
    dy = np.abs(y[:, None, :] - y[None, :, :]).max(-1)
    joint = np.maximum(dx, dy)
    left_out = np.eye(n, dtype=bool) if sequence is None else sequence[:, None] == sequence[None, :]
    joint[left_out] = np.inf
    eps = np.sort(joint, axis=1)[:, k - 1]  # distance to the k-th neighbour, i excluded
    dx[left_out] = np.inf
    dy[left_out] = np.inf
    n_x = (dx < eps[:, None]).sum(1)
    n_y = (dy < eps[:, None]).sum(1)
    others = n - left_out.sum(1) + 1
    counts = digamma_int(n_x + 1) + digamma_int(n_y + 1)
    return float(digamma_int(k) + np.mean(digamma_int(others)) - np.mean(counts))


def ridge_r2(X: np.ndarray, Y: np.ndarray, seed: int) -> np.ndarray:
    """Held-out R² of ridge regression (standardised X, free intercept, penalty 1e-3·n_train)
    by least squares on [1 X; 0 √λ I] — the evaluation's split: a seeded permutation, half."""
    n = len(X)
    order = np.random.default_rng(seed).permutation(n)
    train, test = order[: round(n / 2)], order[round(n / 2):]
    mean, std = X[train].mean(0), X[train].std(0)
    std = np.where(std > 0, std, 1.0)
    A = np.hstack([np.ones((len(train), 1)), (X[train] - mean) / std])
    lam = 1e-3 * len(train)
    penalty = np.hstack([np.zeros((X.shape[1], 1)), math.sqrt(lam) * np.eye(X.shape[1])])
    coef = np.linalg.lstsq(np.vstack([A, penalty]), np.vstack([Y[train], np.zeros((X.shape[1], Y.shape[1]))]),
                           rcond=None)[0]
    pred = np.hstack([np.ones((len(test), 1)), (X[test] - mean) / std]) @ coef
    return 1 - ((Y[test] - pred) ** 2).sum(0) / ((Y[test] - Y[test].mean(0)) ** 2).sum(0)


def log_normal(x: np.ndarray, mean: np.ndarray, logvar) -> np.ndarray:
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 / np.exp(logvar))


def logsumexp(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["factored", "twin"])
def test_mutual_information_is_the_brute_force_ksg_of_the_same_latents(name, request):
    e = request.getfixturevalue(name)
    mi, units = e.metrics["mutual_information"], e.units
    G = len(units)
    M = np.array([[ksg_brute_force(e.z_t[:, units[i]], e.z_next[:, units[j]]) for j in range(G)]
                  for i in range(G)])
    assert mi["pairs"] == len(e.z_t) == SEQUENCES * 3
    np.testing.assert_allclose(mi["matrix_nats"], M, rtol=1e-9, atol=1e-12)
    same, cross = np.mean(np.diag(M)), np.mean(M[~np.eye(G, dtype=bool)])
    assert mi["same_nats"] == pytest.approx(same, rel=1e-9, abs=1e-12)
    assert mi["cross_nats"] == pytest.approx(cross, rel=1e-9, abs=1e-12)
    assert mi["cross_one_direction_nats"] == pytest.approx(M[0, 1], rel=1e-9, abs=1e-12)  # G = 2
    assert mi["same_bits"] == pytest.approx(same / math.log(2), rel=1e-9, abs=1e-12)
    if mi["partition"]:  # the reported partition is the best of those tried
        assert max(mi["partition"]["scores_nats"]) == pytest.approx(same - cross, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["factored", "twin"])
def test_lagged_correlation_is_numpys_pearson_correlation(name, request):
    e = request.getfixturevalue(name)
    c, units = e.metrics["correlation"], e.units
    order = [u for g in units for u in g]
    assert c["unit_order"] == order
    D = len(order)
    C = np.corrcoef(e.z_t[:, order].T, e.z_next[:, order].T)[:D, D:]  # (D, D): z_t rows, z_t+1 columns
    owner = np.repeat(np.arange(len(units)), len(units[0]))
    within = np.abs(C[owner[:, None] == owner[None, :]]).mean()
    between = np.abs(C[owner[:, None] != owner[None, :]]).mean()
    assert c["nan_entries"] == 0
    assert c["within"] == pytest.approx(within, rel=1e-9)
    assert c["between"] == pytest.approx(between, rel=1e-9)
    assert c["within_minus_between"] == pytest.approx(within - between, rel=1e-9, abs=1e-12)


def test_alignment_is_each_factors_share_of_each_digits_change(factored):
    e = factored
    al = e.metrics["alignment"]
    T, K = e.means.shape[1:3]
    J = e.cfg.data.n_digits
    delta = np.empty((K, J))
    with torch.no_grad():
        for k in range(K):  # factor k follows its posterior mean, the others stay at t = 1
            z = e.means[:, :1].repeat(1, T, 1, 1)
            z[:, :, k] = e.means[:, :, k]
            x = e.model.decode(z).double().numpy()  # (B, T, C, H, W)
            for j in range(J):
                delta[k, j] = np.abs(x[:, 1:, j] - x[:, :1, j]).mean()
    assert delta.min() > 1e-6 and np.ptp(delta) > 1e-6  # every factor moves every channel, unequally
    R = delta / delta.sum(axis=0, keepdims=True)
    best = max(itertools.permutations(range(J), K), key=lambda js: sum(R[k, j] for k, j in enumerate(js)))
    np.testing.assert_allclose(al["delta"], delta, rtol=1e-5)
    np.testing.assert_allclose(al["R"], R, rtol=1e-5)
    assert al["score"] == pytest.approx(np.mean([R[k, j] for k, j in enumerate(best)]), rel=1e-5)
    assert sorted(map(tuple, al["assignment"])) == sorted(enumerate(best))
    assert al["dominant"] == R.argmax(axis=0).tolist()


def test_probes_are_least_squares_ridge_r2_on_the_posterior_means(factored):
    e = factored
    p = e.metrics["probes"]
    N, T, K, d = e.means.shape
    X = e.means.double().numpy().reshape(N * T, K * d)
    targets = torch.cat([e.batch["positions"], e.batch["velocities"]], dim=-1).double().numpy()
    J = targets.shape[2]
    Y = targets.reshape(N * T, J * 4)  # (frames, [digit 1: row, col, v_row, v_col, digit 2: ...])
    per_factor = np.stack([ridge_r2(X[:, k * d:(k + 1) * d], Y, SEED).reshape(J, 4) for k in range(K)])
    everything = ridge_r2(X, Y, SEED).reshape(J, 4)
    np.testing.assert_allclose(p["r2_per_target"], per_factor, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p["r2"], per_factor.mean(-1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p["r2_all_units"], everything, rtol=1e-9, atol=1e-12)


def log_weights(model, frames, z, post_mean, post_logvar, prior_mean, prior_logvar):
    """log p(x | z) + log p(z) − log q(z | x) per sequence, in float64 (B,)."""
    x = frames.double().numpy()
    with torch.no_grad():
        x_mean = model.decode(z).double().numpy()
    z, qm, qv, pm, pv = (t.double().numpy() for t in (z, post_mean, post_logvar, prior_mean, prior_logvar))
    log_px = log_normal(x, x_mean, math.log(model.config.obs_var)).reshape(len(x), -1).sum(1)
    log_pz = log_normal(z, pm, pv).reshape(len(x), -1).sum(1)
    log_qz = log_normal(z, qm, qv).reshape(len(x), -1).sum(1)
    return log_px + log_pz - log_qz


def test_bounds_are_hand_computed_from_the_models_densities(factored):
    """The test ELBO (analytic KL) and the importance-weighted bound (logsumexp of log weights),
    with the noise the evaluation draws: the ELBO's own generator, then one for the bound."""
    e, m = factored, factored.metrics
    T = e.frames.shape[1]
    with torch.no_grad():
        f = e.model.filter(e.frames, generator=torch.Generator().manual_seed(SEED))
        x_mean = e.model.decode(f.z).double().numpy()
    qm, qv, pm, pv = (t.double().numpy() for t in (f.post_mean, f.post_logvar, f.prior_mean, f.prior_logvar))
    ll = log_normal(e.frames.double().numpy(), x_mean, math.log(e.model.config.obs_var))
    ll = ll.reshape(SEQUENCES, -1).sum(1) / T
    kl = (0.5 * (pv - qv + (np.exp(qv) + (qm - pm) ** 2) / np.exp(pv) - 1)).sum(axis=(1, 3)) / T  # (N, K)
    elbo = ll - kl.sum(1)
    assert m["elbo"]["elbo"] == pytest.approx(elbo.mean(), rel=1e-6)
    assert m["elbo"]["elbo_stderr"] == pytest.approx(elbo.std(ddof=1) / math.sqrt(SEQUENCES), rel=1e-4)
    np.testing.assert_allclose(m["elbo"]["kl"], kl.mean(0), rtol=1e-5)

    S, n = IW["iw_samples"], IW["iw_sequences"]
    g = torch.Generator().manual_seed(SEED)  # the evaluation's generator: the bound, then ELBO, ...
    frames = e.frames[:n]
    with torch.no_grad():
        rep = e.model.filter(frames.repeat_interleave(S, dim=0), generator=g)
        same = e.model.filter(frames, generator=g)
    w = log_weights(e.model, frames.repeat_interleave(S, dim=0), rep.z, rep.post_mean, rep.post_logvar,
                    rep.prior_mean, rep.prior_logvar).reshape(n, S)
    bound = np.array([(logsumexp(row) - math.log(S)) / T for row in w])  # (n,)
    with torch.no_grad():
        x_same = e.model.decode(same.z).double().numpy()
    q2, v2, p2, w2 = (t.double().numpy() for t in (same.post_mean, same.post_logvar, same.prior_mean,
                                                    same.prior_logvar))
    ll_same = log_normal(frames.double().numpy(), x_same, math.log(e.model.config.obs_var))
    kl_same = 0.5 * (w2 - v2 + (np.exp(v2) + (q2 - p2) ** 2) / np.exp(w2) - 1)
    elbo_same = (ll_same.reshape(n, -1).sum(1) - kl_same.reshape(n, -1).sum(1)) / T
    iw = m["iwae"]
    assert (iw["samples"], iw["sequences"]) == (S, n)
    assert iw["bound"] == pytest.approx(bound.mean(), rel=1e-6)
    assert iw["stderr"] == pytest.approx(bound.std(ddof=1) / math.sqrt(n), rel=1e-4)
    assert iw["elbo_same_sequences"] == pytest.approx(elbo_same.mean(), rel=1e-6)
    # a difference of two bounds, each known to 1e-6 of itself (float32 sums over the frame)
    assert iw["gain_over_elbo"] == pytest.approx((bound - elbo_same).mean(), rel=1e-4,
                                                  abs=2e-6 * abs(bound.mean()))


def prior_in(states: list[torch.Tensor], order: int) -> torch.Tensor:
    """The transition's input: the last ``order`` states (B, K, d) side by side per factor, oldest
    first, zeros standing for states before the first frame."""
    last = [torch.zeros_like(states[-1])] * max(order - len(states), 0) + states[-order:]
    return torch.cat(last, dim=-1)


def filter_means_step_by_step(model, frames: torch.Tensor) -> list[torch.Tensor]:
    """The posterior means along ``frames``, each step from the encoder, the combiner and the
    prior's view of the means so far (zero vectors at the first step): a list of (B, K, d)."""
    K, d, order = model.factors, model.factor_dim, model.config.transition_order
    features = model.encode_frames(frames)
    states: list[torch.Tensor] = []
    for t in range(frames.shape[1]):
        if not states:
            seen_mean = seen_std = torch.zeros(len(frames), K * d)
        else:
            mean, logvar = model.transition(prior_in(states, order))
            seen_mean, seen_std = mean.flatten(1), torch.exp(0.5 * logvar).flatten(1)
        states.append(model.posterior(features[:, t], seen_mean, seen_std)[0].unflatten(1, (K, d)))
    return states


def test_prediction_is_filter_then_prior_mean_rollout_then_decode(factored):
    """metrics.json's mean-rollout MSE and PSNR per step, from a rollout written out step by step."""
    e, p = factored, factored.metrics["prediction"]
    context, horizon = p["context"], p["horizon"]
    assert (context, horizon, p["sequences"]) == (2, 2, SEQUENCES)
    frames = e.dataset(context + horizon).get_batch(range(SEQUENCES))["frames"]
    model, order = e.model, e.model.config.transition_order
    mse = []
    with torch.no_grad():
        states = filter_means_step_by_step(model, frames[:, :context])
        for h in range(horizon):  # the prior's mean, one step at a time, each decoded alone
            states.append(model.transition(prior_in(states, order))[0])
            x = model.decode(states[-1][:, None])[:, 0].double().numpy()
            mse.append(((x - frames[:, context + h].double().numpy()) ** 2).reshape(len(x), -1).mean(1))
    mse = np.stack(mse, axis=1)  # (N, horizon)
    assert mse.std(0).min() > 1e-4 and abs(mse[:, 1] - mse[:, 0]).max() > 1e-5  # a rollout that moves
    np.testing.assert_allclose(p["mse_mean_rollout"], mse.mean(0), rtol=1e-5)
    np.testing.assert_allclose(p["psnr_mean_rollout"], (10 * np.log10(1 / mse)).mean(0), rtol=1e-6)


def test_copy_last_frame_baseline_is_the_last_observed_frame_held(factored):
    """metrics.json's copy-the-last-frame PSNR per step, by hand from the frames."""
    p = factored.metrics["prediction"]
    context = p["context"]
    frames = factored.dataset(context + p["horizon"]).get_batch(range(SEQUENCES))["frames"].double().numpy()
    last = frames[:, context - 1]
    mse = np.stack([((frames[:, context + h] - last) ** 2).reshape(SEQUENCES, -1).mean(1)
                    for h in range(p["horizon"])], axis=1)  # (N, horizon)
    np.testing.assert_allclose(p["psnr_copy_last"], (10 * np.log10(1 / mse)).mean(0), rtol=1e-6)
    gain = np.asarray(p["psnr_mean_rollout"]) - np.asarray(p["psnr_copy_last"])
    np.testing.assert_allclose(p["psnr_gain_over_copy"], gain, atol=1e-5)


def test_one_step_error_is_the_priors_prediction_of_each_mean_against_staying_put(factored):
    """The prior's squared one-step error against staying put and extrapolating, from a
    step-by-step filter: the latents the evaluation collects, and the ratios over all units
    (a two-step run has no unit above the activity threshold, whose mask is checked apart)."""
    e, one = factored, factored.metrics["motion"]["one_step"]
    model, order = e.model, e.model.config.transition_order
    with torch.no_grad():
        means = filter_means_step_by_step(model, e.frames)  # T × (N, K, d)
        predicted = [model.transition(prior_in(means[:t], order))[0]
                     for t in range(1, len(means))]
    z = torch.stack(means, 1).double().numpy()  # (N, T, K, d)
    lat = collect_latents(model, e.dataset(e.cfg.data.seq_len), seed=SEED)
    np.testing.assert_allclose(lat.means, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lat.prior_means[:, 1:], torch.stack(predicted, 1).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert one["active_units"] == (z.reshape(-1, *z.shape[2:]).var(0) > 0.01).sum(1).tolist()
    T = z.shape[1]
    prior_err = sum(((predicted[t - 1].double().numpy() - z[:, t]) ** 2).sum() for t in range(2, T))
    stay_err = sum(((z[:, t - 1] - z[:, t]) ** 2).sum() for t in range(2, T))
    extrapolated = sum(((2 * z[:, t - 1] - z[:, t - 2] - z[:, t]) ** 2).sum() for t in range(2, T))
    everything = one_step_error(lat.means, lat.prior_means, np.ones(z.shape[2:], dtype=bool))
    assert everything["prior_over_stay"] == pytest.approx(prior_err / stay_err, rel=1e-4)
    assert everything["extrapolate_over_stay"] == pytest.approx(extrapolated / stay_err, rel=1e-4)


def test_velocity_probes_read_one_state_or_the_two_the_prior_reads(factored):
    e, v = factored, factored.metrics["motion"]["velocity"]
    z = e.means.double().numpy()  # (N, T, K, d)
    N, T, K, d = z.shape
    target = e.batch["velocities"][:, 1:].double().numpy().reshape(N * (T - 1), -1)  # (frames, J·2)
    J = target.shape[1] // 2
    pairs = np.concatenate([z[:, :-1], z[:, 1:]], -1)  # (N, T − 1, K, 2d)
    one = np.stack([ridge_r2(z[:, 1:, k].reshape(-1, d), target, SEED).reshape(J, 2).mean(1)
                    for k in range(K)])
    two = np.stack([ridge_r2(pairs[:, :, k].reshape(-1, 2 * d), target, SEED).reshape(J, 2).mean(1)
                    for k in range(K)])
    np.testing.assert_allclose(v["r2_one_state"], one, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(v["r2_two_states"], two, rtol=1e-9, atol=1e-12)


def test_identity_probe_is_a_least_squares_classifier_on_held_out_sequences(factored):
    e, ident = factored, factored.metrics["motion"]["identity"]
    z = e.means.double().numpy()  # (N, T, K, d)
    N, T, K, d = z.shape
    labels = e.batch["labels"].numpy()  # (N, J)
    order = np.random.default_rng(SEED).permutation(N)
    train, test = order[: N // 2], order[N // 2:]
    for k in range(K):
        for j in range(labels.shape[1]):
            X = z[:, :, k].reshape(N, T, d)
            Xtr, Xte = X[train].reshape(-1, d), X[test].reshape(-1, d)
            mean, std = Xtr.mean(0), Xtr.std(0)
            A = np.hstack([np.ones((len(Xtr), 1)), (Xtr - mean) / std])
            Y = np.eye(10)[np.repeat(labels[train, j], T)]
            penalty = np.hstack([np.zeros((d, 1)), math.sqrt(1e-3 * len(Xtr)) * np.eye(d)])
            coef = np.linalg.lstsq(np.vstack([A, penalty]), np.vstack([Y, np.zeros((d, 10))]), rcond=None)[0]
            guess = (np.hstack([np.ones((len(Xte), 1)), (Xte - mean) / std]) @ coef).argmax(1)
            truth = np.repeat(labels[test, j], T)
            assert ident["accuracy"][k][j] == pytest.approx((guess == truth).mean(), abs=1e-12)
            assert ident["chance"][j] == pytest.approx(np.bincount(truth).max() / len(truth))


@pytest.mark.parametrize("name", ["factored", "twin"])
def test_authors_mi_reading_is_the_brute_force_ksg_of_the_last_pairs(name, request):
    """Here all 72 pairs are the 'last 1,000'; test_metrics_other checks the cut itself."""
    e = request.getfixturevalue(name)
    a = e.metrics["mutual_information"]["authors"]
    assert a["pairs"] == len(e.z_t) and a["k"] == 3
    M = np.array([[ksg_brute_force(e.z_t[:, ui], e.z_next[:, uj]) for uj in e.units] for ui in e.units])
    np.testing.assert_allclose(a["matrix_nats"], M, rtol=1e-9, atol=1e-12)
    assert a["cross_one_direction_nats"] == pytest.approx(M[0, 1])


@pytest.mark.parametrize("name", ["factored", "twin"])
def test_active_units_mi_reading_is_the_brute_force_ksg_of_the_units_above_snr_one(name, request):
    """Active: Var over frames of the posterior mean over the mean posterior variance, above 1."""
    e = request.getfixturevalue(name)
    a = e.metrics["mutual_information"]["active"]
    means = e.means.double().numpy().reshape(-1, e.z_t.shape[1])  # (N·T, D)
    snr = np.array([np.var(means[:, u]) / np.mean(e.variances.reshape(len(means), -1)[:, u])
                    for u in range(means.shape[1])])
    np.testing.assert_allclose(a["snr"], snr, rtol=1e-5)  # float32 latents
    units = [[u for u in g if snr[u] > 0.0] for g in e.units]  # the fixture's threshold: every unit
    assert a["units"] == units and a["snr_threshold"] == 0.0 and all(units)
    sequence = np.repeat(np.arange(SEQUENCES), len(e.z_t) // SEQUENCES)
    M = np.array([[ksg_brute_force(e.z_t[:, ui], e.z_next[:, uj], sequence=sequence) if ui and uj else 0.0
                   for uj in units] for ui in units])
    np.testing.assert_allclose(a["matrix_nats"], M, rtol=1e-9, atol=1e-12)
    assert a["same_nats"] == pytest.approx(np.diag(M).mean())
