"""Training: the optimisation loop, checkpoints, logging, resumption, several processes.

Every step draws its batch by index (step·B … step·B + B − 1 of the training stream),
and the reparameterisation noise comes from one saved generator, so a resumed run
repeats exactly what an uninterrupted one would have done.

Under ``torchrun`` (see :mod:`indpred.distributed`) R processes train one model with
DistributedDataParallel. ``train.batch_size`` is then the batch of each rank (the
global batch is R·B): at step s rank r takes sequences (s·R + r)·B … (s·R + r + 1)·B − 1,
so together the ranks take exactly the R·B sequences one process with batch R·B would,
in the same order; the noise is drawn for the whole global batch from one generator
in the same state on every rank, each rank using its own rows; batch norm normalises
over the global batch. R processes therefore train what one process trains on the
global batch, up to float rounding. Rank 0 alone holds the run lock, logs, evaluates
and writes checkpoints; the others never touch the run folder (rank 0 sends them the
config and, on resume, the checkpoint).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from indpred import distributed
from indpred import run as runfolder
from indpred.checkpoint import (
    clean_stale_temporaries,
    latest_checkpoint,
    load_weights,
    optimizer_from_flat,
    read_latest_valid,
    save_checkpoint,
)
from indpred.config import DataConfig, RunConfig
from indpred.data import MovingMNIST
from indpred.data.moving_mnist import bounce, render
from indpred.distributed import SINGLE, Ranks
from indpred.errors import UserError
from indpred.eval.elbo import dataset_elbo
from indpred.fileio import write_text_atomic
from indpred.lock import run_lock
from indpred.model import FactoredVAE
from indpred.objective import ElboTerms, sequence_elbo

TRAIN_STREAM_LENGTH = 2**31 - 1  # the training stream is, in practice, endless
DORMANT_WINDOW = 100  # steps whose KL the dormant-factor check averages
ATTEMPT_SEED_STRIDE = 10007  # start N of a run draws its parameters and noise from seed + N·this


def make_datasets(data: DataConfig) -> tuple[Dataset, Dataset]:
    """The training stream and the fixed test set described by ``data``.

    Both serve ``get_batch(indices)`` with ``frames`` (B, T, C, 64, 64).
    """
    if data.dataset == "video":
        from indpred.data.video import VideoFrames

        if not data.path:
            raise UserError("this preset trains on prepared video: pass --data DIR "
                            "(made by indpred prepare-video)")
        return (VideoFrames(data.path, split="train", seq_len=data.seq_len, seed=data.seed,
                            length=TRAIN_STREAM_LENGTH),
                VideoFrames(data.path, split="test", seq_len=data.seq_len, seed=data.seed,
                            length=data.test_sequences))
    common = dict(n_digits=data.n_digits, seq_len=data.seq_len, colour=data.colour,
                  kinematics=data.kinematics, seed=data.seed, source=data.mnist)
    train = MovingMNIST(split="train", length=TRAIN_STREAM_LENGTH, **common)
    test = MovingMNIST(split="test", length=data.test_sequences, **common)
    return train, test


@dataclass
class TrainResult:
    """Where a finished (or stopped) run stands (``test`` is empty on ranks other than 0)."""

    run_dir: Path
    step: int
    test: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # training time: this start over all its sessions, plus starts abandoned now
    stopped_early: bool = False
    rank: int = 0
    dormant: list[float] | None = None  # KL per factor at the check, when the run must start over


# ---------------------------------------------------------------------------- the step


class ElboObjective(nn.Module):
    """The training objective as a module: what DDP wraps and ``torch.compile`` compiles.

    ``forward(frames (B, T, C, H, W), noise (B, T, K, d))`` returns the per-sequence
    log-likelihood (B,) and KL per factor (B, K), in nats per frame.
    """

    def __init__(self, model: FactoredVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        terms = sequence_elbo(self.model, frames, noise=noise)
        return terms.log_likelihood, terms.kl


@dataclass
class Trainer:
    """A model ready to train: itself (for checkpoints and evaluation), its objective
    (wrapped in DDP and compiled as configured) and its optimiser."""

    model: FactoredVAE
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    cuda_graphs: bool = False  # compiled with CUDA graphs: each step must be marked


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively (else bf16 is emulated, slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", None)  # absent from older torch: fp32
        if capabilities is None:
            return False
        found = capabilities()
        return bool(found.get("amx_bf16") or found.get("avx512_bf16"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` as it runs on ``device``: "auto" becomes "bf16" or "fp32"."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def attempt_seed(cfg: RunConfig, attempt: int) -> int:
    """The seed of start ``attempt`` (0: the first) of a run: its parameters and its noise."""
    return cfg.train.seed + ATTEMPT_SEED_STRIDE * attempt


def is_dormant(kl: list[float], cfg: RunConfig) -> bool:
    """The dormant-factor rule: whether a factor's KL over the check's window (nats per frame)
    is below ``train.dormant_nats``."""
    return min(kl) < cfg.train.dormant_nats


def make_model(cfg: RunConfig, device: torch.device, attempt: int = 0) -> FactoredVAE:
    """The model, initialised from ``train.seed`` (see :func:`attempt_seed`), on ``device``,
    executing as ``train`` says."""
    tc = cfg.train
    torch.manual_seed(attempt_seed(cfg, attempt))
    model = FactoredVAE(cfg.model).to(device)
    return model.configure(precision=resolve_precision(tc.precision, device),
                           channels_last=tc.channels_last,
                           activation_checkpointing=tc.activation_checkpointing)


OUTPUT_INIT_SEQUENCES = 64


def init_output_from_data(model: FactoredVAE, train_set: Any) -> None:
    """``model.output_init = "data-mean"``: the generator starts at the per-channel mean of the
    first training sequences (the same on every rank, so replicas stay identical); else nothing."""
    if model.config.output_init != "data-mean":
        return
    frames = StepBatches(train_set, OUTPUT_INIT_SEQUENCES)[0]  # (S, T, C, H, W)
    pixel_mean = frames.float().mean(dim=(0, 1, 3, 4))  # (C,)
    model.decoder.init_output(pixel_mean.to(next(model.parameters()).device))


def make_trainer(model: FactoredVAE, cfg: RunConfig, device: torch.device,
                 ranks: Ranks = SINGLE) -> Trainer:
    """Wrap ``model`` for training: global batch norm and DDP over several ranks, compilation, Adam."""
    tc = cfg.train
    objective: nn.Module = ElboObjective(model)
    if ranks.active:
        distributed.sync_batch_norm(model, device)
        # Batch norm's statistics are global already: no broadcast of buffers at each step.
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(nn.parallel.DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)
    if tc.compile != "off":
        objective = torch.compile(objective, mode=None if tc.compile == "default" else tc.compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(0.9, tc.adam_beta2))
    return Trainer(model=model, objective=objective, optimizer=optimizer,
                   cuda_graphs=tc.compile in ("reduce-overhead", "max-autotune"))


def forward_backward(trainer: Trainer, frames: Tensor, noise: Tensor, kl_weight: float = 1.0,
                     free_bits: float = 0.0, ranks: Ranks = SINGLE) -> tuple[Tensor, ElboTerms]:
    """Loss and ELBO terms of one batch, gradients accumulated (no optimiser step).

    The loss is ``−(log-likelihood − kl_weight·KL)`` averaged over the batch; with
    ``free_bits`` > 0 each factor's batch-mean KL enters as ``max(KL_k, free_bits)``,
    where the mean is over the *global* batch under torchrun (one all-reduce of K
    numbers), so that R ranks train what one process trains on their R·B sequences.
    """
    if trainer.cuda_graphs:  # a new step: the graphs may reuse the last step's output memory
        torch.compiler.cudagraph_mark_step_begin()
    ll, kl = trainer.objective(frames, noise)  # (B,), (B, K)
    if free_bits > 0:
        kl_mean = kl.mean(0)  # (K,) this rank's batch mean
        global_mean = distributed.all_reduce_sum(kl_mean.detach().clone(), ranks) / ranks.world
        penalised = torch.where(global_mean > free_bits, kl_mean, kl_mean.new_tensor(free_bits))
        loss = -ll.mean() + kl_weight * penalised.sum()
    else:
        loss = -(ll - kl_weight * kl.sum(-1)).mean()
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss, ElboTerms(log_likelihood=ll.detach(), kl=kl.detach())


# ---------------------------------------------------------------------------- data


class StepBatches(Dataset):
    """Item s: what one rank trains on at step s: its frames (B, T, C, H, W), or with
    ``draws_only`` (Moving MNIST) just each sequence's random draws, for :class:`DeviceRenderer`.

    Rank r of R takes sequences (s·R + r)·B … (s·R + r + 1)·B − 1 of ``dataset``.
    """

    def __init__(self, dataset: Any, batch_size: int, ranks: Ranks = SINGLE, *,
                 draws_only: bool = False) -> None:
        self.dataset, self.batch_size, self.ranks = dataset, batch_size, ranks
        self.draws_only = draws_only

    def __len__(self) -> int:
        return TRAIN_STREAM_LENGTH // (self.batch_size * self.ranks.world)

    def __getitem__(self, step: int) -> Any:
        B, R, r = self.batch_size, self.ranks.world, self.ranks.rank
        indices = range((step * R + r) * B, (step * R + r + 1) * B)
        if self.draws_only:
            return DeviceRenderer.draws(self.dataset, indices)
        return self.dataset.get_batch(indices)["frames"]


class DeviceRenderer:
    """Moving MNIST frames rendered on the training device, equal to ``get_batch``'s frames.

    Each sequence's random draws (digits, start, velocity) are the dataset's own, made on
    the CPU (a few numbers per sequence, cheap enough for DataLoader workers); the digit
    pool sits on the device, and the motion and the pixels are computed there with the
    dataset module's own ``bounce`` and ``render``, so no frame crosses the bus. It reads
    the dataset's digit pool and per-item draws (``_images``, ``_draw``): a
    ``get_batch(indices, device=…)`` in ``data/moving_mnist.py`` would make it unnecessary.
    """

    def __init__(self, dataset: MovingMNIST, device: torch.device) -> None:
        self.dataset, self.device = dataset, device
        self.images = torch.from_numpy(dataset._images.copy()).to(device)  # (N, 28, 28) uint8
        self.levels = torch.tensor(255.0, device=device)  # a tensor: exact division on CUDA too

    @staticmethod
    def draws(dataset: MovingMNIST, indices: range) -> tuple[Tensor, Tensor, Tensor]:
        """Pool indices (B, D) and start positions and velocities (B, D, 2) of ``indices``."""
        drawn = [dataset._draw(dataset._check_index(i)) for i in indices]
        pool, p0, v0 = (torch.from_numpy(np.stack([d[j] for d in drawn])) for j in range(3))
        return pool, p0, v0

    def __call__(self, draws: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        pool, p0, v0 = draws
        d = self.dataset
        positions, _ = bounce(p0, v0, d.seq_len, d.max_position)  # (B, T, D, 2) float64, CPU
        digits = self.images[pool.to(self.device)].float() / self.levels  # (B, D, 28, 28)
        positions = positions.float().to(self.device, non_blocking=True)
        return render(digits, positions, image_size=d.image_size, colour=d.colour)  # (B, T, C, H, W)


def step_batches(dataset: Any, batch_size: int, start: int, stop: int, device: torch.device, *,
                 ranks: Ranks = SINGLE, workers: int = 0,
                 render_on_device: bool | None = None) -> Iterator[Tensor]:
    """The training frames of steps ``start`` … ``stop − 1`` on ``device``, in order.

    ``workers`` > 0 prepares them in that many DataLoader processes, ahead of the
    training (pinned memory and asynchronous copies on a GPU); 0 prepares each batch in
    this process when it is needed. Moving MNIST on a GPU (``render_on_device`` None:
    automatic) is rendered there by :class:`DeviceRenderer`, the workers making only
    the draws. Whichever way, step s gets the same frames.
    """
    if render_on_device is None:
        render_on_device = isinstance(dataset, MovingMNIST) and device.type == "cuda"
    renderer = DeviceRenderer(dataset, device) if render_on_device else None
    items = StepBatches(dataset, batch_size, ranks, draws_only=renderer is not None)
    if workers == 0:
        source: Iterator[Any] = (items[s] for s in range(start, stop))
    else:
        source = iter(DataLoader(items, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                 pin_memory=device.type == "cuda" and renderer is None,
                                 prefetch_factor=4))
    for item in source:
        yield renderer(item) if renderer is not None else item.to(device, non_blocking=True)


# ---------------------------------------------------------------------------- run folder


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> bool:
    """Refuse to overwrite a run unless asked; returns whether an old run must be cleared."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder; choose another path")
    has_run = run_dir.is_dir() and any(
        (run_dir / name).exists() for name in (runfolder.CONFIG, runfolder.CHECKPOINTS)
    )
    if resume:
        if not (run_dir / runfolder.CONFIG).is_file():
            raise UserError(f"cannot resume: {run_dir} is not an indpred run folder (no config.json)")
        return False
    if has_run and not force:
        raise UserError(
            f"run folder {run_dir} already exists; pass --resume to continue it, "
            "--force to start it over, or choose another --out"
        )
    return has_run


