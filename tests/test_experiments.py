"""The experiment scripts run end to end on a tiny setting (and resume when rerun)."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "run_pair.py"), *argv],
                          capture_output=True, text=True, timeout=600)


def test_run_pair_tiny_then_rerun_skips_finished_runs(tmp_path):
    out = tmp_path / "pair"
    first = run("--tiny", "--seeds", "0", "1", "--steps", "2", "--out", str(out), "--no-progress")
    assert first.returncode == 0, first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["factored"]["elbo"]["n"] == 2 and summary["entangled"]["elbo"]["n"] == 2
    assert "paper: Moving MNIST, two factors" in (out / "comparison.md").read_text()
    targets = summary["targets"]  # the four targets, each judged from the seed means
    assert len(targets) == 4 and all(isinstance(t["met"], bool) for t in targets)
    f, e = summary["factored"], summary["entangled"]
    gap = (f["elbo"]["mean"] - e["elbo"]["mean"]) / abs(e["elbo"]["mean"])
    assert targets[0]["met"] == (gap >= -0.01)
    assert "| met |" in (out / "targets.md").read_text()
    mtime = (out / "factored-seed0" / "summary.json").stat().st_mtime
    again = run("--tiny", "--seeds", "0", "1", "--entangled-seeds", "1", "--steps", "3", "--out", str(out),
                "--no-progress")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "factored-seed0" / "summary.json").read_text())["step"] == 3
    assert json.loads((out / "entangled-seed0" / "summary.json").read_text())["step"] == 2  # left alone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["factored"]["elbo"]["n"] == 2 and summary["entangled"]["runs"] == [
        str(out / "entangled-seed1")]
    assert (out / "factored-seed0" / "summary.json").stat().st_mtime > mtime


def test_run_pair_stopped_by_a_signal_is_neither_evaluated_nor_recorded(tmp_path):
    out, records = tmp_path / "pair", tmp_path / "records"
    args = [sys.executable, str(ROOT / "experiments" / "run_pair.py"), "--tiny", "--seeds", "0",
            "--no-entangled", "--steps", "5000", "--out", str(out), "--record", str(records), "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "factored-seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 3) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "stopped at step" in err and "run the same command again" in err, err
    assert (out / "factored-seed0" / "checkpoints").is_dir()
    assert not (out / "factored-seed0" / "eval").exists() and not records.exists()


def test_entangled_only_trains_the_twins_alone_and_refuses_to_train_nothing(tmp_path):
    out = tmp_path / "pair"
    done = run("--tiny", "--seeds", "0", "--steps", "2", "--entangled-only", "--out", str(out),
               "--no-progress", "--record", str(tmp_path / "records"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "records" / "entangled-seed0.json").read_text())
    assert record["eval"] == json.loads((out / "entangled-seed0" / "eval" / "metrics.json").read_text())
    assert record["config"]["model"]["factors"] == 1 and record["summary"]["step"] == 2
    table = subprocess.run([sys.executable, str(ROOT / "experiments" / "motion_table.py"),
                            str(tmp_path / "records" / "entangled-seed0.json"), str(out / "entangled-seed0")],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.strip().splitlines()[2:]  # a row each, the record's and the folder's alike
    assert len(rows) == 2 and rows[0].split("|")[2:] == rows[1].split("|")[2:]
    assert f"{record['eval']['elbo']['elbo']:.1f}" in rows[0]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["entangled-seed0"]
    assert list(json.loads((out / "summary.json").read_text())) == ["entangled"]
    both = run("--tiny", "--no-entangled", "--entangled-only", "--out", str(out))
    assert both.returncode == 2 and "leave nothing to train" in both.stderr


def test_gpu_pair_trains_evaluates_and_packs_then_run_pair_assembles_without_training(tmp_path):
    out, runs, unpacked = tmp_path / "out", tmp_path / "runs", tmp_path / "unpacked"
    env = {**os.environ, "DEVICE": "cpu", "SMOKE": "1", "OUT": str(out), "RUNS": str(runs),
           "PYTHON": sys.executable, "MNIST": str(tmp_path / "none"), "SEEDS": "0 1"}
    done = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_pair.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = [f"pair/{kind}-seed{s}" for s in range(2) for kind in ("factored", "entangled")]
    names.append("perfactor/factored-seed0")
    # the packed run folders: every run evaluated at its last step, no weights inside
    unpacked.mkdir()
    packed = b"".join(p.read_bytes() for p in sorted(out.glob("runs.tar.gz.part*")))
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
        assert not [m.name for m in tar.getmembers() if m.name.endswith(".safetensors")]
        tar.extractall(unpacked, filter="data")
    for name in names:
        assert json.loads((unpacked / name / "eval" / "metrics.json").read_text())["step"] == 2, name
    assert json.loads((unpacked / "perfactor/factored-seed0/config.json").read_text())["model"]["decoder"] \
        == "per-factor"
    # the weights of the paper configuration's seed 0, in parts that join to the checkpoint's file
    parts = sorted(out.glob("weights-pair-factored-seed0-step-00000002.part*"))
    weights = runs / "pair/factored-seed0/checkpoints/step-00000002/model.safetensors"
    assert parts and b"".join(p.read_bytes() for p in parts) == weights.read_bytes()
    assert "gpu-pair.log" in {p.name for p in out.iterdir()}
    # the tables, from the evaluations alone: nothing is trained or evaluated again
    pair = unpacked / "pair"
    before = (pair / "factored-seed1" / "eval" / "metrics.json").stat().st_mtime_ns
    table = run("--preset", "mmnist-2f", "--seeds", "0", "1", "--no-train", "--out", str(pair),
                "--no-progress")
    assert table.returncode == 0, table.stderr
    summary = json.loads((pair / "summary.json").read_text())
    assert summary["factored"]["elbo"]["n"] == 2 and summary["entangled"]["elbo"]["n"] == 2
    elbos = [json.loads((pair / f"factored-seed{s}/eval/metrics.json").read_text())["elbo"]["elbo"]
             for s in range(2)]
    assert abs(summary["factored"]["elbo"]["mean"] - sum(elbos) / 2) < 1e-9
    assert (pair / "factored-seed1" / "eval" / "metrics.json").stat().st_mtime_ns == before
    missing = run("--preset", "mmnist-2f", "--seeds", "3", "--no-train", "--out", str(pair), "--no-progress")
    assert missing.returncode != 0 and "factored-seed3 has neither" in missing.stderr


def test_gpu_script_smoke_mode_runs_its_checks_graphs_and_ksg_steps_on_the_cpu(tmp_path):
    # the compiled-model steps are left out: torch.compile on a CPU outlasts a test
    env = {**os.environ, "DEVICE": "cpu", "SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "ONLY": "check small graphs ksg"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    log = (tmp_path / "gpu.log").read_text()
    assert done.returncode == 0 and "!!" not in log, log[-3000:]
    assert "largest difference from compiled: 0 nats" in log
    assert "PASS  graphed training (CPU stand-in) = eager: bit-identical" in log
    assert log.count("graphed/step-device") == 2  # fp32 and bf16, the stand-in's rate beside eager
    assert log.count("\n== ") >= 6  # environment, check, graphs twice, small, ksg


def test_mi_budget_reads_a_run_as_its_evaluation_does_and_refuses_an_entangled_one(tmp_path):
    out = tmp_path / "pair"
    done = run("--tiny", "--seeds", "0", "--steps", "2", "--eval-sequences", "8", "--out", str(out),
               "--no-progress")
    assert done.returncode == 0, done.stderr
    script = [sys.executable, str(ROOT / "experiments" / "mi_budget.py")]
    budget = subprocess.run([*script, str(out / "factored-seed0"), "--sequences", "8", "--out",
                             str(tmp_path / "budget.json")], capture_output=True, text=True, timeout=300)
    assert budget.returncode == 0, budget.stderr
    (r,) = json.loads((tmp_path / "budget.json").read_text())
    mi = json.loads((out / "factored-seed0" / "eval" / "metrics.json").read_text())["mutual_information"]
    assert r["plain"]["samples"]["same"] == pytest.approx(mi["same_bits"], abs=1e-9)
    assert r["plain"]["samples"]["cross"] == pytest.approx(mi["cross_bits"], abs=1e-9)
    assert r["across"]["samples_active"]["same"] == pytest.approx(mi["active"]["same_bits"], abs=1e-9)
    # the ground truth's reading, recomputed from the data alone: each digit's (row, col) at t and t+1
    from indpred.config import RunConfig
    from indpred.data.factory import make_dataset
    from indpred.metrics import ksg_mi

    cfg = RunConfig.from_dict(json.loads((out / "factored-seed0" / "config.json").read_text()))
    pos = make_dataset(cfg.data, "test", 8, seed=cfg.data.seed, seq_len=cfg.data.seq_len).get_batch(
        range(8))["positions"].numpy()  # (N, T, J, 2)
    flat = pos.shape[-2:]
    a, b = pos[:, :-1].reshape(-1, *flat), pos[:, 1:].reshape(-1, *flat)
    same = np.mean([ksg_mi(a[:, j], b[:, j]) for j in range(flat[0])]) / math.log(2)
    assert r["plain"]["truth"]["same"] == pytest.approx(same, abs=1e-9)
    # the across-sequence reading of every unit, recomputed from the model's own samples
    from indpred.eval.latents import collect_latents
    from indpred.metrics import ksg_mi_across
    from indpred.run import load_model

    data = make_dataset(cfg.data, "test", 8, seed=cfg.data.seed, seq_len=cfg.data.seq_len)
    z = collect_latents(load_model(out / "factored-seed0"), data, seed=cfg.data.seed).samples  # (N, T, K, d)
    sequence = np.repeat(np.arange(8), z.shape[1] - 1)
    now, then = (a.reshape(len(sequence), *z.shape[2:]) for a in (z[:, :-1], z[:, 1:]))  # (P, K, d)
    same = np.mean([ksg_mi_across(now[:, k], then[:, k], sequence) for k in range(z.shape[2])]) / math.log(2)
    assert r["across"]["samples"]["same"] == pytest.approx(same, abs=1e-9)
    assert "| plain |" in budget.stdout and "| across sequences |" in budget.stdout
    refused = subprocess.run([*script, str(out / "entangled-seed0")], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "entangled" in refused.stderr
