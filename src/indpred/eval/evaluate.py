"""``indpred eval``: every number and figure of the paper's section 3 (and SPEC §4) for one run.

Writes ``RUN_DIR/eval/metrics.json``, the figures (PNG and SVG; PNG grid and GIF for
generations) and ``RUN_DIR/eval/report.html``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from indpred import run as runfolder
from indpred.config import RunConfig
from indpred.data import MovingMNIST
from indpred.errors import UserError
from indpred.eval.elbo import dataset_elbo, importance_weighted_bound
from indpred.eval.generations import (
    channel_change,
    factor_groups,
    independent_generations,
    predict,
    psnr,
)
from indpred.eval.latents import collect_latents
from indpred.lock import run_lock
from indpred.metrics import (
    alignment_score,
    best_partition,
    block_summary,
    lagged_correlation,
    mi_matrix,
    mi_summary,
    probe_matrix,
    probe_r2,
)
from indpred.objective import sequence_elbo
from indpred.report import (
    Figure,
    KeyValues,
    Table,
    Text,
    plot_curves,
    plot_lagged_correlation,
    plot_matrix,
    save_frame_grid,
    save_gif,
    write_report,
)

EVAL_DIR = "eval"
METRICS = "metrics.json"
REPORT = "report.html"
LN2 = math.log(2.0)


def _dataset(cfg: RunConfig, split: str, sequences: int, seed: int, seq_len: int):
    """The evaluation sequences: Moving MNIST, or windows of the run's prepared video."""
    d = cfg.data
    if d.dataset == "video":
        from indpred.data.video import VideoFrames

        return VideoFrames(d.path, split=split, seq_len=seq_len, seed=seed, length=sequences)
    return MovingMNIST(split=split, n_digits=d.n_digits, seq_len=seq_len, colour=d.colour,
                       kinematics=d.kinematics, seed=seed, length=sequences, source=d.mnist)


