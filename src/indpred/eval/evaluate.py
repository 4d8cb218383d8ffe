"""``indpred eval``: every number and figure of the paper's section 3 (and SPEC §4) for one run.

Writes ``RUN_DIR/eval/metrics.json``, the figures (PNG and SVG; PNG grid and GIF for
generations) and ``RUN_DIR/eval/report.html``. Each stage lives with what it measures:
the bounds in :mod:`~indpred.eval.elbo`, the unit groups in :mod:`~indpred.eval.groups`,
correlation and mutual information in :mod:`~indpred.eval.dependence`, generations,
alignment and probes in :mod:`~indpred.eval.objects`, what each factor draws and its
track in :mod:`~indpred.eval.layers`, motion and identity in
:mod:`~indpred.eval.motion`, prediction in
:mod:`~indpred.eval.prediction`, the report's sections in :mod:`~indpred.eval.sections`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from indpred import run as runfolder
from indpred.data.factory import make_dataset
from indpred.errors import UserError
from indpred.eval.context import EvalContext
from indpred.eval.dependence import correlation_metrics, mutual_information_metrics, unit_snr
from indpred.eval.elbo import lower_bound_metrics
from indpred.eval.groups import unit_groups
from indpred.eval.latents import collect_latents
from indpred.eval.layers import layer_metrics
from indpred.eval.motion import motion_metrics
from indpred.eval.objects import alignment_metrics, generations, probe_metrics
from indpred.eval.prediction import prediction_metrics
from indpred.eval.sections import report_sections
from indpred.fileio import write_text_atomic
from indpred.lock import run_lock
from indpred.report import write_report

EVAL_DIR = "eval"
METRICS = "metrics.json"
REPORT = "report.html"
# bounds, latents and groups, correlation, MI, generations, alignment and layers, probes, motion,
# prediction
STAGES = 8


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


def _check_options(split: str, **least_values: tuple[int, int]) -> None:
    """One-line errors for a bad split or a count below its least value (``--name``: (value, least))."""
    if split not in ("train", "test"):
        raise UserError(f"--split must be 'train' or 'test', got {split!r}")
    for name, (value, least) in least_values.items():
        if value < least:
            raise UserError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")


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
    _check_options(split, sequences=(sequences, 2), k=(k, 1), iw_samples=(iw_samples, 1),
                   partitions=(partitions, 1))
    ctx = _context(run_dir, split, sequences, seed, device)
    T = ctx.cfg.data.seq_len
    context = T // 2 if context is None else context
    horizon = T - context if horizon is None else horizon
    if context < 1 or horizon < 1:
        raise UserError(f"--context and --horizon must be >= 1 (got {context}, {horizon})")
    ctx.out.mkdir(exist_ok=True)
    stages = tqdm(total=STAGES, disable=not progress, desc=f"eval {run_dir.name}", unit="stage")
    mc = ctx.cfg.model
    metrics: dict[str, Any] = {
        "run": str(run_dir), "preset": ctx.cfg.preset, "split": split, "sequences": sequences,
        "seed": ctx.seed, "factors": mc.factors, "factor_dim": mc.factor_dim,
        "step": _checkpoint_step(run_dir),
        **lower_bound_metrics(ctx, iw_samples=iw_samples, iw_sequences=iw_sequences),
    }
    stages.update()
    lat = collect_latents(ctx.model, ctx.data, seed=ctx.seed, device=ctx.device)
    z_t, z_next = lat.pairs()  # (P, K, d) each: posterior samples at t and t+1
    ug = unit_groups(mc, z_t, z_next, groups=groups, group_size=group_size, partitions=partitions,
                     seed=ctx.seed, k=k)
    stages.update()
    metrics["correlation"] = correlation_metrics(ctx, z_t, z_next, ug)
    stages.update()
    metrics["mutual_information"] = mutual_information_metrics(
        ctx, z_t, z_next, ug, k=k, partitions=partitions, snr=unit_snr(lat.means, lat.variances),
        sequence=lat.pair_sequences())
    stages.update()
    metrics["alignment"] = alignment_metrics(ctx, generations(ctx, lat, ug), ug)
    metrics["layers"] = layer_metrics(ctx, lat, metrics["alignment"])
    stages.update()
    metrics["probes"] = probe_metrics(ctx, lat, ug)
    stages.update()
    metrics["motion"] = motion_metrics(ctx, lat, ug)
    stages.update()
    metrics["prediction"] = prediction_metrics(ctx, split=split, sequences=sequences, context=context,
                                               horizon=horizon, samples=pred_samples)
    stages.update()
    stages.close()
    metrics["figures"] = ctx.figures
    return _write_results(ctx, metrics)


def _context(run_dir: Path, split: str, sequences: int, seed: int | None, device: str
             ) -> EvalContext:
    """The run's config, model (latest valid checkpoint) and evaluation sequences."""
    cfg = runfolder.load_config(run_dir)
    model = runfolder.load_model(run_dir, device=device)
    dev = torch.device(device)
    seed = cfg.data.seed if seed is None else seed
    data = make_dataset(cfg.data, split, sequences, seed=seed, seq_len=cfg.data.seq_len)
    return EvalContext(run_dir=run_dir, cfg=cfg, model=model, device=dev, data=data, seed=seed,
                       out=run_dir / EVAL_DIR, noise=torch.Generator(device=dev).manual_seed(seed))


def _write_results(ctx: EvalContext, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` (atomically) and the report; returns the metrics as written."""
    metrics = _jsonable(metrics)
    write_text_atomic(ctx.out / METRICS, json.dumps(metrics, indent=2) + "\n")
    write_report(ctx.out / REPORT, title=f"indpred evaluation: {ctx.run_dir.name}",
                 sections=report_sections(metrics, ctx.out), config=ctx.cfg.to_dict())
    return metrics


def _checkpoint_step(run_dir: Path) -> int | None:
    from indpred.checkpoint import latest_step

    return latest_step(run_dir / runfolder.CHECKPOINTS)


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run's evaluation results, or a one-line error saying how to make them."""
    path = Path(run_dir) / EVAL_DIR / METRICS
    if not path.is_file():
        raise UserError(f"{run_dir} has no evaluation yet; run: indpred eval {run_dir}")
    return json.loads(path.read_text())
