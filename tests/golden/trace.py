"""A golden trace of training: what today's code computes on small fixed configurations.

Each case trains a tiny run (float32, one thread) through the public entry points
(``indpred.train.train``, the ``indpred`` command, ``torchrun``) and reduces its run
folder to what must never change by accident: every checkpoint tensor's SHA-256,
``state.json``'s step and extras, ``metrics.jsonl``, ``summary.json`` and the
restarts' records, without timing fields. Together the cases run every branch of the
training loop: log averaging (``log_every`` > 1), periodic test ELBO, a finite
``grad_clip``, KL warm-up, learning-rate decay, a skipped non-finite step, free bits,
a dormant-factor restart, a resume, two torchrun ranks and the demo's side-by-side starts.

``python -m tests.golden.trace --write`` records ``trace.json`` beside this file; regenerate
it only on purpose, and say why in the commit. ``tests/test_golden.py`` checks against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from indpred.config import apply_overrides, get_preset
from indpred.data import MovingMNIST

GOLDEN = Path(__file__).with_name("trace.json")
REPO = Path(__file__).resolve().parents[2]

# Fields that measure time, not what was computed; ``noise_scale`` went with train.noise_warmup.
VOLATILE = {"frames_per_s", "train_seconds", "train_seconds_this_session", "frames_per_s_this_session",
            "noise_scale", "seconds", "wall_seconds", "eval_seconds"}

EXACT = ["train.precision=fp32", "train.channels_last=false", "train.threads=1"]
TINY = ["model.width=0.125", "model.factor_dim=4", "model.transition_hidden=32",
        "data.seq_len=3", "data.test_sequences=8", "train.batch_size=4",
        # the frames and prior every preset had when the trace was recorded (issue 16 moved the
        # paper presets and the demo to a second-order prior, the demo to 32 px)
        "data.image_size=64", "model.transition_order=1"]
# Every branch of the loop: averaged logs, periodic test ELBO, clipping, KL warm-up, LR decay.
BRANCHES = ["train.log_every=3", "train.eval_every=4", "train.checkpoint_every=4", "train.grad_clip=0.5",
            "train.kl_warmup=5", "train.lr_decay=0.5", "train.lr_decay_every=4", "train.lr=1e-3"]
POISONED_STEP = 6  # 0-based training step whose batch is NaN (skipped and counted)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _jsonl(path: Path) -> list[Any]:
    if not path.is_file():
        return []
    return [_strip(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]


def _tensor_digests(path: Path) -> dict[str, str]:
    out = {}
    for name, t in sorted(load_file(str(path)).items()):
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def reduce_run(run: Path) -> dict[str, Any]:
    """A run folder as the trace keeps it."""
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    record: dict[str, Any] = {
        "metrics": _jsonl(run / "metrics.jsonl"),
        "summary": _strip(json.loads((run / "summary.json").read_text())) if (run / "summary.json").is_file()
        else None,
        "restarts": _jsonl(run / "restarts.jsonl"),
        "attempt_metrics": {p.name: _jsonl(p) for p in sorted(run.glob("metrics-attempt-*.jsonl"))},
        "checkpoints": [p.name for p in ckpts],
    }
    if ckpts:
        last = ckpts[-1]
        state = json.loads((last / "state.json").read_text())
        record["state"] = {"step": state["step"], "extra": _strip(state.get("extra", {}))}
        record["model"] = _tensor_digests(last / "model.safetensors")
        record["train_state"] = _tensor_digests(last / "train_state.safetensors")
    return record


class _Poisoned:
    """Make the batch of one training step NaN, in this process."""

    def __init__(self, step: int, batch_size: int) -> None:
        self.first, self.batch_size = step * batch_size, batch_size
        self.original = MovingMNIST.get_batch

    def __enter__(self) -> None:
        original, first, size = self.original, self.first, self.batch_size

        def get_batch(dataset: MovingMNIST, indices: Any, *args: Any, **kwargs: Any) -> dict:
            batch = original(dataset, indices, *args, **kwargs)
            ids = list(indices)
            if len(ids) == size and ids[0] == first and dataset.split == "train":
                batch["frames"] = torch.full_like(batch["frames"], float("nan"))
            return batch

        MovingMNIST.get_batch = get_batch  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        MovingMNIST.get_batch = self.original  # type: ignore[method-assign]


def _train(preset: str, sets: list[str], run: Path, *, steps: int, resume: bool = False,
           poison: bool = False) -> None:
    from indpred.train import train

    cfg = apply_overrides(get_preset(preset), [*sets, *EXACT])
    torch.set_num_threads(1)
    if poison:
        with _Poisoned(POISONED_STEP, cfg.train.batch_size):
            train(cfg, run, steps=steps, progress=False, resume=resume)
    else:
        train(cfg, run, steps=steps, progress=False, resume=resume)


def _cli(args: list[str], *, torchrun: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(REPO / "src")}
    launch = [sys.executable, "-m", "indpred"]
    if torchrun:
        launch[1:2] = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
                       "--rdzv-endpoint=127.0.0.1:0", "-m"]
    done = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")


def _sets(values: list[str]) -> list[str]:
    return [a for kv in values for a in ("--set", kv)]


def case_mmnist_2f(work: Path) -> dict[str, Any]:
    """``mmnist-2f`` (shared generator) at tiny widths through every loop branch, one NaN step."""
    run = work / "mmnist-2f"
    _train("mmnist-2f", [*TINY, *BRANCHES], run, steps=12, poison=True)
    return reduce_run(run)


def case_resumed(work: Path) -> dict[str, Any]:
    """The same run stopped at step 8 (a checkpoint) and resumed to 12."""
    run = work / "resumed"
    _train("mmnist-2f", [*TINY, *BRANCHES], run, steps=8, poison=True)
    first = reduce_run(run)
    _train("mmnist-2f", [], run, steps=12, resume=True, poison=True)
    return {"first_session": first, "resumed": reduce_run(run)}


def case_demo_preset(work: Path) -> dict[str, Any]:
    """The ``demo`` preset (per-factor generator, free bits) at tiny widths."""
    run = work / "demo"
    _train("demo", [*TINY, "train.log_every=2", "train.checkpoint_every=5"], run, steps=10)
    return reduce_run(run)


def case_dormant_restart(work: Path) -> dict[str, Any]:
    """A start abandoned at its dormant check (no factor reaches 1e9 nats), the next trained on."""
    run = work / "dormant"
    _train("demo", [*TINY, "train.dormant_check=3", "train.dormant_nats=1e9", "train.dormant_restarts=1"],
           run, steps=6)
    return reduce_run(run)


def case_torchrun(work: Path) -> dict[str, Any]:
    """Two CPU ranks (gloo) of 2 sequences each, with a restart, then a resume."""
    run = work / "torchrun"
    sets = [*TINY, *EXACT, "train.batch_size=2", "model.decoder=shared", "train.checkpoint_every=2",
            "train.kl_warmup=3", "train.dormant_check=1", "train.dormant_nats=1e9",
            "train.dormant_restarts=1", "train.log_every=1", "train.eval_every=0"]
    _cli(["train", "--no-progress", "--preset", "demo", "--out", str(run), "--steps", "2", *_sets(sets)],
         torchrun=True)
    _cli(["train", "--no-progress", "--resume", "--out", str(run), "--steps", "4"], torchrun=True)
    return reduce_run(run)


def case_demo_command(work: Path) -> dict[str, Any]:
    """``indpred demo``: both first starts side by side (both dormant), start 2 beside the twin,
    then both evaluated; the comparison's figures are kept too."""
    out = work / "demo-command"
    sets = [*TINY, *EXACT[:2], "train.dormant_check=3", "train.dormant_nats=1e9", "train.log_every=2",
            "data.test_sequences=16"]
    _cli(["demo", "--no-progress", "--out", str(out), "--steps", "6", "--eval-sequences", "16", *_sets(sets)])
    runs = {name: reduce_run(out / name) for name in ("factored", "entangled")}
    def read(path: Path) -> Any:  # the run folders' paths are the temporary folder's
        return _strip(json.loads(path.read_text().replace(str(work), "<work>")))

    for name in list(runs):
        runs[name]["eval"] = read(out / name / "eval" / "metrics.json")
        runs[name]["eval"]["mutual_information"].pop("active", None)  # a reading added after the recording
    runs["comparison"] = [{k: v for k, v in row.items() if k not in ("active_same_bits", "active_cross_bits")}
                          for row in read(out / "comparison.json")]
    return runs


CASES = {"mmnist-2f": case_mmnist_2f, "resumed": case_resumed, "demo-preset": case_demo_preset,
         "dormant-restart": case_dormant_restart, "torchrun": case_torchrun,
         "demo-command": case_demo_command}


def platform() -> dict[str, Any]:
    """What the exact bits depend on beyond the code: torch's build, the CPU's kernels, the cores
    (``indpred demo`` gives each of its two trainings half of them)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count()}


def trace(work: Path, cases: list[str] | None = None) -> dict[str, Any]:
    """Run the cases (all by default) in ``work``; their reduced run folders by name."""
    return {name: CASES[name](work) for name in (cases or list(CASES))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record {GOLDEN.name}")
    parser.add_argument("--case", action="append", help="run only this case (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = trace(Path(tmp), args.case)
    if args.write:
        if args.case and GOLDEN.is_file():  # re-record only these cases
            found = {**json.loads(GOLDEN.read_text()), **found}
        found["platform"] = platform()
        GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
    else:
        golden = json.loads(GOLDEN.read_text())
        for name, value in found.items():
            print(name, "same" if json.loads(json.dumps(value)) == golden.get(name) else "DIFFERENT")


if __name__ == "__main__":
    main()