def make_run_dir(run_dir: Path, *, clear: bool) -> None:
    """Create (or, with ``clear``, empty of indpred's own files) a writable run folder."""
    if clear:
        for name in (runfolder.CONFIG, runfolder.METRICS, runfolder.SUMMARY, runfolder.RESTARTS):
            (run_dir / name).unlink(missing_ok=True)
        for old in run_dir.glob(runfolder.attempt_metrics("*")):
            old.unlink(missing_ok=True)
        shutil.rmtree(run_dir / runfolder.CHECKPOINTS, ignore_errors=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run folder {run_dir}: {e.strerror}") from None


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))


@contextmanager
def _stop_on_signals() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (then it checkpoints)."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers, nothing to restore
        previous = {}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    steps: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; returns the final test ELBO.

    On resume the run's own ``config.json`` is used and ``steps`` may extend it.
    The run folder is locked for the whole call (one writer per run). Under torchrun
    every rank calls this; only rank 0 reads or writes ``run_dir`` (see the module).
    """
    run_dir = Path(run_dir)
    with distributed.process_group() as ranks:
        if not ranks.main:
            return _train_follower(run_dir, ranks, progress=progress)
        handshake = _Handshake(ranks)
        try:
            clear = check_run_dir(run_dir, resume=resume, force=force)
            if resume:
                cfg = runfolder.load_config(run_dir)
            if steps is not None:
                cfg.train.steps = steps
            cfg.resolve()
            device = distributed.training_device(runfolder.resolve_device(cfg.train.device), ranks)
            datasets = make_datasets(cfg.data)  # fails early on a bad MNIST folder
            make_run_dir(run_dir, clear=False)
            with run_lock(run_dir, "train"):
                if clear:
                    make_run_dir(run_dir, clear=True)
                cfg.save(run_dir / runfolder.CONFIG)
                return _train_locked(cfg, run_dir, device, datasets, resume=resume,
                                     progress=progress, ranks=ranks, handshake=handshake)
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


def _train_follower(run_dir: Path, ranks: Ranks, *, progress: bool) -> TrainResult:
    """A rank other than 0: train with the config and checkpoint rank 0 sends."""
    message = distributed.share(None, ranks)
    if "error" in message:
        raise UserError(f"rank 0 did not start training: {message['error']}")
    cfg = RunConfig.from_dict(message["config"])
    device = distributed.training_device(runfolder.resolve_device(cfg.train.device), ranks)
    train_set, _ = make_datasets(cfg.data)
    _setup_torch(cfg)
    return _train_attempts(cfg, run_dir, device, (train_set, None), message["checkpoint"], run_dir,
                           attempt=message["attempt"], ranks=ranks, progress=False, resumed=False)


def _setup_torch(cfg: RunConfig) -> None:
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not tc.deterministic  # fastest conv algorithms (GPU only)


def _restore(trainer: Trainer, noise: torch.Generator, checkpoint: tuple | None) -> int:
    """Load a checkpoint's optimiser and noise state (weights are already loaded); its step."""
    if checkpoint is None:
        return 0
    state, _, train_tensors = checkpoint
    trainer.optimizer.load_state_dict(optimizer_from_flat(train_tensors, state["optimizer"]))
    for p, slots in trainer.optimizer.state.items():  # moments in the parameter's memory layout
        for name, value in slots.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                slots[name] = torch.empty_like(p).copy_(value)
    noise.set_state(train_tensors["rng.noise"])
    return state["step"]


