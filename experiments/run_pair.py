"""Train, evaluate and compare a factored preset and its entangled twin over several seeds.

Every table of docs/RESULTS.md is produced by this script (see experiments/README.md for
the exact commands). Runs are resumable: rerunning the same command continues unfinished
trainings from their checkpoints and skips finished ones, so a long experiment can be
carried over several sessions.

    python experiments/run_pair.py --preset demo --seeds 0 1 2 --out results/demo
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from indpred.compare import write_comparison
from indpred.config import apply_overrides, entangled, get_preset
from indpred.eval.evaluate import evaluate_run, load_metrics
from indpred.train import train

TINY = ["model.width=0.125", "model.factor_dim=4", "model.transition_hidden=32", "data.seq_len=3",
        "data.test_sequences=8", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=0"]


def finished_step(run: Path) -> int | None:
    summary = run / "summary.json"
    return json.loads(summary.read_text())["step"] if summary.is_file() else None


def train_or_resume(cfg, run: Path, steps: int, progress: bool) -> None:
    if finished_step(run) == steps:
        return
    resume = (run / "config.json").is_file()
    train(cfg, run, resume=resume, steps=steps, progress=progress)


def spread(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", help="the factored preset; its twin is derived")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="optimiser steps per run (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", help="prepared video folder (street presets)")
    p.add_argument("--out", required=True)
    p.add_argument("--eval-sequences", type=int, default=256)
    p.add_argument("--no-entangled", action="store_true", help="train the factored model only")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()

    sets = list(args.set) + (TINY if args.tiny else [])
    if args.data:
        sets += ["data.dataset=video", f"data.path={Path(args.data).resolve()}"]
    out = Path(args.out)
    runs: dict[str, list[Path]] = {"factored": [], "entangled": []}
    for seed in args.seeds:
        base = apply_overrides(get_preset(args.preset), [*sets, f"train.seed={seed}", f"data.seed={seed}"])
        steps = args.steps or base.train.steps
        twins = [("factored", base)] + ([] if args.no_entangled else [("entangled", entangled(base))])
        for name, cfg in twins:
            run = out / f"{name}-seed{seed}"
            train_or_resume(cfg, run, steps, not args.no_progress)
            evaluate_run(run, sequences=8 if args.tiny else args.eval_sequences,
                         iw_samples=2 if args.tiny else 10, partitions=2 if args.tiny else 20,
                         progress=not args.no_progress)
            runs[name].append(run)

    all_runs = runs["factored"] + runs["entangled"]
    md, md_path, _ = write_comparison(all_runs, out / "comparison")
    summary = {}
    for name, group in runs.items():
        if not group:
            continue
        ms = [load_metrics(r) for r in group]
        summary[name] = {
            "runs": [str(r) for r in group],
            "elbo": spread([m["elbo"]["elbo"] for m in ms]),
            "same_bits": spread([m["mutual_information"]["same_bits"] for m in ms]),
            "cross_bits": spread([m["mutual_information"]["cross_bits"] for m in ms]),
            "alignment": spread([m["alignment"].get("score") for m in ms]),
            "dominant_distinct": [m["alignment"].get("dominant_distinct") for m in ms],
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(md, end="")
    for name, s in summary.items():
        def fmt(d, digits=2):
            return "—" if d["mean"] is None else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"
        print(f"{name}: ELBO {fmt(s['elbo'], 1)}, MI same {fmt(s['same_bits'])} / cross "
              f"{fmt(s['cross_bits'])} bits, alignment {fmt(s['alignment'], 3)} "
              f"(n = {s['elbo']['n']})")
    print(f"written: {md_path}, {out / 'summary.json'}")


if __name__ == "__main__":
    main()
