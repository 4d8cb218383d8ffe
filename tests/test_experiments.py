"""The experiment scripts run end to end on a tiny setting (and resume when rerun)."""

import json
import subprocess
import sys
from pathlib import Path

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
