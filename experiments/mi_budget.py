"""Where the paper's same-factor mutual information would come from (issue 16's MI target).

The evaluation reads I(z_t^k ; z_t+1^k) (KSG, k = 3, bits) on posterior samples. This script
puts that reading beside others on the same test sequences, so the gap to the paper's 4.61 bits
can be split into its parts:

- ``samples``: the evaluation's reading (the same numbers as ``indpred eval``);
- ``means``: the posterior means instead of samples (what the code holds without the
  posterior's sampling noise);
- ``samples + class``: each factor's sample with its digit's class appended (one-hot, far
  apart, so that KSG's neighbours never mix classes): what a factor that also knew which
  digit it carries would read. In theory a class independent of the state adds H(class),
  log2(10) bits for uniform classes; KSG at a thousand pairs credits less (it saturates);
- ``truth`` and ``truth + class``: each digit's ground-truth position (row, column) as a
  two-unit "factor": what a perfect position code would read with the same estimator;
- per factor, the posterior's signal-to-noise ratio Var(mean) / E[variance] per unit, the
  count of units above 1 and the Gaussian-channel bound sum 0.5 log2(1 + SNR) on what one
  sample can tell about its own mean (bits per frame).

Factors are matched to digits by the position probe (Hungarian assignment on its R²).
Colour Moving MNIST only (it needs positions and labels); factored models only.

    python experiments/mi_budget.py results/o2-perfactor/factored-seed1 --pretrained mmnist-cpu \
        --out experiments/records/mi-budget.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from indpred import run as runfolder
from indpred.checkpoint import latest_step
from indpred.data.factory import make_dataset
from indpred.errors import UserError
from indpred.eval.dependence import ACTIVE_SNR, unit_snr
from indpred.eval.latents import collect_latents
from indpred.metrics import ksg_mi, ksg_mi_across, mi_summary, probe_matrix

CLASSES = 10
FAR = 1e4  # the one-hot's scale over standardised units: classes never share a neighbourhood


def standardised(z: np.ndarray) -> np.ndarray:
    """(P, G, u) → the same with every unit centred and scaled to unit variance (constant: 1)."""
    std = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)


def with_class(z: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(P, G, u) standardised units and (P, G) integer classes → (P, G, u + 10): each group's
    units with its class one-hot, scaled so far apart that no KSG neighbourhood spans two classes."""
    one_hot = np.eye(CLASSES)[classes] * FAR  # (P, G, 10)
    return np.concatenate([z, one_hot], axis=-1)


def reading(z_t: np.ndarray, z_next: np.ndarray, sequence: np.ndarray | None,
            units: list[np.ndarray] | None = None, k: int = 3) -> dict[str, float]:
    """Same- and cross-group KSG MI in bits of already standardised (P, G, u) pairs, each group
    read on all its units or on ``units[g]`` (indices; a group with none reads 0); plain KSG
    with ``sequence`` None, else neighbours from other sequences only (``ksg_mi_across``)."""
    G = z_t.shape[1]
    units = units or [np.arange(z_t.shape[2])] * G

    def mi(x: np.ndarray, y: np.ndarray) -> float:
        if sequence is None:
            return ksg_mi(x, y, k=k, standardize=False)
        return ksg_mi_across(x, y, sequence, k=k, standardize=False)

    M = np.array([[mi(z_t[:, i, units[i]], z_next[:, j, units[j]]) if len(units[i]) and len(units[j])
                   else 0.0 for j in range(G)] for i in range(G)])
    s = mi_summary(M)
    return {"same": s["same_bits"], "cross": s["cross_bits"]}


def channel(means: np.ndarray, variances: np.ndarray) -> dict[str, list]:
    """Per factor of (M, K, d) posterior means and variances: the active units (SNR > 1, as
    ``indpred eval`` selects them), their median SNR and the Gaussian-channel bound
    sum 0.5 log2(1 + SNR) in bits per frame."""
    snr = unit_snr(means, variances).reshape(means.shape[1:])  # (K, d)
    return {"active": [np.flatnonzero(s > ACTIVE_SNR).tolist() for s in snr],
            "active_units": (snr > ACTIVE_SNR).sum(axis=1).tolist(),
            "median_active_snr": [float(np.median(s[s > ACTIVE_SNR])) if (s > ACTIVE_SNR).any()
                                  else 0.0 for s in snr],
            "channel_bits": (0.5 * np.log2(1.0 + snr)).sum(axis=1).tolist()}


