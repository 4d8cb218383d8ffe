"""Live training curves in TensorBoard (``train.tensorboard=true``; ``pip install indpred[tensorboard]``).

Every log record becomes scalars (the ELBO, its terms, each factor's KL, learning rate,
KL weight, frames/s; the test ELBO at each evaluation), and each test evaluation adds two
images: data over reconstruction, and the independent generations (one row per factor), of
the first test sequence. Written to ``RUN_DIR/tensorboard``; ``metrics.jsonl`` stays the
record. A resumed run purges the events after the step it resumes from, as the log is trimmed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from indpred.errors import UserError
from indpred.eval.generations import factor_groups, independent_generations
from indpred.model import FactoredVAE

FOLDER = "tensorboard"
SCALARS = ("elbo", "log_likelihood", "lr", "kl_weight", "frames_per_s", "elbo_stderr")


def require_tensorboard() -> None:
    """Refuse ``train.tensorboard=true`` in one line, before any work, when TensorBoard is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("train.tensorboard=true needs TensorBoard: pip install 'indpred[tensorboard]' "
                        "(or set train.tensorboard=false)") from None


class Board:
    """A run's TensorBoard writer: scalars from log records, images at test evaluations."""

    def __init__(self, run_dir: Path, *, purge_step: int) -> None:
        """Events at ``purge_step`` and after, from an earlier session, are discarded by readers."""
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / FOLDER), purge_step=purge_step)

    def record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: its figures under ``train/`` or ``test/``."""
        step, split = record["step"], record.get("split", "train")
        for key in SCALARS:
            if isinstance(record.get(key), (int, float)):
                self.writer.add_scalar(f"{split}/{key}", record[key], step)
        for k, kl in enumerate(record.get("kl") or []):
            self.writer.add_scalar(f"{split}/kl_factor{k + 1}", kl, step)
        if "skipped_total" in record:
            self.writer.add_scalar("train/skipped_steps", record["skipped_total"], step)
        self.writer.flush()

    @torch.no_grad()
    def images(self, model: FactoredVAE, test_set: Any, step: int, device: torch.device) -> None:
        """Data over reconstruction, and the independent generations, of the first test sequence
        (posterior means: no noise is drawn; eval mode: batch norm's statistics are untouched)."""
        was_training = model.training
        model.eval()
        try:
            frames = test_set.get_batch(range(1))["frames"].to(device)  # (1, T, C, H, W)
            means = model.filter(frames, sample=False).post_mean  # (1, T, K, d)
            recon = model.decode(means)
            gens = independent_generations(model, means, factor_groups(model.factors, model.factor_dim))
        finally:
            model.train(was_training)
        self.writer.add_image("reconstruction", _grid(torch.cat([frames, recon])), step)
        self.writer.add_image("independent_generations", _grid(gens[:, 0]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _grid(rows: torch.Tensor) -> np.ndarray:
    """Rows (R, T, C, H, W) of frames in [0, 1] → one (3, R·H, T·W) image, rows stacked."""
    R, T, C, H, W = rows.shape
    rgb = rows.float().clamp(0, 1).expand(R, T, 3, H, W) if C == 1 else rows.float().clamp(0, 1)
    return rgb.permute(2, 0, 3, 1, 4).reshape(3, R * H, T * W).cpu().numpy()
