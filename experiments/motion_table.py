"""The motion issue's table (docs/RESULTS.md) from run records or evaluated run folders.

    python experiments/motion_table.py experiments/records/*/factored-seed*.json
    python experiments/motion_table.py results/o2-shared/factored-seed0      # a run folder

One row per run: the prior's order and generator, alignment, each digit's best position
probe R², the prior's one-step error over "stay put" (and constant-velocity extrapolation's),
the rollout's PSNR gain over copying the last frame (worst and best horizon), the velocity
probes from one state and from two, digit identity against chance, same/cross MI on all
pairs, under the authors' protocol and on the active units across sequences, the ELBO and the
training time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

COLUMNS = ["run", "order, generator", "alignment", "position R² (digit 1, 2)", "one-step / stay",
           "extrapolate / stay", "rollout − copy (dB)", "velocity R² z_t ; (z_t-1, z_t)",
           "identity (chance)", "MI same / cross", "authors' same / cross", "active units same / cross",
           "ELBO", "train (min)"]


def load(path: Path) -> tuple[str, dict[str, Any]]:
    """A record (experiments/run_pair.py --record) or a run folder, as one record dict."""
    if path.is_dir():
        record = {name: json.loads((path / f).read_text()) if (path / f).is_file() else None
                  for name, f in (("config", "config.json"), ("summary", "summary.json"),
                                  ("eval", "eval/metrics.json"))}
        return f"{path.parent.name}/{path.name}", record
    return f"{path.parent.name}/{path.stem}", json.loads(path.read_text())


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def row(name: str, r: dict[str, Any]) -> list[str]:
    m, cfg, summary = r["eval"], r["config"], r["summary"] or {}
    model = cfg["model"]
    mi, al, mo, pred = m["mutual_information"], m.get("alignment", {}), m.get("motion", {}), m["prediction"]
    per_target = m["probes"].get("r2_per_target")  # (G, J, 4): row, col, v_row, v_col
    position = ([max((g[j][0] + g[j][1]) / 2 for g in per_target) for j in range(len(per_target[0]))]
                if per_target else [])
    one, vel, ident = mo.get("one_step", {}), mo.get("velocity", {}), mo.get("identity", {})
    gain = pred.get("psnr_gain_over_copy")
    authors = mi.get("authors") or {}
    active = mi.get("active") or {}  # evaluated before this reading: —
    seconds = summary.get("train_seconds")
    restarts = len(summary.get("restarts", []))
    return [
        name + (f" ({restarts} restart{'s' * (restarts > 1)})" if restarts else ""),
        f"{model.get('transition_order', 1)}, {model['decoder']}"
        + (", circular arena" if cfg["data"].get("kinematics") == "circular" else ""),
        fmt(al.get("score"), 3), ", ".join(fmt(p) for p in position) or "—",
        fmt(one.get("prior_over_stay"), 3), fmt(one.get("extrapolate_over_stay"), 3),
        f"{min(gain):+.2f} … {max(gain):+.2f}" if gain else "—",
        (", ".join(fmt(v) for v in vel["best_one_state"]) + " ; "
         + ", ".join(fmt(v) for v in vel["best_two_states"])) if "best_one_state" in vel else "—",
        (", ".join(fmt(a) for a in ident["best"]) + f" ({fmt(max(ident['chance']))})")
        if "best" in ident else "—",
        f"{fmt(mi['same_bits'])} / {fmt(mi['cross_bits'])}",
        f"{fmt(authors.get('same_bits'))} / {fmt(authors.get('cross_bits'))}",
        f"{fmt(active.get('same_bits'))} / {fmt(active.get('cross_bits'))}",
        f"{m['elbo']['elbo']:.1f} ± {m['elbo']['elbo_stderr']:.1f}",
        fmt(seconds / 60, 0) if seconds else "—",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="records (.json) or evaluated run folders")
    args = p.parse_args()
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for path in map(Path, args.runs):
        lines.append("| " + " | ".join(row(*load(path))) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