def _train_locked(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    datasets: tuple[Dataset, Dataset],
    *,
    resume: bool,
    progress: bool,
    ranks: Ranks = SINGLE,
    handshake: _Handshake | None = None,
) -> TrainResult:
    _setup_torch(cfg)
    ckpt_dir = run_dir / runfolder.CHECKPOINTS
    clean_stale_temporaries(ckpt_dir)
    checkpoint, source = None, run_dir
    attempt = _next_attempt(cfg, run_dir) if resume else 0
    if resume and (found := read_latest_valid(ckpt_dir)) is not None:
        source, state, weights, train_tensors = found
        checkpoint = (state, weights, train_tensors)
        attempt = state.get("extra", {}).get("attempt", 0)
        _trim_metrics(run_dir / runfolder.METRICS, state["step"])
    if handshake is not None:
        handshake.send({"config": cfg.to_dict(), "checkpoint": checkpoint, "attempt": attempt})
    return _train_attempts(cfg, run_dir, device, datasets, checkpoint, source, attempt=attempt,
                           ranks=ranks, progress=progress, resumed=resume and checkpoint is not None)


def _next_attempt(cfg: RunConfig, run_dir: Path) -> int:
    """The start a run resumed without a checkpoint begins: the one its last abandoned start
    named, counted from the config's own seed (``indpred demo`` keeps a start's folder with
    that start's seed in its config, and the restarts before it)."""
    restarts = runfolder.read_restarts(run_dir)
    return (restarts[-1]["next_seed"] - cfg.train.seed) // ATTEMPT_SEED_STRIDE if restarts else 0


