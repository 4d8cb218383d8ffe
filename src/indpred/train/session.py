"""``indpred train``'s entry: one training session of a run folder, from the config to the loop.

The path of a batch: :func:`train` checks the run folder and takes its lock (rank 0),
reads the checkpoint a resume continues and tells the other ranks what to train
(:class:`_Handshake`); :func:`_train_starts` builds the model, its trainer and noise for
each start of the run (:mod:`~indpred.train.setup`, :mod:`~indpred.train.restarts`) and
hands them to :class:`~indpred.train.loop.TrainingLoop`, which draws the batches
(:mod:`~indpred.train.batches`) and steps the optimiser.

Under ``torchrun`` (see :mod:`indpred.distributed`) R processes train one model with
DistributedDataParallel. ``train.batch_size`` is then the batch of each rank (the global
batch is R·B): the ranks together take exactly the R·B sequences one process with batch
R·B would, in the same order; the noise is drawn for the whole global batch from one
generator in the same state on every rank, each rank using its own rows; batch norm
normalises over the global batch. R processes therefore train what one process trains on
the global batch, up to float rounding. Rank 0 alone holds the run lock, logs, evaluates
and writes checkpoints; the others never touch the run folder (rank 0 sends them the
config and, on resume, the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from indpred import distributed
from indpred import run as runfolder
from indpred.checkpoint import clean_stale_temporaries, load_weights, read_latest_valid
from indpred.config import RunConfig
from indpred.data.factory import make_datasets
from indpred.distributed import Ranks
from indpred.errors import UserError
from indpred.lock import run_lock
from indpred.train import graphs, restarts
from indpred.train.board import require_tensorboard
from indpred.train.loop import Counters, TrainingLoop, TrainResult
from indpred.train.setup import (
    is_out_of_memory,
    make_model,
    make_trainer,
    out_of_memory_message,
    restore_training_state,
    setup_torch,
)


@dataclass
class Resumed:
    """What a session continues: the start it trains and, if any, the checkpoint it loads."""

    attempt: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # the checkpoint's state.json (empty: none)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    train_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    source: Path | None = None  # the checkpoint's folder

    @property
    def step(self) -> int:
        return self.state.get("step", 0)


def train(
    cfg: RunConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    steps: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; returns where it stands, with the final test ELBO.

    ``cfg`` is a resolved config (a preset's, ``apply_overrides``'s or ``RunConfig.load``'s);
    on resume the run's own ``config.json`` is used instead (``cfg`` may be None) and ``steps``
    may extend it. The run folder is locked for the whole call (one writer per run). Under
    torchrun every rank calls this; only rank 0 reads or writes ``run_dir`` (see the module).
    """
    run_dir = Path(run_dir)
    with distributed.process_group() as ranks:
        if not ranks.main:
            return _train_follower(run_dir, ranks)
        handshake = _Handshake(ranks)
        try:
            clear = runfolder.check_run_dir(run_dir, resume=resume, force=force)
            if resume:
                cfg = runfolder.load_config(run_dir)
            elif cfg is None:
                raise ValueError("train() needs a config unless it resumes")
            if steps is not None:
                cfg.train.steps = steps
            cfg.resolve()  # a config built by hand gets its derived fields; any is checked once more
            device = distributed.training_device(runfolder.resolve_device(cfg.train.device), ranks)
            if cfg.train.cuda_graphs:  # refused before the run folder is touched
                graphs.capture_for(device, ranks)
            datasets = make_datasets(cfg.data)  # fails early on a bad MNIST folder
            if cfg.train.tensorboard:
                require_tensorboard()  # before the run folder is touched
            runfolder.make_run_dir(run_dir, clear=False)
            with run_lock(run_dir, "train"):
                if clear:
                    runfolder.make_run_dir(run_dir, clear=True)
                cfg.save(run_dir / runfolder.CONFIG)
                setup_torch(cfg)
                resumed = _resumed(cfg, run_dir) if resume else Resumed()
                handshake.send({"config": cfg.to_dict(), "resumed": resumed})
                return _train_starts(cfg, run_dir, device, datasets, resumed, ranks=ranks, progress=progress)
        except BaseException as e:
            handshake.send({"error": str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"})
            raise


class _Handshake:
    """Rank 0 tells the other ranks, once, what to train, or why it cannot."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks, self.done = ranks, not ranks.active

    def send(self, message: dict[str, Any]) -> None:
        if not self.done:
            self.done = True
            distributed.share(message, self.ranks)


def _train_follower(run_dir: Path, ranks: Ranks) -> TrainResult:
    """A rank other than 0: train with the config and checkpoint rank 0 sends."""
    message = distributed.share(None, ranks)
    if "error" in message:
        raise UserError(f"rank 0 did not start training: {message['error']}")
    cfg = RunConfig.from_dict(message["config"])
    device = distributed.training_device(runfolder.resolve_device(cfg.train.device), ranks)
    train_set, _ = make_datasets(cfg.data)
    setup_torch(cfg)
    return _train_starts(cfg, run_dir, device, (train_set, None), message["resumed"], ranks=ranks,
                         progress=False)


def _resumed(cfg: RunConfig, run_dir: Path) -> Resumed:
    """The newest valid checkpoint of a run (the log trimmed back to it), or the start to begin
    when there is none (one named by an abandoned start's record, else the first)."""
    clean_stale_temporaries(run_dir / runfolder.CHECKPOINTS)
    found = read_latest_valid(run_dir / runfolder.CHECKPOINTS)
    if found is None:
        return Resumed(attempt=restarts.next_attempt(cfg, run_dir))
    source, state, weights, train_tensors = found
    if state.get("optimizer") is None:
        raise UserError(f"{source} holds weights only (a shipped model, or a checkpoint shared without "
                        "its training state): it can be evaluated and encoded but not resumed; train a "
                        "new run instead")
    runfolder.trim_metrics(run_dir, state["step"])
    return Resumed(attempt=state.get("extra", {}).get("attempt", 0), state=state, weights=weights,
                   train_tensors=train_tensors, source=source)


def _train_starts(cfg: RunConfig, run_dir: Path, device: torch.device, datasets: tuple[Any, Any],
                  resumed: Resumed, *, ranks: Ranks, progress: bool) -> TrainResult:
    """Train start ``resumed.attempt`` (from its checkpoint, if any), starting over with new
    parameters each time the loop abandons a start for a dormant factor."""
    abandoned_seconds, attempt = 0.0, resumed.attempt
    while True:
        loop = _make_loop(cfg, run_dir, device, datasets, resumed, attempt, ranks=ranks, progress=progress)
        result = loop.run()
        if result.dormant is None:
            result.seconds += abandoned_seconds  # every start's training time
            return result
        if ranks.main:
            restarts.abandon(run_dir, cfg, attempt, result.step, result.dormant, result.seconds)
        abandoned_seconds += result.seconds
        if result.stopped_early:  # asked to stop as well: a resume takes the next start
            result.dormant, result.seconds = None, abandoned_seconds
            return result
        attempt, resumed = attempt + 1, Resumed()


def _make_loop(cfg: RunConfig, run_dir: Path, device: torch.device, datasets: tuple[Any, Any],
               resumed: Resumed, attempt: int, *, ranks: Ranks, progress: bool) -> TrainingLoop:
    """Start ``attempt``'s model, trainer and noise, restored from ``resumed``'s checkpoint if any."""
    try:
        model = make_model(cfg, device, attempt)
    except Exception as e:
        if is_out_of_memory(e):
            raise UserError(out_of_memory_message(cfg, "building the model", e)) from None
        raise
    if resumed.source is not None:
        load_weights(model, resumed.weights, resumed.source)
    trainer = make_trainer(model, cfg, device, ranks)
    noise = torch.Generator(device=device).manual_seed(restarts.attempt_seed(cfg, attempt) + 1)
    if resumed.source is not None:
        restore_training_state(trainer, noise, resumed.state, resumed.train_tensors)
    counters = Counters.carried(cfg, resumed.step, attempt, resumed.state.get("extra", {}))
    return TrainingLoop(cfg, run_dir, device, trainer, noise, datasets, counters, ranks=ranks,
                        progress=progress, resumed=resumed.source is not None)

