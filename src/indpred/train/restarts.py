"""The dormant-factor restart (``train.dormant_check``, beyond the paper): the one policy.

A start in which a factor's KL, averaged over the 100 steps up to the check, is still below
``train.dormant_nats`` carries (nearly) nothing in that factor, and such starts ended with the
factors sharing the objects (docs/RESULTS.md); it is abandoned for new parameters, at most
``train.dormant_restarts`` times. Start N draws its parameters and noise from seed + 10007·N.
``indpred train`` applies the policy one start after the other; ``indpred demo`` trains the
first two starts side by side and asks :func:`kept_start` which one goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from indpred import run as runfolder
from indpred.config import RunConfig

DORMANT_WINDOW = 100  # steps whose KL the dormant-factor check averages
ATTEMPT_SEED_STRIDE = 10007  # start N of a run draws its parameters and noise from seed + N·this


def attempt_seed(cfg: RunConfig, attempt: int) -> int:
    """The seed of start ``attempt`` (0: the first) of a run: its parameters and its noise."""
    return cfg.train.seed + ATTEMPT_SEED_STRIDE * attempt


def is_dormant(kl: list[float], cfg: RunConfig) -> bool:
    """Whether a factor's KL over the check's window (nats per frame) is below ``train.dormant_nats``."""
    return min(kl) < cfg.train.dormant_nats


def abandons(cfg: RunConfig, attempt: int, kl: list[float]) -> bool:
    """Whether start ``attempt``, with ``kl`` per factor over the window, is abandoned."""
    return attempt < cfg.train.dormant_restarts and is_dormant(kl, cfg)


def kept_start(cfg: RunConfig, kls: list[list[float]]) -> int:
    """Which start goes on, given the window's KL of the first ``len(kls)`` starts: the first
    that is not abandoned, else the next one (``len(kls)``), which starts from scratch."""
    return next((k for k, kl in enumerate(kls) if not abandons(cfg, k, kl)), len(kls))


def start_config(cfg: RunConfig, attempt: int) -> RunConfig:
    """Start ``attempt`` of ``cfg`` as a run of its own: its seed, and no restarts of its own."""
    start = RunConfig.from_dict(cfg.to_dict())
    start.train.seed, start.train.dormant_restarts = attempt_seed(cfg, attempt), 0
    return start


@dataclass
class DormantWindow:
    """Each factor's KL summed over the check's window (float64: exact in a checkpoint's JSON)."""

    check: int  # the step of the check (0: none, e.g. one factor)
    kl_sum: Tensor  # (K,) float64
    steps: int = 0

    @classmethod
    def of(cls, run: RunConfig, carried: dict[str, Any] | None = None) -> DormantWindow:
        """The window of ``run``, continuing what a resumed checkpoint's extras carried."""
        K = run.model.factors
        window = (carried or {}).get("dormant_window") or {"kl_sum": [0.0] * K, "steps": 0}
        # Recorded even when the run cannot restart any more (summary.json dormant_kl).
        return cls(check=run.train.dormant_check if K > 1 else 0,
                   kl_sum=torch.tensor(window["kl_sum"], dtype=torch.float64), steps=int(window["steps"]))

    def add(self, step: int, kl: list[float]) -> None:
        """Count (1-based) ``step``'s KL per factor if it lies in the window."""
        if self.check and self.check - DORMANT_WINDOW < step <= self.check:
            self.kl_sum += torch.tensor(kl, dtype=torch.float64)
            self.steps += 1

    def mean(self) -> list[float]:
        return (self.kl_sum / self.steps).tolist()

    def to_extra(self) -> dict[str, Any]:
        return {"kl_sum": self.kl_sum.tolist(), "steps": self.steps}


def next_attempt(cfg: RunConfig, run_dir: Path) -> int:
    """The start a run resumed without a checkpoint begins: the one its last abandoned start
    named, counted from the config's own seed (``indpred demo`` keeps a start's folder with
    that start's seed in its config, and the restarts before it)."""
    restarts = runfolder.read_restarts(run_dir)
    return (restarts[-1]["next_seed"] - cfg.train.seed) // ATTEMPT_SEED_STRIDE if restarts else 0


def record_abandoned_start(run_dir: Path, cfg: RunConfig, attempt: int, step: int, kl: list[float],
                           seconds: float, metrics: Path) -> None:
    """Append start ``attempt``'s line to ``restarts.jsonl`` and keep its log (``metrics``)."""
    record = {"attempt": attempt, "seed": attempt_seed(cfg, attempt), "step": step, "kl": kl,
              "dormant_nats": cfg.train.dormant_nats, "next_seed": attempt_seed(cfg, attempt + 1),
              "train_seconds": seconds}
    with (run_dir / runfolder.RESTARTS).open("a") as f:
        f.write(json.dumps(record) + "\n")
    if metrics.is_file():
        os.replace(metrics, run_dir / runfolder.attempt_metrics(attempt))


def abandon(run_dir: Path, cfg: RunConfig, attempt: int, step: int, kl: list[float], seconds: float) -> None:
    """Keep the log of a start abandoned for a dormant factor, drop its checkpoints, say so."""
    record_abandoned_start(run_dir, cfg, attempt, step, kl, seconds, run_dir / runfolder.METRICS)
    shutil.rmtree(run_dir / runfolder.CHECKPOINTS, ignore_errors=True)
    shown = ", ".join(f"{v:.2f}" for v in kl)
    tqdm.write(f"{run_dir.name}: a factor is still dormant at step {step} (KL {shown} nats/frame, "
               f"below {cfg.train.dormant_nats:g}): starting over with seed "
               f"{attempt_seed(cfg, attempt + 1)} (start {attempt + 2} of at most "
               f"{cfg.train.dormant_restarts + 1})", file=sys.stderr)
