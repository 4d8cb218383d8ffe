"""Training: ``indpred train`` as a library.

One batch's path, file by file: :mod:`~indpred.train.session` (:func:`train`: the run
folder, its lock, resuming, the torchrun handshake, the starts of a run) →
:mod:`~indpred.train.setup` (model, DDP/compile wrapper, Adam) →
:mod:`~indpred.train.loop` (the step and the loop: LR schedule, KL warm-up, skipping a
non-finite step, logs, test ELBO, checkpoints) with :mod:`~indpred.train.batches` (which
sequences step s trains on), :mod:`~indpred.train.update` (the update decided on the
device), :mod:`~indpred.train.graphs` (the step as one CUDA graph) and
:mod:`~indpred.train.restarts` (the dormant-factor rule).
"""

from indpred.data.factory import TRAIN_STREAM_LENGTH, make_datasets
from indpred.train.batches import StepBatches, step_batches
from indpred.train.loop import TrainResult, forward_backward
from indpred.train.restarts import attempt_seed, is_dormant
from indpred.train.session import train
from indpred.train.setup import (
           ElboObjective,
           Trainer,
           make_model,
           make_trainer,
           native_bf16,
           resolve_precision,
)

__all__ = ["TRAIN_STREAM_LENGTH", "ElboObjective", "StepBatches", "TrainResult", "Trainer", "attempt_seed",
           "forward_backward", "is_dormant", "make_datasets", "make_model", "make_trainer", "native_bf16",
           "resolve_precision", "step_batches", "train"]
