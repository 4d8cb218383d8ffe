"""Reliability: kills at any moment, signals, planted pickles, NaN steps, the run lock,
unwritable and full output folders."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from indpred.checkpoint import latest_checkpoint, read_checkpoint, save_checkpoint
from indpred.config import RunConfig, apply_overrides
from indpred.data import MovingMNIST
from indpred.demo import load_settings
from indpred.errors import UserError
from indpred.lock import run_lock
from indpred.run import load_model
from indpred.train import train
from tests.conftest import TINY

CLI = [sys.executable, "-m", "indpred"]
SUBPROCESS_SETS = [a for kv in [*TINY, "train.threads=1", "train.checkpoint_every=1",
                                "train.keep_checkpoints=2"] for a in ("--set", kv)]
STEPS = 10


def start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "train", "--out", str(out), "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_tensors(run: Path):
    _, weights, train_state = read_checkpoint(latest_checkpoint(run / "checkpoints"))
    return weights, train_state


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.0005)
    return False


def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run([*CLI, "train", "--out", str(reference), "--no-progress", "--steps",
                           str(STEPS), *SUBPROCESS_SETS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    caught_mid_write = False
    # 1. Kill while a checkpoint is being written (a temporary folder exists), up to 3 tries.
    proc = start(run, "--steps", str(STEPS), *SUBPROCESS_SETS)
    for _ in range(3):
        mid_write = wait_for(lambda: latest_checkpoint(ckpts) is not None and any(
            p.name.startswith(".step-") for p in ckpts.iterdir()), proc)
        proc.kill()
        proc.wait()
        if mid_write and any(p.name.startswith(".step-") for p in ckpts.iterdir()):
            caught_mid_write = True
            break
        proc = start(run, "--resume", "--steps", str(STEPS))
    assert caught_mid_write, "never managed to kill during a checkpoint write"
    # The half-written folder is never taken for a checkpoint; the latest complete one loads.
    assert load_model(run) is not None
    # 2. Kill at an arbitrary moment after a few more steps.
    proc = start(run, "--resume", "--steps", str(STEPS))
    wait_for(lambda: (latest_checkpoint(ckpts) or Path("step-0")).name >= "step-00000006", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # 3. Resume to the end.
    done = subprocess.run([*CLI, "train", "--resume", "--out", str(run), "--no-progress", "--steps",
                           str(STEPS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not any(p.name.startswith(".step-") for p in ckpts.iterdir())  # stale temporaries gone

    (ref_w, ref_s), (w, s) = final_tensors(reference), final_tensors(run)
    assert latest_checkpoint(ckpts).name == f"step-{STEPS:08d}"
    assert ref_w.keys() == w.keys() and ref_s.keys() == s.keys()
    assert all(torch.equal(ref_w[k], w[k]) for k in w), "parameters differ from the uninterrupted run"
    assert all(torch.equal(ref_s[k], s[k]) for k in s), "optimiser/RNG state differs"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # no duplicated or missing log lines


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    sets = [a for kv in [*TINY, "train.checkpoint_every=0"] for a in ("--set", kv)]
    proc = start(run, "--steps", "100000", *sets)
    assert wait_for(lambda: (run / "metrics.jsonl").is_file()
                    and len((run / "metrics.jsonl").read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with: indpred train --resume" in out
    step = read_checkpoint(latest_checkpoint(run / "checkpoints"))[0]["step"]
    assert 3 <= step < 100000


def test_planted_pickle_is_refused_and_never_runs(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(tiny_config, run, steps=1, progress=False)
    ckpt = latest_checkpoint(run / "checkpoints")
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = ckpt / "model.safetensors"
    evil.write_bytes(pickle.dumps({"weights": Payload()}))
    # An attacker controls state.json too: make the checksum match the planted file.
    import hashlib
    state = json.loads((ckpt / "state.json").read_text())
    state["sha256"]["model.safetensors"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="not valid safetensors"):
        read_checkpoint(ckpt)
    with pytest.raises(UserError), pytest.warns(UserWarning, match="not valid safetensors"):
        load_model(run)
    assert not marker.exists()


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_config):
    run = tmp_path / "run"
    cfg = apply_overrides(tiny_config, ["train.checkpoint_every=1"])
    train(cfg, run, steps=3, progress=False)
    latest = latest_checkpoint(run / "checkpoints")
    data = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping checkpoint step-00000003"):
        model = load_model(run)
    assert model is not None
    with pytest.raises(UserError, match="corrupt"):
        read_checkpoint(latest)


def poison(monkeypatch, bad, value: float = float("nan")) -> list[int]:
    """Training batches of the 0-based steps where ``bad(step)`` holds are filled with ``value``;
    returns the list of the training steps whose batches were drawn (appended as they are)."""
    original = MovingMNIST.get_batch
    drawn: list[int] = []

    def get_batch(self, indices):
        batch = original(self, indices)
        indices = list(indices)
        if self.split == "train":
            step = indices[0] // len(indices)
            drawn.append(step)
            if bad(step):
                batch["frames"] = torch.full_like(batch["frames"], value)
        return batch

    monkeypatch.setattr(MovingMNIST, "get_batch", get_batch)
    return drawn


def test_nan_steps_are_skipped_and_counted(tmp_path, tiny_config, monkeypatch):
    poison(monkeypatch, lambda step: step in {2, 3})
    run = tmp_path / "run"
    result = train(tiny_config, run, steps=6, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_steps"] == 2 and result.step == 6
    model = load_model(run)
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "skipped" in x] == [3, 4]


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint(tmp_path, tiny_config, monkeypatch):
    poison(monkeypatch, lambda step: step >= 2, float("inf"))
    cfg = apply_overrides(tiny_config, ["train.checkpoint_every=1", "train.max_bad_steps=3"])
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"3 steps in a row .*\(step-00000002\) is intact"):
        train(cfg, run, steps=50, progress=False)
    assert latest_checkpoint(run / "checkpoints").name == "step-00000002"
    assert all(torch.isfinite(p).all() for p in load_model(run).state_dict().values())


def test_too_many_bad_steps_stop_in_time_between_sparse_log_steps(tmp_path, tiny_config, monkeypatch):
    drawn = poison(monkeypatch, lambda step: step >= 2, float("inf"))
    cfg = apply_overrides(tiny_config, ["train.log_every=1000", "train.max_bad_steps=3"])
    with pytest.raises(UserError, match=r"training stopped at step 5: 3 steps in a row"):
        train(cfg, tmp_path / "run", steps=1000, progress=False)
    assert len(drawn) <= 2 * 3 + 2  # read back every max_bad_steps steps: stopped within 3 more


def test_one_writer_per_run_folder(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(tiny_config, run, steps=1, progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with run_lock(run, "a test"):
        with pytest.raises(UserError, match=r"in use .*a test"):
            train(tiny_config, run, resume=True, steps=2, progress=False)
        with pytest.raises(UserError, match="in use"):
            train(tiny_config, run, force=True, steps=2, progress=False)
        from indpred.eval.evaluate import evaluate_run
        with pytest.raises(UserError, match="in use"):
            evaluate_run(run, sequences=4)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    train(tiny_config, run, resume=True, steps=2, progress=False)  # free again


def test_a_killed_lock_holder_never_leaves_the_lock_stuck(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(tiny_config, run, steps=1, progress=False)
    code = ("import sys, time; from pathlib import Path; from indpred.lock import run_lock\n"
            "with run_lock(Path(sys.argv[1]), 'holder'):\n print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match="in use"):
        train(tiny_config, run, resume=True, steps=2, progress=False)
    holder.kill()
    holder.wait()
    assert train(tiny_config, run, resume=True, steps=2, progress=False).step == 2


def test_unwritable_output_folder_is_refused(tmp_path, tiny_config):
    with pytest.raises(UserError, match="cannot write to run folder"):
        train(tiny_config, Path("/proc/indpred-cannot-write-here"), steps=1, progress=False)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_config, monkeypatch):
    run = tmp_path / "run"
    cfg = apply_overrides(tiny_config, ["train.checkpoint_every=2"])
    train(cfg, run, steps=2, progress=False)
    import indpred.checkpoint as ck

    real = ck.save_file

    def full_disk(tensors, path, *a, **kw):
        if "train_state" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(UserError, match=r"No space left on device.*step-00000002 is intact"):
        train(cfg, run, resume=True, steps=4, progress=False)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    monkeypatch.setattr(ck, "save_file", real)
    assert train(cfg, run, resume=True, steps=4, progress=False).step == 4


def test_saving_is_atomic_even_if_the_rename_fails(tmp_path, tiny_config, monkeypatch):
    from indpred.model import FactoredVAE

    model = FactoredVAE(tiny_config.model)
    save_checkpoint(tmp_path, 1, model)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(UserError, match="cannot write checkpoint step-00000002"):
        save_checkpoint(tmp_path, 2, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


def interrupted_demo(out: Path, sets: list[str], ready) -> str:
    """Start ``indpred demo`` of the tiny model, Ctrl-C it once ``ready()``; its stdout."""
    args = [a for kv in [*TINY, *sets] for a in ("--set", kv)]
    proc = subprocess.Popen([*CLI, "demo", "--steps", "100000", "--out", str(out), "--no-progress",
                             "--eval-sequences", "8", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert wait_for(ready, proc)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"stopped; continue with: indpred demo --resume --out {out}" in stdout
    return stdout


def resume_demo(out: Path, steps: int) -> str:
    done = subprocess.run([*CLI, "demo", "--resume", "--out", str(out), "--steps", str(steps),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def logged_lines(path: Path, n: int):
    return lambda: path.is_file() and len(path.read_text().splitlines()) >= n


def test_ctrl_c_during_the_demo_saves_both_twins_and_resume_finishes_it(tmp_path):
    """Ctrl-C reaches the whole process group: both side-by-side trainings save and stop;
    ``indpred demo --resume`` then finishes both with the demo's own settings."""
    out = tmp_path / "demo"
    logs = [logged_lines(out / name / "metrics.jsonl", 3) for name in ("factored", "entangled")]
    interrupted_demo(out, ["train.dormant_check=20"], lambda: all(f() for f in logs))
    steps = []
    for name in ("factored", "entangled"):
        steps.append(read_checkpoint(latest_checkpoint(out / name / "checkpoints"))[0]["step"])
        assert 3 <= steps[-1] < 100000
    stdout = resume_demo(out, max(steps) + 2)
    assert "resuming the factored model" in stdout and "alignment" in stdout
    for name in ("factored", "entangled"):
        assert json.loads((out / name / "summary.json").read_text())["step"] == max(steps) + 2
        assert (out / name / "eval" / "report.html").is_file()
    assert (out / "comparison.md").is_file()