def _train_attempts(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    datasets: tuple[Dataset, Dataset | None],
    checkpoint: tuple | None,
    source: Path,
    *,
    attempt: int,
    ranks: Ranks,
    progress: bool,
    resumed: bool,
) -> TrainResult:
    """Build the model of start ``attempt`` (from ``checkpoint`` if given) and train it, starting
    over with new parameters each time the loop finds a dormant factor (``train.dormant_check``)."""
    train_set, test_set = datasets
    abandoned_seconds = 0.0
    while True:
        model = make_model(cfg, device, attempt)
        if checkpoint is not None:
            load_weights(model, checkpoint[1], source)
        else:
            init_output_from_data(model, train_set)
        trainer = make_trainer(model, cfg, device, ranks)
        noise = torch.Generator(device=device).manual_seed(attempt_seed(cfg, attempt) + 1)
        start = _restore(trainer, noise, checkpoint)
        result = _loop(cfg, run_dir, device, trainer, noise, train_set, test_set, start=start,
                       ranks=ranks, progress=progress, resumed=resumed and start > 0, attempt=attempt,
                       carried=checkpoint[0].get("extra", {}) if checkpoint is not None else {})
        if result.dormant is None:
            result.seconds += abandoned_seconds  # every start's training time
            return result
        if ranks.main:
            _abandon_attempt(cfg, run_dir, attempt, result)
        abandoned_seconds += result.seconds
        if result.stopped_early:  # asked to stop as well: a resume takes the next start
            result.dormant, result.seconds = None, abandoned_seconds
            return result
        attempt, checkpoint, resumed = attempt + 1, None, False


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


