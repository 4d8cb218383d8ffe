"""Training computes what it computed when the golden trace was recorded (tests/golden/trace.py):
checkpoint tensors' SHA-256, logs and summaries, bit for bit, on every loop branch."""

from __future__ import annotations

import json

import pytest

from tests.golden.trace import CASES, GOLDEN, platform, trace

RECORDED = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_training_matches_the_golden_trace(case, tmp_path):
    here, then = platform(), RECORDED["platform"]
    differs = {k for k in ("torch", "cpu_capability") if here[k] != then[k]}
    if case == "demo-command" and here["cores"] != then["cores"]:
        differs.add("cores")  # the demo's trainings get half the cores each: other threads, other sums
    if differs:
        pytest.skip(f"the trace was recorded with {then}, this is {here}: exact bits cannot be compared")
    found = json.loads(json.dumps(trace(tmp_path, [case])[case]))  # as JSON stores it
    assert found == RECORDED[case]
