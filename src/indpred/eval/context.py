"""What every stage of one evaluation shares: the run, its model and data, where figures go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from indpred.config import RunConfig
from indpred.model import FactoredVAE


@dataclass
class EvalContext:
    """One evaluation of one run; each stage reads it and records its figures in it."""

    run_dir: Path
    cfg: RunConfig
    model: FactoredVAE
    device: torch.device
    data: Any  # the evaluation sequences (``get_batch(indices)`` serves their frames)
    seed: int
    out: Path  # RUN_DIR/eval
    noise: torch.Generator  # seeded once; the bound draws from it first, then prediction
    figures: dict[str, list[str]] = field(default_factory=dict)

    def figure(self, name: str, paths: list[Path] | Path) -> None:
        """Record a figure's files, relative to the output folder (as ``metrics.json`` lists them)."""
        paths = paths if isinstance(paths, list) else [paths]
        self.figures[name] = [str(Path(p).relative_to(self.out)) for p in paths]
