"""A run folder: its layout, creating one safely, reading its logs, loading a trained model from it.

::

    RUN_DIR/config.json        the full resolved RunConfig
    RUN_DIR/metrics.jsonl      one JSON object per log line (train and test)
    RUN_DIR/summary.json       final figures, written when training ends
    RUN_DIR/restarts.jsonl     one line per start abandoned for a dormant factor (if any),
    RUN_DIR/metrics-attempt-N.jsonl  with the log of abandoned start N
    RUN_DIR/checkpoints/       step-NNNNNNNN/ folders (see indpred.checkpoint)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from indpred.checkpoint import load_weights, read_latest_valid
from indpred.config import RunConfig
from indpred.errors import UserError
from indpred.fileio import write_text_atomic
from indpred.model import FactoredVAE

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
RESTARTS = "restarts.jsonl"


def read_restarts(run_dir: str | Path) -> list[dict]:
    """The starts of a run abandoned for a dormant factor (``train.dormant_check``), oldest first."""
    path = Path(run_dir) / RESTARTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attempt_metrics(attempt: int | str) -> str:
    """The name the log of abandoned start ``attempt`` is kept under ("*": a glob of them all)."""
    return f"metrics-attempt-{attempt}.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's log records, oldest first; a line cut short (by a kill, or a writer still at
    work) is left out."""
    path = Path(run_dir) / METRICS
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def trim_metrics(run_dir: Path, last_step: int) -> None:
    """Drop the log lines written after the checkpoint (at ``last_step``) a run resumes from."""
    path = run_dir / METRICS
    if path.is_file():
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _owned(path: Path) -> bool:
    """Whether ``path`` is one of a run folder's own files (the lock, an abandoned start's records)."""
    return path.name in (".lock", RESTARTS) or path.match(attempt_metrics("*"))


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> bool:
    """Refuse to overwrite a run, or to scatter one into a folder of other files, unless asked;
    returns whether an old run must be cleared."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder; choose another path")
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise UserError(f"cannot resume: {run_dir} is not an indpred run folder (no config.json)")
        return False
    has_run = run_dir.is_dir() and any((run_dir / name).exists() for name in (CONFIG, CHECKPOINTS))
    if has_run and not force:
        raise UserError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                        "--force to start it over, or choose another --out")
    if not has_run and not force and run_dir.is_dir() and any(not _owned(p) for p in run_dir.iterdir()):
        raise UserError(f"--out {run_dir} is a folder of other files, not a run; choose an empty or "
                        "new folder (or pass --force to train into it, keeping its files)")
    return has_run


def make_run_dir(run_dir: Path, *, clear: bool) -> None:
    """Create (or, with ``clear``, empty of indpred's own files) a writable run folder."""
    if clear:
        for name in (CONFIG, METRICS, SUMMARY, RESTARTS):
            (run_dir / name).unlink(missing_ok=True)
        for old in run_dir.glob(attempt_metrics("*")):
            old.unlink(missing_ok=True)
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run folder {run_dir}: {e.strerror}") from None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is available; use --set device=cpu")
    return device


def load_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not an indpred run folder (no {CONFIG})")
    return RunConfig.load(path)


def load_model(run_dir: str | Path, *, device: str = "cpu") -> FactoredVAE:
    """The trained model of a run folder, from its latest checkpoint, in eval mode."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    found = read_latest_valid(run_dir / CHECKPOINTS, weights_only=True)  # no training state needed
    if found is None:
        raise UserError(f"{run_dir} has no checkpoint yet; train it first (indpred train ...)")
    ckpt, _, weights, _ = found
    model = FactoredVAE(cfg.model)
    load_weights(model, weights, ckpt)
    return model.to(resolve_device(device)).eval()
