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

from indpred.checkpoint import latest_step
from indpred.compare import write_comparison
from indpred.config import apply_overrides, entangled, get_preset
from indpred.eval.evaluate import evaluate_run, load_metrics
from indpred.train import train

TINY = ["model.width=0.125", "model.factor_dim=4", "model.transition_hidden=32", "data.seq_len=3",
        "data.test_sequences=8", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=0"]


def recorded_step(path: Path) -> int | None:
    """The step a run's summary.json (trained) or eval/metrics.json (evaluated) records."""
    return json.loads(path.read_text())["step"] if path.is_file() else None


def train_or_resume(cfg, run: Path, steps: int, progress: bool) -> None:
    """Train ``run`` to ``steps`` (resuming it if it has begun); a run stopped by a signal ends
    the script there, neither evaluated nor recorded (its checkpoint resumes it)."""
    if recorded_step(run / "summary.json") == steps:
        return
    resume = (run / "config.json").is_file()
    result = train(cfg, run, resume=resume, steps=steps, progress=progress)
    if result.stopped_early:
        raise SystemExit(f"run_pair: {run} stopped at step {result.step} of {steps}; its checkpoint "
                         "is saved: run the same command again to resume it")


def keep_record(run: Path, folder: Path) -> Path:
    """One JSON file with what a run's tables need: its config, summary and evaluation."""
    record = {name: json.loads((run / path).read_text()) if (run / path).is_file() else None
              for name, path in (("config", "config.json"), ("summary", "summary.json"),
                                 ("eval", "eval/metrics.json"))}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{run.name}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out


def spread(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def targets(f: dict, e: dict, alignment_target: float) -> list[dict]:
    """The issue's targets on seed means: ELBO within 1 %, same >= 5x cross, cross <= half the
    entangled best partition's, alignment >= the target (entangled alignment given beside it)."""
    def mean(d: dict, key: str) -> float | None:
        return d[key]["mean"]

    rows = []
    fe, ee = mean(f, "elbo"), mean(e, "elbo")
    if fe is not None and ee is not None:
        gap = (fe - ee) / abs(ee)  # > 0: the factored bound is the higher (better) one
        rows.append({"target": "factored ELBO within 1 % of entangled (or above it)",
                     "value": f"{fe - ee:+.1f} nats/frame ({100 * gap:+.2f} %)", "met": gap >= -0.01})
    fs, fc, ec = mean(f, "same_bits"), mean(f, "cross_bits"), mean(e, "cross_bits")
    if fs is not None and fc is not None:
        ratio = fs / fc if fc > 0 else float("inf")
        rows.append({"target": "factored same-factor MI >= 5 x its cross-factor MI",
                     "value": f"{fs:.2f} / {fc:.2f} = {ratio:.1f} x", "met": ratio >= 5})
    if fc is not None and ec is not None:
        rows.append({"target": "factored cross MI <= half the entangled best partition's",
                     "value": f"{fc:.2f} vs {ec:.2f} bits ({fc / ec:.2f} x)" if ec else f"{fc:.2f} vs 0",
                     "met": ec > 0 and fc <= 0.5 * ec})
    fa, ea = mean(f, "alignment"), mean(e, "alignment")
    if fa is not None:
        value = f"{fa:.3f} (entangled best partition: {'—' if ea is None else f'{ea:.3f}'})"
        rows.append({"target": f"factored alignment >= {alignment_target}, factors on different digits",
                     "value": value, "met": fa >= alignment_target and all(f["dominant_distinct"])})
    return rows


def targets_markdown(rows: list[dict]) -> str:
    lines = ["| target (seed means) | value | met |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['value']} | {'yes' if r['met'] else 'no'} |" for r in rows]
    return "\n".join(lines) + "\n"


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
    p.add_argument("--entangled-only", action="store_true",
                   help="train the entangled twins only (so that a second process can train them "
                        "beside one running --no-entangled on the same --out)")
    p.add_argument("--entangled-seeds", type=int, nargs="+", metavar="SEED",
                   help="train the entangled twin for these of --seeds only (default: all)")
    p.add_argument("--alignment-target", type=float, default=0.95,
                   help="alignment the factored model should reach (the issue: 0.95; 0.9 for the demo)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: evaluate the runs in --out at the step each reached (runs "
                        "trained elsewhere, e.g. by experiments/gpu_pair.sh) and assemble the tables")
    p.add_argument("--record", metavar="DIR",
                   help="also keep each evaluated run's config, training summary and evaluation as one "
                        "small JSON file DIR/RUN.json (commit it: run folders do not outlive a session)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if args.no_entangled and args.entangled_only:
        p.error("--no-entangled and --entangled-only leave nothing to train; give one of them")

    sets = list(args.set) + (TINY if args.tiny else [])
    if args.data:
        sets += ["data.dataset=video", f"data.path={Path(args.data).resolve()}"]
    out = Path(args.out)
    runs: dict[str, list[Path]] = {"factored": [], "entangled": []}
    for seed in args.seeds:
        base = apply_overrides(get_preset(args.preset), [*sets, f"train.seed={seed}", f"data.seed={seed}"])
        steps = args.steps or base.train.steps
        with_twin = not args.no_entangled and (args.entangled_seeds is None or seed in args.entangled_seeds)
        twins = [] if args.entangled_only else [("factored", base)]
        twins += [("entangled", entangled(base))] if with_twin else []
        for name, cfg in twins:
            run = out / f"{name}-seed{seed}"
            if args.no_train:  # the step of its last checkpoint, else the step it was evaluated at
                steps = latest_step(run / "checkpoints") or recorded_step(run / "eval" / "metrics.json")
                if steps is None:
                    raise SystemExit(f"run_pair: {run} has neither an evaluation nor a checkpoint; "
                                     "train it first (or drop --no-train)")
            else:
                train_or_resume(cfg, run, steps, not args.no_progress)
            if recorded_step(run / "eval" / "metrics.json") != steps:  # not evaluated after its last step yet
                evaluate_run(run, sequences=8 if args.tiny else args.eval_sequences,
                             iw_samples=2 if args.tiny else 10, partitions=2 if args.tiny else 20,
                             progress=not args.no_progress)
            runs[name].append(run)
            if args.record:
                keep_record(run, Path(args.record))

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
    if "factored" in summary and "entangled" in summary:
        summary["targets"] = targets(summary["factored"], summary["entangled"], args.alignment_target)
        (out / "targets.md").write_text(targets_markdown(summary["targets"]))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(md, end="")
    if "targets" in summary:
        print(targets_markdown(summary["targets"]), end="")
    for name in (n for n in runs if n in summary):
        s = summary[name]

        def fmt(d, digits=2):
            return "—" if d["mean"] is None else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"
        print(f"{name}: ELBO {fmt(s['elbo'], 1)}, MI same {fmt(s['same_bits'])} / cross "
              f"{fmt(s['cross_bits'])} bits, alignment {fmt(s['alignment'], 3)} "
              f"(n = {s['elbo']['n']})")
    print(f"written: {md_path}, {out / 'summary.json'}")


if __name__ == "__main__":
    main()
