"""The sections of ``RUN_DIR/eval/report.html``, built from the metrics dictionary alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indpred.report import Figure, KeyValues, Table, Text


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def report_sections(m: dict[str, Any], out: Path) -> list:
    """The report's sections, in order; figures are read from ``out``."""
    fig = {name: out / paths[0] for name, paths in m["figures"].items()}
    return [
        KeyValues("Run", {"run": m["run"], "preset": m["preset"], "step": m["step"],
                          "factors x units": f"{m['factors']} x {m['factor_dim']}",
                          "split": m["split"], "sequences": m["sequences"], "seed": m["seed"]}),
        _lower_bound_table(m),
        _mutual_information_table(m["mutual_information"]),
        Figure("Correlation structure (Figure 2)", fig["correlation"],
               "Pearson correlation of every unit of z_t with every unit of z_t+1; blocks mark factors."),
        Figure("Mutual information matrix", fig["mutual_information"]),
        Figure("Independent generations (Figure 3)", fig["generations"],
               "Top: data and reconstruction; then one row per factor: all other factors held at "
               "their first-step value, this one follows its posterior."),
        Figure("Independent generations, animated", fig["generations_gif"]),
        *_alignment_sections(m["alignment"], fig),
        *_layer_sections(m.get("layers"), fig),
        *_probe_sections(m, fig),
        *_motion_sections(m.get("motion")),
        *_prediction_sections(m["prediction"], fig),
    ]


def _lower_bound_table(m: dict[str, Any]) -> Table:
    e, iw = m["elbo"], m["iwae"]
    return Table("Lower bound (nats per frame)", ["quantity", "value", "std. error"], [
        ["ELBO", _fmt(e["elbo"], 1), _fmt(e["elbo_stderr"], 1)],
        ["log-likelihood", _fmt(e["log_likelihood"], 1), ""],
        *[[f"KL, factor {i + 1}", _fmt(v), ""] for i, v in enumerate(e["kl"])],
        [f"importance-weighted bound, {iw['samples']} samples ({iw['sequences']} sequences)",
         _fmt(iw["bound"], 1), _fmt(iw["stderr"], 1)],
        ["ELBO on those sequences", _fmt(iw["elbo_same_sequences"], 1), ""],
        ["gain of the importance-weighted bound", _fmt(iw["gain_over_elbo"], 2),
         _fmt(iw["gain_stderr"], 2)],
    ])


def _mutual_information_table(mi: dict[str, Any]) -> Table:
    active = mi.get("active")  # None: evaluated before the third reading existed
    read = active is not None and "skipped" not in active
    return Table(
        f"Mutual information between z_t and z_t+1 (KSG, k = {mi['k']}, {mi['pairs']} pairs)",
        ["", "nats", "bits"], [
            ["same-factor", _fmt(mi["same_nats"]), _fmt(mi["same_bits"])],
            ["cross-factor (both directions)", _fmt(mi["cross_nats"]), _fmt(mi["cross_bits"])],
            ["cross-factor (one direction, i < j)", _fmt(mi["cross_one_direction_nats"]),
             _fmt(mi["cross_one_direction_bits"])],
            *_authors_rows(mi.get("authors")),
            *_active_rows(active),
        ], note=" ".join(filter(None, [
            None if mi["partition"] is None else "Entangled model: units split into groups; the best "
            f"of {mi['partition']['partitions']} random partitions (largest same − cross) is shown.",
            None if mi.get("authors") is None else "Authors' protocol: the same estimator on the "
            f"last {mi['authors']['pairs']} pairs only, as their code measured it.",
            None if not read else "Active units: the same estimator on each factor's "
            "units whose posterior mean varies more than its noise (SNR > "
            f"{active['snr_threshold']:g}, units per factor in brackets), each pair's "
            "neighbours from other sequences only: inactive units are the prior's noise, which hides "
            "information from KSG, and a sequence's own pairs fake dependence (docs/EVALUATION.md)."]))
        or None)


def _authors_rows(a: dict[str, Any] | None) -> list[list[str]]:
    if a is None:  # evaluated before the second reading existed
        return []
    return [[f"same-factor, authors' protocol ({a['pairs']} pairs)", _fmt(a["same_nats"]),
             _fmt(a["same_bits"])],
            ["cross-factor, authors' protocol (both directions)", _fmt(a["cross_nats"]),
             _fmt(a["cross_bits"])],
            ["cross-factor, authors' protocol (i < j)", _fmt(a["cross_one_direction_nats"]),
             _fmt(a["cross_one_direction_bits"])]]


def _active_rows(a: dict[str, Any] | None) -> list[list[str]]:
    if a is None:
        return []
    if "skipped" in a:
        return [["active units", f"skipped: {a['skipped']}", ""]]
    counts = ", ".join(map(str, a["counts"]))
    return [[f"same-factor, active units ({counts})", _fmt(a["same_nats"]), _fmt(a["same_bits"])],
            ["cross-factor, active units (both directions)", _fmt(a["cross_nats"]), _fmt(a["cross_bits"])]]