def test_a_demo_stopped_in_its_first_starts_resumes_to_the_rules_run(tmp_path):
    """Stopped while starts 0 and 1 train side by side (the run's folder not made yet), the
    demo resumes them and ends with the run ``indpred train`` makes under the same rule."""
    out = tmp_path / "demo"
    never_awake = ["train.dormant_check=40", "train.dormant_nats=1e9", "train.checkpoint_every=5"]
    interrupted_demo(out, never_awake, logged_lines(out / ".factored-start-0" / "metrics.jsonl", 10))
    assert not (out / "factored").exists() and (out / ".factored-start-1" / "config.json").is_file()
    assert "factored: started over 2 time(s)" in resume_demo(out, 45)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no start left behind
    cfg = load_settings(out)[0]
    cfg.train.threads = RunConfig.load(out / "factored" / "config.json").train.threads
    train(cfg, tmp_path / "alone", steps=45, progress=False)
    a, b = final_tensors(out / "factored")[0], final_tensors(tmp_path / "alone")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    restarts = [json.loads((r / "summary.json").read_text())["restarts"] for r in (out / "factored",
                                                                                   tmp_path / "alone")]
    assert [[(r["attempt"], r["kl"]) for r in rs] for rs in restarts] == [[(0, restarts[1][0]["kl"]),
                                                                          (1, restarts[1][1]["kl"])]] * 2