def _regroup(z: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """(N, K, d) latents → (N, G, size): the units of each group side by side."""
    flat = z.reshape(z.shape[0], -1)
    return np.stack([flat[:, units] for units in groups], axis=1)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate_run(run_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Evaluate the latest checkpoint of ``run_dir`` (options: see :func:`_evaluate`).

    Holds the run folder's lock, so an evaluation never writes beside a training.
    """
    run_dir = Path(run_dir)
    runfolder.load_config(run_dir)  # a clear error for a folder that is not a run
    if _checkpoint_step(run_dir) is None:
        raise UserError(f"{run_dir} has no checkpoint yet; train it first (indpred train ...)")
    with run_lock(run_dir, "evaluation"):
        return _evaluate(run_dir, **options)


def _evaluate(
    run_dir: Path,
    *,
    split: str = "test",
    sequences: int = 256,
    seed: int | None = None,
    k: int = 3,
    iw_samples: int = 10,
    iw_sequences: int = 64,
    partitions: int = 20,
    groups: int | None = None,
    group_size: int | None = None,
    context: int | None = None,
    horizon: int | None = None,
    pred_samples: int = 10,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Every measure for one run; returns the metrics written to ``RUN_DIR/eval``."""
    if split not in ("train", "test"):
        raise UserError(f"--split must be 'train' or 'test', got {split!r}")
    for name, value, least in (("--sequences", sequences, 2), ("--k", k, 1),
                               ("--iw-samples", iw_samples, 1), ("--partitions", partitions, 1)):
        if value < least:
            raise UserError(f"{name} must be >= {least}, got {value}")
    cfg = runfolder.load_config(run_dir)
    model = runfolder.load_model(run_dir, device=device)
    dev = torch.device(device)
    seed = cfg.data.seed if seed is None else seed
    mc = cfg.model
    T = cfg.data.seq_len
    context = T // 2 if context is None else context
    horizon = T - context if horizon is None else horizon
    if context < 1 or horizon < 1:
        raise UserError(f"--context and --horizon must be >= 1 (got {context}, {horizon})")
    out = run_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    stages = tqdm(total=7, disable=not progress, desc=f"eval {run_dir.name}", unit="stage")
    figures: dict[str, list[str]] = {}

    def rel(paths: list[Path] | Path) -> list[str]:
        paths = paths if isinstance(paths, list) else [paths]
        return [str(Path(p).relative_to(out)) for p in paths]

    data = _dataset(cfg, split, sequences, seed, T)
    metrics: dict[str, Any] = {
        "run": str(run_dir), "preset": cfg.preset, "split": split, "sequences": sequences,
        "seed": seed, "factors": mc.factors, "factor_dim": mc.factor_dim,
        "step": _checkpoint_step(run_dir),
    }

    # 1. Lower bound: ELBO per frame and an importance-weighted bound.
    metrics["elbo"] = dataset_elbo(model, data, seed=seed, device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    n_iw = min(iw_sequences, sequences)
    iw, elbo_same = [], []
    for s in range(0, n_iw, 8):
        frames = data.get_batch(range(s, min(n_iw, s + 8)))["frames"].to(dev)
        iw.append(importance_weighted_bound(model, frames, samples=iw_samples, generator=g).cpu())
        with torch.no_grad():
            elbo_same.append(sequence_elbo(model, frames, generator=g).elbo.cpu())
    iw_t = torch.cat(iw).double()
    gap = iw_t - torch.cat(elbo_same).double()  # paired: the same sequences
    metrics["iwae"] = {
        "samples": iw_samples, "sequences": n_iw, "bound": iw_t.mean().item(),
        "stderr": (iw_t.std().item() / math.sqrt(n_iw)) if n_iw > 1 else 0.0,
        "elbo_same_sequences": iw_t.mean().item() - gap.mean().item(),
        "gain_over_elbo": gap.mean().item(),
        "gain_stderr": (gap.std().item() / math.sqrt(n_iw)) if n_iw > 1 else 0.0,
    }
    stages.update()

    # 2. Posterior samples along the sequences; unit groups (factors, or the best partition).
    lat = collect_latents(model, data, seed=seed, device=dev)
    z_t, z_next = lat.pairs()  # (P, K, d) each
    D = mc.z_dim
    partition = None
    if mc.factors == 1:
        n_groups = groups or (mc.twin_factors if mc.twin_factors > 1 else 2)
        size = group_size or D // n_groups
        if n_groups < 2 or size < 1 or n_groups * size > D:
            raise UserError(f"cannot split {D} units into --groups {n_groups} of --group-size {size}")
        partition = best_partition(z_t.reshape(len(z_t), D), z_next.reshape(len(z_next), D),
                                   groups=n_groups, size=size, n_partitions=partitions, seed=seed, k=k)
        unit_groups = [list(map(int, u)) for u in partition["units"]]
    else:
        unit_groups = factor_groups(mc.factors, mc.factor_dim)
    n_groups, size = len(unit_groups), len(unit_groups[0])
    labels = [f"factor {i + 1}" if partition is None else f"group {i + 1}" for i in range(n_groups)]
    stages.update()

    # 3. Correlation structure (Figure 2), units ordered by group.
    order = [u for units in unit_groups for u in units]
    C = lagged_correlation(z_t.reshape(len(z_t), D)[:, order], z_next.reshape(len(z_next), D)[:, order])
    metrics["correlation"] = {"unit_order": order, **block_summary(C, n_groups, size)}
    figures["correlation"] = rel(plot_lagged_correlation(
        C, factors=n_groups, factor_dim=size, out_stem=out / "correlation",
        title=f"corr(z_t, z_t+1), {run_dir.name}"))
    stages.update()

    # 4. Mutual information (Table 2).
    if partition is None:
        M = mi_matrix(z_t, z_next, k=k)
        summary = mi_summary(M)
    else:
        M = np.asarray(partition["matrix"])
        summary = partition["summary"]
    metrics["mutual_information"] = {
        "k": k, "pairs": len(z_t), "matrix_nats": M, **summary,
        "partition": None if partition is None else {
            "groups": n_groups, "size": size, "units": unit_groups, "partitions": partitions,
            "scores_nats": partition["scores"], "best_index": partition["best_index"]},
    }
    figures["mutual_information"] = rel(plot_matrix(
        M / LN2, row_labels=[f"{lab} @ t" for lab in labels],
        col_labels=[f"{lab} @ t+1" for lab in labels], out_stem=out / "mutual_information",
        title="I(z_t^i ; z_t+1^j), bits"))
    stages.update()

    # 5. Independent generations (Figure 3) and factor-object alignment.
    n_gen = min(64, sequences)
    means = torch.from_numpy(lat.means[:n_gen]).to(dev)  # (n, T, K, d)
    gens = independent_generations(model, means, unit_groups)  # (G, n, T, C, H, W)
    truth = data.get_batch(range(n_gen))["frames"].to(dev)
    with torch.no_grad():
        recon = model.decode(means)
    rows = torch.cat([truth[:1], recon[:1], gens[:, 0]]).cpu().numpy()  # (2 + G, T, C, H, W)
    row_labels = ["data", "reconstruction", *[f"{lab} moves" for lab in labels]]
    figures["generations"] = rel(save_frame_grid(rows, row_labels=row_labels,
                                                 out_path=out / "generations.png"))
    figures["generations_gif"] = rel(save_gif(rows, out_path=out / "generations.gif"))
    if cfg.data.dataset == "video":
        metrics["alignment"] = {"skipped": "real video: no ground-truth objects to align factors with"}
    elif cfg.data.colour:
        delta = channel_change(gens, cfg.data.n_digits)  # (G, J)
        metrics["alignment"] = alignment_score(delta)
        R = np.asarray(metrics["alignment"]["R"])
        digit_labels = [f"digit {j + 1} ({'RGB'[j]})" for j in range(cfg.data.n_digits)]
        figures["alignment"] = rel(plot_matrix(
            R, row_labels=labels, col_labels=digit_labels, out_stem=out / "alignment",
            title="R: which factor drives each digit",
            vmin=0, vmax=1))
    else:
        metrics["alignment"] = {"skipped": "grayscale data: digits share one channel, so a "
                                "factor's change cannot be attributed to a digit by channel"}
    stages.update()

    # 6. Probes: each group's posterior means predicting each digit's position and velocity.
    if lat.positions is not None:
        z_all = _regroup(lat.means.reshape(-1, mc.factors, mc.factor_dim), unit_groups)
        targets = np.concatenate([lat.positions, lat.velocities], axis=-1)  # (N, T, J, 4)
        flat_targets = targets.reshape(-1, *targets.shape[2:])  # (N·T, J, 4)
        P = probe_matrix(z_all, flat_targets, seed=seed)
        per_target = np.stack([  # (G + 1, J, 4): each group, then all units together
            probe_r2(z, flat_targets.reshape(len(z), -1), seed=seed).reshape(flat_targets.shape[1:])
            for z in [*z_all.transpose(1, 0, 2), z_all.reshape(len(z_all), -1)]])
        metrics["probes"] = {"r2": P, "targets": ["row", "col", "v_row", "v_col"],
                             "r2_per_target": per_target[:-1], "r2_all_units": per_target[-1],
                             "model": "ridge linear regression, half of the frames held out"}
        figures["probes"] = rel(plot_matrix(
            P, row_labels=labels, col_labels=[f"digit {j + 1}" for j in range(P.shape[1])],
            out_stem=out / "probes", title="probe R², position and velocity",
            vmin=0, vmax=1))
    else:
        metrics["probes"] = {"skipped": "no ground-truth positions or velocities for this data"}
    stages.update()

    # 7. Prediction: observe `context` frames, roll the prior forward `horizon` steps.
    pred_data = _dataset(cfg, split, min(sequences, 64), seed, context + horizon)
    frames = pred_data.get_batch(range(len(pred_data)))["frames"].to(dev)
    pred = predict(model, frames, context=context, samples=pred_samples, generator=g)
    mse_mean = pred["mse_mean"].mean(0).cpu().numpy()
    mse_best = pred["mse_best"].mean(0).cpu().numpy()
    metrics["prediction"] = {
        "context": context, "horizon": horizon, "samples": pred_samples, "sequences": len(frames),
        "mse_mean_rollout": mse_mean, "mse_best_of_samples": mse_best,
        "psnr_mean_rollout": psnr(pred["mse_mean"].cpu().numpy()).mean(0),
        "psnr_best_of_samples": psnr(pred["mse_best"].cpu().numpy()).mean(0),
    }
    steps = np.arange(1, horizon + 1)
    figures["prediction_curves"] = rel(plot_curves(
        steps, {"prior mean rollout": metrics["prediction"]["psnr_mean_rollout"],
                f"best of {pred_samples} samples": metrics["prediction"]["psnr_best_of_samples"]},
        xlabel="steps after the last observed frame", ylabel="PSNR (dB)",
        out_stem=out / "prediction_psnr", title=f"prediction after {context} observed frames"))
    pred_rows = np.stack([frames[0, context:].cpu().numpy(), pred["mean_frames"][0].cpu().numpy()])
    figures["prediction_frames"] = rel(save_frame_grid(
        pred_rows, row_labels=["truth", "prior rollout"], out_path=out / "prediction.png"))
    stages.update()
    stages.close()

    metrics["figures"] = figures
    metrics = _jsonable(metrics)
    tmp = out / f".{METRICS}.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / METRICS)
    write_report(out / REPORT, title=f"indpred evaluation: {run_dir.name}",
                 sections=report_sections(metrics, out), config=cfg.to_dict())
    return metrics


def _checkpoint_step(run_dir: Path) -> int | None:
    from indpred.checkpoint import latest_step

    return latest_step(run_dir / runfolder.CHECKPOINTS)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def report_sections(m: dict[str, Any], out: Path) -> list:
    """The report's sections, built from the metrics dictionary."""
    mi = m["mutual_information"]
    fig = {name: out / paths[0] for name, paths in m["figures"].items()}
    sections: list = [
        KeyValues("Run", {"run": m["run"], "preset": m["preset"], "step": m["step"],
                          "factors x units": f"{m['factors']} x {m['factor_dim']}",
                          "split": m["split"], "sequences": m["sequences"], "seed": m["seed"]}),
        Table("Lower bound (nats per frame)", ["quantity", "value", "std. error"], [
            ["ELBO", _fmt(m["elbo"]["elbo"], 1), _fmt(m["elbo"]["elbo_stderr"], 1)],
            ["log-likelihood", _fmt(m["elbo"]["log_likelihood"], 1), ""],
            *[[f"KL, factor {i + 1}", _fmt(v), ""] for i, v in enumerate(m["elbo"]["kl"])],
            [f"importance-weighted bound, {m['iwae']['samples']} samples "
             f"({m['iwae']['sequences']} sequences)", _fmt(m["iwae"]["bound"], 1),
             _fmt(m["iwae"]["stderr"], 1)],
            ["ELBO on those sequences", _fmt(m["iwae"]["elbo_same_sequences"], 1), ""],
            ["gain of the importance-weighted bound", _fmt(m["iwae"]["gain_over_elbo"], 2),
             _fmt(m["iwae"]["gain_stderr"], 2)],
        ]),
        Table(f"Mutual information between z_t and z_t+1 (KSG, k = {mi['k']}, {mi['pairs']} pairs)",
              ["", "nats", "bits"], [
                  ["same-factor", _fmt(mi["same_nats"]), _fmt(mi["same_bits"])],
                  ["cross-factor (both directions)", _fmt(mi["cross_nats"]), _fmt(mi["cross_bits"])],
                  ["cross-factor (one direction, i < j)", _fmt(mi["cross_one_direction_nats"]),
                   _fmt(mi["cross_one_direction_bits"])],
              ], note=None if mi["partition"] is None else
              "Entangled model: units split into groups; the best of "
              f"{mi['partition']['partitions']} random partitions (largest same − cross) is shown."),
        Figure("Correlation structure (Figure 2)", fig["correlation"],
               "Pearson correlation of every unit of z_t with every unit of z_t+1; blocks mark factors."),
        Figure("Mutual information matrix", fig["mutual_information"]),
        Figure("Independent generations (Figure 3)", fig["generations"],
               "Top: data and reconstruction; then one row per factor: all other factors held at "
               "their first-step value, this one follows its posterior."),
        Figure("Independent generations, animated", fig["generations_gif"]),
    ]
    al = m["alignment"]
    if "skipped" in al:
        sections.append(Text("Factor–object alignment", f"Skipped: {al['skipped']}."))
    else:
        sections.append(Table("Factor–object alignment", ["score", "chance", "assignment",
                                                          "dominant factors distinct"], [[
            _fmt(al["score"], 3), _fmt(1.0 / max(len(al["R"]), 1), 3),
            ", ".join(f"factor {k + 1} → digit {j + 1}" for k, j in al["assignment"]),
            str(al["dominant_distinct"])]],
            note="R[k, j]: share of digit j's channel change driven by factor k (normalised per "
                 "digit); score: mean R over a one-to-one assignment (1 = perfect, 1/K = chance)."))
        sections.append(Figure("Alignment matrix R", fig["alignment"]))
    if "skipped" in m.get("probes", {}):
        sections.append(Text("Probes", f"Skipped: {m['probes']['skipped']}."))
    elif "probes" in m:
        sections.append(Figure("Probes: R² of each factor for each digit's position and velocity",
                               fig["probes"]))
    p = m["prediction"]
    sections += [
        Table(f"Prediction after {p['context']} observed frames", ["step", "PSNR mean rollout",
              f"PSNR best of {p['samples']}", "MSE mean rollout"],
              [[str(i + 1), _fmt(a), _fmt(b), _fmt(c, 4)] for i, (a, b, c) in enumerate(
                  zip(p["psnr_mean_rollout"], p["psnr_best_of_samples"], p["mse_mean_rollout"]))]),
        Figure("Prediction PSNR per step", fig["prediction_curves"]),
        Figure("Prediction: truth and prior mean rollout", fig["prediction_frames"]),
    ]
    return sections


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run's evaluation results, or a one-line error saying how to make them."""
    path = Path(run_dir) / EVAL_DIR / METRICS
    if not path.is_file():
        raise UserError(f"{run_dir} has no evaluation yet; run: indpred eval {run_dir}")
    return json.loads(path.read_text())