def _alignment_sections(al: dict[str, Any], fig: dict[str, Path]) -> list:
    if "skipped" in al:
        return [Text("Factor–object alignment", f"Skipped: {al['skipped']}.")]
    return [
        Table("Factor–object alignment", ["score", "chance", "assignment", "dominant factors distinct"], [[
            _fmt(al["score"], 3), _fmt(1.0 / max(len(al["R"]), 1), 3),
            ", ".join(f"factor {k + 1} → digit {j + 1}" for k, j in al["assignment"]),
            str(al["dominant_distinct"])]],
            note="R[k, j]: share of digit j's channel change driven by factor k (normalised per "
                 "digit); score: mean R over a one-to-one assignment (1 = perfect, 1/K = chance)."),
        Figure("Alignment matrix R", fig["alignment"]),
    ]


def _layer_sections(la: dict[str, Any] | None, fig: dict[str, Path]) -> list:
    """What each factor draws, and its track against its digit (absent in older evaluations)."""
    if la is None:
        return []
    if "skipped" in la:
        return [Text("What each factor draws", f"Skipped: {la['skipped']}.")]
    out = [Figure("What each factor draws", fig["layers"],
                  "Top: data; then each factor's own layer of the per-factor generator, as an image "
                  "(sigmoid of the layer; the frame is the sigmoid of the layers' sum)."),
           Figure("What each factor draws, animated", fig["layers_gif"])]
    tr = la["tracking"]
    if "skipped" in tr:
        return [*out, Text("Tracking", f"Skipped: {tr['skipped']}.")]
    rows = [[f"factor {p['factor'] + 1} → digit {p['object'] + 1}", _fmt(p["error_px"]), _fmt(p["median_px"]),
             _fmt(p["within"], 3)] for p in tr["pairs"]]
    rows.append(["all", _fmt(tr["error_px"]), _fmt(tr["median_px"]), _fmt(tr["within"], 3)])
    return [*out, Table("Unsupervised tracking: each factor's layer against its digit",
                        ["pair (the alignment's)", "mean error (px)", "median (px)",
                         f"frames within {tr['within_px']:g} px"], rows,
                        note=f"Track: {la['track']}; digit centre: intensity-weighted centre of its "
                        f"channel in the data; {la['sequences']} sequences.")]


def _probe_sections(m: dict[str, Any], fig: dict[str, Path]) -> list:
    if "skipped" in m.get("probes", {}):
        return [Text("Probes", f"Skipped: {m['probes']['skipped']}.")]
    if "probes" in m:
        return [Figure("Probes: R² of each factor for each digit's position and velocity", fig["probes"])]
    return []


def _motion_sections(mo: dict[str, Any] | None) -> list:
    """The prior's one-step error, velocity and identity probes (absent in older evaluations)."""
    if mo is None:
        return []
    one = mo["one_step"]
    if "skipped" in one:
        return [Text("Motion", f"Skipped: {one['skipped']}.")]
    rows = [["prior's one-step error / stay put", _fmt(one["prior_over_stay"], 3),
             ", ".join(_fmt(v, 3) for v in one["prior_over_stay_per_factor"])],
            ["constant-velocity extrapolation / stay put", _fmt(one["extrapolate_over_stay"], 3),
             ", ".join(_fmt(v, 3) for v in one["extrapolate_over_stay_per_factor"])]]
    v, ident = mo["velocity"], mo["identity"]
    if "skipped" not in v:
        rows += [["velocity probe R² from z_t (best factor per digit)", "",
                  ", ".join(_fmt(x) for x in v["best_one_state"])],
                 ["velocity probe R² from (z_t-1, z_t) (best factor per digit)", "",
                  ", ".join(_fmt(x) for x in v["best_two_states"])],
                 ["digit-identity accuracy (best factor per digit; chance)", "",
                  ", ".join(f"{_fmt(a)} ({_fmt(c)})" for a, c in zip(ident["best"], ident["chance"]))]]
    return [Table(f"Motion and identity (prior of order {mo['order']})",
                  ["measure", "all", "per factor / digit"], rows,
                  note="One-step errors: squared error of the prior's mean of z_t given the posterior "
                  f"means before t, on the active units {one['active_units']}, frames t > "
                  f"{one['first_step']}, over that of z_t-1 (below 1: motion learned).")]


def _prediction_sections(p: dict[str, Any], fig: dict[str, Path]) -> list:
    copy = p.get("psnr_copy_last", [None] * len(p["psnr_mean_rollout"]))
    return [
        Table(f"Prediction after {p['context']} observed frames", ["step", "PSNR mean rollout",
              f"PSNR best of {p['samples']}", "PSNR copy last frame", "MSE mean rollout"],
              [[str(i + 1), _fmt(a), _fmt(b), _fmt(c), _fmt(e, 4)] for i, (a, b, c, e) in enumerate(
                  zip(p["psnr_mean_rollout"], p["psnr_best_of_samples"], copy, p["mse_mean_rollout"]))]),
        Figure("Prediction PSNR per step", fig["prediction_curves"]),
        Figure("Prediction: truth and prior mean rollout", fig["prediction_frames"]),
    ]
