"""A run folder: its layout, and loading a trained model from it.

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
from pathlib import Path

import torch

from indpred.checkpoint import load_weights, read_latest_valid
from indpred.config import RunConfig
from indpred.errors import UserError
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