def _abandon_attempt(cfg: RunConfig, run_dir: Path, attempt: int, result: TrainResult) -> None:
    """Keep the log of a start abandoned for a dormant factor, drop its checkpoints, say so."""
    assert result.dormant is not None
    record_abandoned_start(run_dir, cfg, attempt, result.step, result.dormant, result.seconds,
                           run_dir / runfolder.METRICS)
    shutil.rmtree(run_dir / runfolder.CHECKPOINTS, ignore_errors=True)
    kl = ", ".join(f"{v:.2f}" for v in result.dormant)
    tqdm.write(f"{run_dir.name}: a factor is still dormant at step {result.step} (KL {kl} nats/frame, "
               f"below {cfg.train.dormant_nats:g}): starting over with seed "
               f"{attempt_seed(cfg, attempt + 1)} (start {attempt + 2} of at most "
               f"{cfg.train.dormant_restarts + 1})", file=sys.stderr)


def _ramp(step: int, steps: int) -> float:
    """A warm-up weight at (0-based) ``step``: linear from 1/steps to 1 over ``steps`` steps (0: always 1)."""
    return min(1.0, (step + 1) / steps) if steps else 1.0


def _loop(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    trainer: Trainer,
    noise: torch.Generator,
    train_set: Dataset,
    test_set: Dataset | None,
    *,
    start: int,
    ranks: Ranks,
    progress: bool,
    resumed: bool = False,
    attempt: int = 0,
    carried: dict[str, Any] | None = None,
) -> TrainResult:
    """The optimisation loop, on every rank; rank 0 alone logs, evaluates and checkpoints.

    It returns early, with ``dormant`` set and nothing saved, when a factor is still
    dormant at ``train.dormant_check`` and this start (``attempt``) may be abandoned.
    ``carried``: the resumed checkpoint's extras, the running counts a resume continues
    (skipped steps, the KL summed so far over the dormant check's window, the start's
    training time so far). The result's ``seconds`` count this start's earlier sessions too.
    """
    carried = carried or {}
    before = float(carried.get("train_seconds", 0.0))  # this start's training time in earlier sessions
    tc = cfg.train
    model, optimizer = trainer.model, trainer.optimizer
    main = ranks.main
    ckpt_dir = run_dir / runfolder.CHECKPOINTS
    saved_at = start if resumed else None

    def checkpoint(step: int) -> None:
        nonlocal saved_at
        if saved_at == step or not main:
            return
        save_checkpoint(ckpt_dir, step, model, optimizer, rng={"noise": noise.get_state()},
                        extra={"preset": cfg.preset, "skipped_steps": skipped, "attempt": attempt,
                               "dormant_window": {"kl_sum": wake_sum.tolist(), "steps": wake_n},
                               "train_seconds": before + time.perf_counter() - t0},
                        keep=tc.keep_checkpoints)
        saved_at = step

    B, T, R = tc.batch_size, cfg.data.seq_len, ranks.world
    K, d = cfg.model.factors, cfg.model.factor_dim
    rows = slice(ranks.rank * B, (ranks.rank + 1) * B)  # this rank's share of the global noise
    log = (run_dir / runfolder.METRICS).open("a") if main else None
    interactive = sys.stderr.isatty()  # in a log file, one progress line every 30 s
    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and main), unit="step",
               dynamic_ncols=True, desc=run_dir.name, mininterval=0.1 if interactive else 30.0)
    batches = step_batches(train_set, B, start, tc.steps, device, ranks=ranks, workers=tc.data_workers)
    sums = {"elbo": 0.0, "log_likelihood": 0.0, "n": 0}
    kl_sum = torch.zeros(K, dtype=torch.float64)
    check = tc.dormant_check if K > 1 else 0  # its window's KL is recorded even when it cannot restart
    may_restart = attempt < tc.dormant_restarts
    # KL summed over the check's window, carried over a resume inside it (float64, exact in JSON).
    window = carried.get("dormant_window") or {"kl_sum": [0.0] * K, "steps": 0}
    wake_sum, wake_n = torch.tensor(window["kl_sum"], dtype=torch.float64), int(window["steps"])
    dormant: list[float] | None = None
    t_log, t0 = time.perf_counter(), time.perf_counter()
    step = start
    skipped, bad_in_a_row = int(carried.get("skipped_steps", 0)), 0
    stopped = False
    model.train()
    try:
        with _stop_on_signals() as signals:
            while step < tc.steps:
                frames = next(batches)  # (B, T, C, H, W) on the device
                lr = tc.lr * tc.lr_decay ** (step // tc.lr_decay_every)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                beta = _ramp(step, tc.kl_warmup)
                buffers = [b.clone() for b in model.buffers()]  # batch-norm statistics
                # Noise warm-up: early on the generator sees (nearly) the posterior means.
                noise_scale = _ramp(step, tc.noise_warmup)
                eps = torch.randn(R * B, T, K, d, device=device, generator=noise)[rows]  # (B, T, K, d)
                if noise_scale < 1.0:
                    eps = eps * noise_scale
                loss, terms = forward_backward(trainer, frames, eps, beta, tc.free_bits, ranks)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), tc.grad_clip if tc.grad_clip else math.inf)
                # One transfer (and, over several ranks, one all-reduce) for every figure
                # the step decides on or logs: loss, gradient norm, ELBO, its terms, stop.
                figures = torch.cat([loss.detach().reshape(1), grad_norm.reshape(1).to(loss),
                                     terms.elbo.mean().reshape(1), terms.log_likelihood.mean().reshape(1),
                                     terms.kl.mean(0), loss.new_full((1,), float(signals["stop"]))])
                if ranks.active:
                    distributed.all_reduce_sum(figures, ranks)
                    figures[:-1] /= R
                loss_v, norm_v, elbo_v, ll_v, *kl_v, stop_v = figures.tolist()
                stop = stop_v > 0 or (not ranks.active and signals["stop"])
                step += 1
                bar.update(1)
                if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                    # Skip the update, undo the statistics the bad batch touched, count it.
                    for b, saved in zip(model.buffers(), buffers):
                        b.copy_(saved)
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    bad_in_a_row += 1
                    if log is not None:
                        log.write(json.dumps({"step": step, "split": "train", "skipped": "non-finite "
                                              "loss or gradient", "skipped_total": skipped}) + "\n")
                        log.flush()
                    if bad_in_a_row >= tc.max_bad_steps:
                        last = latest_checkpoint(ckpt_dir) if main else None
                        raise UserError(
                            f"training stopped at step {step}: {bad_in_a_row} steps in a row had a "
                            f"non-finite loss or gradient; the last good checkpoint "
                            f"({last.name if last else 'none'}) is intact. Lower train.lr or set "
                            "train.grad_clip, then --resume")
                    if stop:
                        stopped = step < tc.steps
                        break
                    continue
                bad_in_a_row = 0
                optimizer.step()

                sums["elbo"] += elbo_v
                sums["log_likelihood"] += ll_v
                kl_sum += torch.tensor(kl_v, dtype=torch.float64)
                sums["n"] += 1
                if check and check - DORMANT_WINDOW < step <= check:
                    wake_sum += torch.tensor(kl_v, dtype=torch.float64)
                    wake_n += 1
                if (step % tc.log_every == 0 or step == tc.steps) and sums["n"]:
                    now = time.perf_counter()
                    n = sums["n"]
                    fps = n * R * B * T / max(now - t_log, 1e-9)  # global: every rank's frames
                    record = {"step": step, "split": "train", "elbo": sums["elbo"] / n,
                              "log_likelihood": sums["log_likelihood"] / n,
                              "kl": (kl_sum / n).tolist(), "lr": lr, "kl_weight": beta,
                              "noise_scale": noise_scale,
                              "frames_per_s": fps}
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    bar.set_postfix(elbo=f"{record['elbo']:.1f}", fps=f"{fps:.0f}", refresh=interactive)
                    sums = {"elbo": 0.0, "log_likelihood": 0.0, "n": 0}
                    kl_sum.zero_()
                    t_log = now
                if main and tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
                    test = dataset_elbo(model, test_set, seed=cfg.data.seed, device=device)
                    log.write(json.dumps({"step": step, "split": "test", **test}) + "\n")
                    log.flush()
                if step == check and may_restart and wake_n:
                    window_kl = (wake_sum / wake_n).tolist()  # the same on every rank (all-reduced)
                    if is_dormant(window_kl, cfg):
                        dormant, stopped = window_kl, stop
                        break
                if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                    checkpoint(step)
                if stop:
                    stopped = step < tc.steps
                    break
    finally:
        batches.close()
        bar.close()
        if log is not None:
            log.close()
    if dormant is not None:
        return TrainResult(run_dir=run_dir, step=step, seconds=before + time.perf_counter() - t0,
                           stopped_early=stopped, rank=ranks.rank, dormant=dormant)
    checkpoint(step)

    elapsed = time.perf_counter() - t0
    result = TrainResult(run_dir=run_dir, step=step, seconds=before + elapsed, stopped_early=stopped,
                         rank=ranks.rank)
    if stopped or not main:
        return result
    result.test = dataset_elbo(model, test_set, seed=cfg.data.seed, device=device)
    with (run_dir / runfolder.METRICS).open("a") as f:
        f.write(json.dumps({"step": step, "split": "test", **result.test}) + "\n")
    trained = step - start
    summary = {
        "preset": cfg.preset, "step": step, "test": result.test, "skipped_steps": skipped,
        "train_seconds": before + elapsed,  # this start's, over every session of it
        "train_seconds_this_session": elapsed,
        "frames_per_s_this_session": trained * R * B * T / elapsed if trained else None,
        "precision": model.precision,  # as it ran ("auto" resolved)
    }
    if ranks.active:
        summary["ranks"] = R
    if wake_n:  # the dormant check's figure: each factor's KL over its window (nats per frame)
        summary["dormant_kl"] = (wake_sum / wake_n).tolist()
    if restarts := runfolder.read_restarts(run_dir):
        summary["restarts"] = restarts  # the starts abandoned for a dormant factor
    write_text_atomic(run_dir / runfolder.SUMMARY, json.dumps(summary, indent=2) + "\n")
    return result