def budget(run_dir: Path, sequences: int) -> dict:
    """Every reading of one run (its latest checkpoint) on all (z_t, z_t+1) pairs of
    ``sequences`` test sequences: by plain KSG (the evaluation's protocol) and with each pair's
    neighbours from other sequences only."""
    cfg = runfolder.load_config(run_dir)
    d = cfg.data
    if cfg.model.factors < 2:
        raise UserError(f"{run_dir}: an entangled model (K = 1) has no factors to read; give a factored run")
    if d.dataset != "mmnist" or not d.colour:
        raise UserError(f"{run_dir}: needs colour Moving MNIST (positions and labels); it was trained on "
                        f"{d.dataset}{'' if d.colour else ' (grayscale)'}")
    model = runfolder.load_model(run_dir)
    lat = collect_latents(model, make_dataset(d, "test", sequences, seed=d.seed, seq_len=d.seq_len),
                          seed=d.seed)
    N, T, K, _ = lat.samples.shape
    R2 = probe_matrix(lat.means.reshape(N * T, K, -1),
                      lat.positions.reshape(N * T, *lat.positions.shape[2:]), seed=d.seed)  # (K, J)
    if K != R2.shape[1]:
        raise UserError(f"{run_dir}: {K} factors for {R2.shape[1]} digits; the readings pair each "
                        "factor with one digit, so they need as many factors as digits")
    factors, digits = linear_sum_assignment(-R2)
    digit_of = [dict(zip(factors.tolist(), digits.tolist()))[k] for k in range(K)]
    posterior = channel(lat.means.reshape(N * T, K, -1), lat.variances.reshape(N * T, K, -1))
    active = [np.asarray(a, dtype=int) for a in posterior["active"]]

    def pairs(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (N, T, G, u) → (P, G, u) twice
        flat = a.shape[2:]
        return standardised(a[:, :-1].reshape(-1, *flat)), standardised(a[:, 1:].reshape(-1, *flat))

    classes = np.repeat(lat.labels[:, None, :], T - 1, axis=1).reshape(N * (T - 1), -1)  # (P, J)
    s_t, s_n = pairs(lat.samples)
    m_t, m_n = pairs(lat.means)
    g_t, g_n = pairs(lat.positions)  # (P, J, 2): each digit's (row, col)
    c_t, c_n = with_class(s_t, classes[:, digit_of]), with_class(s_n, classes[:, digit_of])
    # a factor with no active unit reads nothing, its class alone neither
    with_columns = [np.concatenate([a, s_t.shape[2] + np.arange(CLASSES)]) if len(a) else a for a in active]
    out: dict = {"run": str(run_dir), "step": latest_step(run_dir / runfolder.CHECKPOINTS),
                 "pairs": N * (T - 1),
                 "transition_order": cfg.model.transition_order, "decoder": cfg.model.decoder,
                 "kinematics": d.kinematics, "digit_of_factor": digit_of, "position_r2": R2.tolist(),
                 "posterior": posterior}
    for protocol, sequence in (("plain", None), ("across", np.repeat(np.arange(N), T - 1))):
        out[protocol] = {
            "samples": reading(s_t, s_n, sequence), "means": reading(m_t, m_n, sequence),
            "samples_active": reading(s_t, s_n, sequence, active),
            "means_active": reading(m_t, m_n, sequence, active),
            "samples_active_class": reading(c_t, c_n, sequence, with_columns),
            "truth": reading(g_t, g_n, sequence),
            "truth_class": reading(with_class(g_t, classes), with_class(g_n, classes), sequence)}
    return out


KEYS = ("samples", "means", "samples_active", "means_active", "samples_active_class", "truth",
        "truth_class")


def table(rows: list[dict]) -> str:
    """The readings as a markdown table (same / cross, bits), a line per run and protocol."""
    lines = ["| run | order, generator | KSG | samples | means | samples, active units "
             "| means, active units | samples (active) + class | truth | truth + class "
             "| units SNR > 1 | median SNR | channel bits |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["posterior"]
        for protocol, label in (("plain", "plain"), ("across", "across sequences")):
            cells = [f"{r[protocol][key]['same']:.2f} / {r[protocol][key]['cross']:.2f}" for key in KEYS]
            lines.append(
                f"| {r['name']} | {r['transition_order']}, {r['decoder']}"
                f"{', ' + r['kinematics'] if r['kinematics'] != 'standard' else ''} "
                f"| {label} | {' | '.join(cells)} "
                f"| {', '.join(map(str, p['active_units']))} "
                f"| {', '.join(f'{v:.0f}' for v in p['median_active_snr'])} "
                f"| {', '.join(f'{v:.1f}' for v in p['channel_bits'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="run folders (factored, colour Moving MNIST)")
    p.add_argument("--pretrained", action="append", default=[], metavar="NAME",
                   help="a shipped model (repeatable)")
    p.add_argument("--sequences", type=int, default=128, help="test sequences (default 128, as the tables)")
    p.add_argument("--out", type=Path, help="write every reading here as JSON")
    args = p.parse_args(argv)
    if not args.runs and not args.pretrained:
        p.error("give run folders or --pretrained NAME")
    torch.set_num_threads(1)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            from indpred.pretrained import materialise

            named = [(str(r), r) for r in args.runs]
            named += [(f"pretrained {n}", materialise(n, Path(tmp) / n)) for n in args.pretrained]
            for name, run_dir in named:
                rows.append({"name": name, **budget(run_dir, args.sequences)})
    except UserError as e:
        print(f"mi_budget: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    print(f"\nKSG k = 3 on every (z_t, z_t+1) pair, bits (same / cross), plain or with neighbours from "
          f"other sequences only; a uniform class independent of the state would add log2(10) = "
          f"{math.log2(CLASSES):.2f} bits in theory")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
