"""The optimisation loop: one step, and the loop that logs, evaluates and checkpoints around it.

Every step draws its batch by index (:mod:`~indpred.train.batches`) and its
reparameterisation noise from one generator a checkpoint saves, so a resumed run
repeats exactly what an uninterrupted one would have done. Each step, on every rank:

1. the learning rate (``train.lr`` decayed by ``train.lr_decay`` every ``lr_decay_every``
   steps) and the KL weight (warm-up over ``train.kl_warmup`` steps) for this step;
2. forward and backward (:func:`forward_backward`), gradient clipping (``train.grad_clip``);
3. the step's figures packed in one device tensor (:func:`pack_figures`, all-reduced over
   ranks) and the update decided on the device (:mod:`~indpred.train.update`): a
   non-finite loss or gradient leaves parameters, Adam's state and batch norm's statistics
   as they were. With ``train.cuda_graphs`` steps 2 and 3 are one CUDA graph, replayed
   (:mod:`~indpred.train.graphs`).

Nothing of that is read on the host. At a sync point (a log, test-ELBO, dormant-check or
checkpoint step, and the last) the figures since the previous one come back in one
transfer and are replayed in order, exactly as a loop reading them every step would have:
skipped steps are counted and logged, good ones fill the log window and the dormant
window, then the step's log line, test ELBO, dormant check and checkpoint follow; a stop
signal is read there too. Rank 0 alone logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from indpred import distributed
from indpred import run as runfolder
from indpred.checkpoint import latest_checkpoint, save_checkpoint
from indpred.config import RunConfig
from indpred.distributed import SINGLE, Ranks
from indpred.errors import UserError
from indpred.eval.elbo import dataset_elbo
from indpred.fileio import write_text_atomic
from indpred.model import snapshot_buffers
from indpred.objective import ElboTerms, training_loss
from indpred.train.batches import step_batches
from indpred.train.board import Board
from indpred.train.graphs import StepGraph
from indpred.train.restarts import DormantWindow, abandons
from indpred.train.setup import Trainer, is_out_of_memory, out_of_memory_message
from indpred.train.update import finite, masked_restore_buffers, masked_step


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


def forward_backward(trainer: Trainer, frames: Tensor, noise: Tensor, kl_weight: float | Tensor = 1.0,
                     free_bits: float = 0.0, ranks: Ranks = SINGLE) -> tuple[Tensor, ElboTerms]:
    """Loss and (detached) ELBO terms of one batch, gradients accumulated (no optimiser step).

    The loss is :func:`~indpred.objective.training_loss`; under torchrun its free bits are
    decided on the global batch's mean KL (one all-reduce of K numbers).
    """
    if trainer.compiled_graphs:  # a new step: the graphs may reuse the last step's output memory
        torch.compiler.cudagraph_mark_step_begin()
    terms = trainer.objective(frames, noise)  # log-likelihood (B,), KL (B, K)
    batch_mean = (lambda kl: distributed.all_reduce_sum(kl, ranks) / ranks.world) if ranks.active else None
    loss = training_loss(terms, kl_weight=kl_weight, free_bits=free_bits, batch_mean=batch_mean)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss, terms.detach()


def update(trainer: Trainer, frames: Tensor, eps: Tensor, kl_weight: float | Tensor = 1.0, *,
           free_bits: float = 0.0, grad_clip: float = 0.0, ranks: Ranks = SINGLE) -> Tensor:
    """A training step's work on the device: forward, backward, clipping (``grad_clip`` 0: none)
    and the update, which a non-finite step skips (:mod:`~indpred.train.update`); nothing is
    read back. Returns the step's packed figures (4 + K,) (:func:`pack_figures`)."""
    model = trainer.model
    buffers = snapshot_buffers(model)  # batch norm's statistics, restored after a bad step
    loss, terms = forward_backward(trainer, frames, eps, kl_weight, free_bits, ranks)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else math.inf)
    packed = pack_figures(loss, grad_norm, terms, ranks)  # (4 + K,)
    ok = finite(packed[0], packed[1])  # on every rank alike: the figures are global
    masked_step(trainer.optimizer, ok)
    masked_restore_buffers(model, buffers, ok)
    return packed


@dataclass
class StepFigures:
    """What a step decides on and logs, as plain numbers (means over every rank's batch),
    read back at a sync point from the step's packed device tensor (:func:`pack_figures`)."""

    loss: float
    grad_norm: float
    elbo: float
    log_likelihood: float
    kl: list[float]  # (K,)

    @classmethod
    def unpack(cls, values: list[float]) -> StepFigures:
        loss_v, norm_v, elbo_v, ll_v, *kl_v = values
        return cls(loss_v, norm_v, elbo_v, ll_v, kl_v)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def pack_figures(loss: Tensor, grad_norm: Tensor, terms: ElboTerms, ranks: Ranks) -> Tensor:
    """A step's figures in one device tensor (4 + K,): loss, gradient norm, ELBO, log-likelihood,
    KL per factor; averaged over ranks by one all-reduce (no host round-trip)."""
    packed = torch.cat([loss.detach().reshape(1), grad_norm.reshape(1).to(loss),
                        terms.elbo.mean().reshape(1), terms.log_likelihood.mean().reshape(1),
                        terms.kl.mean(0)])
    if ranks.active:
        distributed.all_reduce_sum(packed, ranks)
        packed /= ranks.world
    return packed


@dataclass
class LogWindow:
    """The figures summed since the last train log line (averaged when it is written)."""

    kl: Tensor  # (K,) float64
    since: float = field(default_factory=time.perf_counter)
    elbo: float = 0.0
    log_likelihood: float = 0.0
    n: int = 0

    def add(self, f: StepFigures) -> None:
        self.elbo += f.elbo
        self.log_likelihood += f.log_likelihood
        self.kl += torch.tensor(f.kl, dtype=torch.float64)
        self.n += 1

    def record(self, step: int, lr: float, kl_weight: float, frames_per_step: int, now: float) -> dict:
        fps = self.n * frames_per_step / max(now - self.since, 1e-9)  # global: every rank's frames
        return {"step": step, "split": "train", "elbo": self.elbo / self.n,
                "log_likelihood": self.log_likelihood / self.n, "kl": (self.kl / self.n).tolist(),
                "lr": lr, "kl_weight": kl_weight, "frames_per_s": fps}

    def reset(self, now: float) -> None:
        self.elbo, self.log_likelihood, self.n, self.since = 0.0, 0.0, 0, now
        self.kl.zero_()


@dataclass
class Counters:
    """The running counts a checkpoint carries beside the weights, so that a resume continues them."""

    step: int
    attempt: int  # which start of the run (see restarts)
    window: DormantWindow
    skipped: int = 0  # non-finite steps skipped, over every session
    seconds_before: float = 0.0  # this start's training time in earlier sessions
    bad_in_a_row: int = 0  # not carried: a resume starts from a good checkpoint

    @classmethod
    def carried(cls, cfg: RunConfig, step: int, attempt: int, extra: dict[str, Any]) -> Counters:
        """The counts at ``step``, from a resumed checkpoint's extras (empty: a fresh start)."""
        return cls(step=step, attempt=attempt, window=DormantWindow.of(cfg, extra),
                   skipped=int(extra.get("skipped_steps", 0)),
                   seconds_before=float(extra.get("train_seconds", 0.0)))

    def extra(self, cfg: RunConfig, seconds: float) -> dict[str, Any]:
        """The checkpoint's extras: what :meth:`carried` reads back."""
        return {"preset": cfg.preset, "skipped_steps": self.skipped, "attempt": self.attempt,
                "dormant_window": self.window.to_extra(), "train_seconds": seconds}


def _ramp(step: int, steps: int) -> float:
    """A warm-up weight at (0-based) ``step``: linear from 1/steps to 1 over ``steps`` steps (0: always 1)."""
    return min(1.0, (step + 1) / steps) if steps else 1.0


@contextmanager
def stop_on_signals() -> Iterator[dict[str, bool]]:
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


class TrainingLoop:
    """One start of a run trained from ``counters.step`` to ``train.steps`` (or a stop).

    It returns early, with ``dormant`` set and nothing saved, when the dormant-factor rule
    abandons this start at its check. The result's ``seconds`` count this start's earlier
    sessions too.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, device: torch.device, trainer: Trainer,
                 noise: torch.Generator, datasets: tuple[Any, Any], counters: Counters, *,
                 ranks: Ranks, progress: bool, resumed: bool) -> None:
        self.cfg, self.run_dir, self.device, self.trainer, self.noise = cfg, run_dir, device, trainer, noise
        self.train_set, self.test_set = datasets
        self.counters, self.ranks, self.progress = counters, ranks, progress
        self.start = counters.step
        self.saved_at = counters.step if resumed else None
        self.logged = LogWindow(kl=torch.zeros(cfg.model.factors, dtype=torch.float64))
        self.log: IO[str] | None = None
        self.board: Board | None = None  # TensorBoard, opened by run() on the main rank if asked for
        self.resumed = resumed
        self.graph = (None if trainer.capture is None else StepGraph(
            lambda static: update(trainer, static["frames"], static["noise"], static["kl_weight"],
                                  free_bits=cfg.train.free_bits, grad_clip=cfg.train.grad_clip, ranks=ranks),
            device, capture=trainer.capture))  # train.cuda_graphs: the step as a CUDA graph
        self.pending: list[Tensor] = []  # each step's packed figures since the last sync point
        self.lr, self.kl_weight = cfg.train.lr, 1.0
        self.t0 = time.perf_counter()

    @property
    def frames_per_step(self) -> int:
        return self.ranks.world * self.cfg.train.batch_size * self.cfg.data.seq_len

    def run(self) -> TrainResult:
        tc, c = self.cfg.train, self.counters
        interactive = sys.stderr.isatty()  # in a log file, one progress line every 30 s
        bar = tqdm(total=tc.steps, initial=self.start, disable=not (self.progress and self.ranks.main),
                   unit="step", dynamic_ncols=True, desc=self.run_dir.name,
                   mininterval=0.1 if interactive else 30.0)
        batches = step_batches(self.train_set, tc.batch_size, self.start, tc.steps, self.device,
                               ranks=self.ranks, workers=tc.data_workers)
        self.log = (self.run_dir / runfolder.METRICS).open("a") if self.ranks.main else None
        if tc.tensorboard and self.ranks.main:
            # A resume drops the events after its checkpoint (as the log is trimmed); a new start
            # (after an abandoned one) drops them all.
            self.board = Board(self.run_dir, purge_step=self.start + 1 if self.resumed else 0)
        stopped, dormant = False, None
        self.trainer.model.train()
        try:
            with stop_on_signals() as signals:
                while c.step < tc.steps:
                    if c.step == self.start:  # where a run too large for memory shows
                        self._first_step(batches)
                    else:
                        self._step(next(batches))
                    bar.update(1)
                    if not self._sync_point(c.step, signals):
                        continue
                    dormant, stop = self._settle(bar, interactive, signals)
                    if dormant is not None:
                        stopped = stop
                        break
                    if stop:
                        stopped = c.step < tc.steps
                        break
        except BaseException:
            self._close_board()  # the error goes on; the events written so far are kept
            raise
        finally:
            batches.close()
            bar.close()
            if self.log is not None:
                self.log.close()
        try:
            return self._finish(stopped, dormant)
        finally:
            self._close_board()

    def _first_step(self, batches: Iterator[Tensor]) -> None:
        """The session's first step, where a run too large for memory shows: one line if it is."""
        try:
            self._step(next(batches))
        except Exception as e:
            if is_out_of_memory(e):
                raise UserError(out_of_memory_message(self.cfg, "at the first step", e)) from None
            raise

    def _step(self, frames: Tensor) -> None:
        """One batch (B, T, C, H, W) trained on: this step's learning rate, KL weight and noise,
        then :func:`update`, eagerly or replayed as a CUDA graph (``train.cuda_graphs``)."""
        tc, c, ranks = self.cfg.train, self.counters, self.ranks
        self.lr = tc.lr * tc.lr_decay ** (c.step // tc.lr_decay_every)
        for group in self.trainer.optimizer.param_groups:
            group["lr"] = self.lr
        self.kl_weight = _ramp(c.step, tc.kl_warmup)
        B, K, d = tc.batch_size, self.cfg.model.factors, self.cfg.model.factor_dim
        eps = torch.randn(ranks.world * B, self.cfg.data.seq_len, K, d, device=self.device,
                          generator=self.noise)  # (R·B, T, K, d): the global batch's
        eps = eps[ranks.rank * B:(ranks.rank + 1) * B]  # (B, T, K, d): this rank's rows
        if self.graph is None:
            packed = update(self.trainer, frames, eps, self.kl_weight, free_bits=tc.free_bits,
                            grad_clip=tc.grad_clip, ranks=ranks)
        else:  # the learning rate is baked into the graph: a new one is a new capture
            packed = self.graph(self.lr, frames=frames, noise=eps, kl_weight=self.kl_weight)
        self.pending.append(packed)
        c.step += 1

    def _sync_point(self, step: int, signals: dict[str, bool]) -> bool:
        """Whether the loop reads the figures back after ``step``: a step that logs, evaluates,
        checks for a dormant factor or saves, and the last; also once ``train.max_bad_steps``
        steps are pending (so that a run stuck on non-finite steps stops in time) and, in one
        process, as soon as a stop signal came (under torchrun every rank must agree on the
        step, so a signal waits for the next regular sync point there)."""
        tc = self.cfg.train
        return (step % tc.log_every == 0 or step == tc.steps or step == self.counters.window.check
                or bool(tc.eval_every and step % tc.eval_every == 0)
                or bool(tc.checkpoint_every and step % tc.checkpoint_every == 0)
                or len(self.pending) >= tc.max_bad_steps
                or (not self.ranks.active and signals["stop"]))

    def _settle(self, bar: tqdm, interactive: bool, signals: dict[str, bool]
                ) -> tuple[list[float] | None, bool]:
        """Read the figures since the last sync point in one transfer and replay them in order;
        then this step's log, test ELBO, dormant check and checkpoint if it was a good step.
        Returns the window's KL if this start is abandoned, and whether to stop."""
        c = self.counters
        values = torch.stack(self.pending).tolist()  # the one host transfer since the last sync point
        first = c.step - len(values) + 1
        self.pending.clear()
        good = False
        for step, v in enumerate(values, start=first):
            figures = StepFigures.unpack(v)
            good = figures.finite
            if good:
                c.bad_in_a_row = 0
                self.logged.add(figures)
                c.window.add(step, figures.kl)
            else:
                self._skip(step)
        stop = self._stop_requested(signals)
        if not good:  # a skipped step does nothing more, as if it had never run
            return None, stop
        return self._after_good_step(bar, interactive), stop

    def _stop_requested(self, signals: dict[str, bool]) -> bool:
        """Whether a stop signal reached some rank (one all-reduce over several)."""
        if not self.ranks.active:
            return signals["stop"]
        flag = torch.tensor([float(signals["stop"])], device=self.device)
        return distributed.all_reduce_sum(flag, self.ranks).item() > 0

    def _skip(self, step: int) -> None:
        """A non-finite loss or gradient at ``step``: nothing was updated; count and log it."""
        c = self.counters
        c.skipped += 1
        c.bad_in_a_row += 1
        self._write({"step": step, "split": "train", "skipped": "non-finite loss or gradient",
                     "skipped_total": c.skipped})
        if c.bad_in_a_row >= self.cfg.train.max_bad_steps:
            last = latest_checkpoint(self.run_dir / runfolder.CHECKPOINTS) if self.ranks.main else None
            raise UserError(f"training stopped at step {step}: {c.bad_in_a_row} steps in a row had a "
                            f"non-finite loss or gradient; the last good checkpoint "
                            f"({last.name if last else 'none'}) "
                            "is intact. Lower train.lr or set train.grad_clip, then --resume")

    def _after_good_step(self, bar: tqdm, interactive: bool) -> list[float] | None:
        """What follows a good step at a sync point; the window's KL if this start is abandoned."""
        tc, c = self.cfg.train, self.counters
        if (c.step % tc.log_every == 0 or c.step == tc.steps) and self.logged.n:
            now = time.perf_counter()
            record = self.logged.record(c.step, self.lr, self.kl_weight, self.frames_per_step, now)
            self._write(record)
            bar.set_postfix(elbo=f"{record['elbo']:.1f}", fps=f"{record['frames_per_s']:.0f}",
                            refresh=interactive)
            self.logged.reset(now)
        if self.ranks.main and tc.eval_every and c.step % tc.eval_every == 0 and c.step < tc.steps:
            self._write({"step": c.step, "split": "test", **self._test_elbo()})
            self._board_images()
        if c.step == c.window.check and c.window.steps and abandons(self.cfg, c.attempt, c.window.mean()):
            return c.window.mean()
        if tc.checkpoint_every and c.step % tc.checkpoint_every == 0:
            self._checkpoint()
        return None

    def _write(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        if self.board is not None:
            self.board.record(record)

    def _close_board(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def _board_images(self) -> None:
        if self.board is not None:
            self.board.images(self.trainer.model, self.test_set, self.counters.step, self.device)

    def _test_elbo(self) -> dict[str, Any]:
        return dataset_elbo(self.trainer.model, self.test_set, seed=self.cfg.data.seed, device=self.device)

    def _seconds(self) -> float:
        """This start's training time, over every session of it."""
        return self.counters.seconds_before + time.perf_counter() - self.t0

    def _checkpoint(self) -> None:
        step = self.counters.step
        if self.saved_at == step or not self.ranks.main:
            return
        save_checkpoint(self.run_dir / runfolder.CHECKPOINTS, step, self.trainer.model,
                        self.trainer.optimizer, rng={"noise": self.noise.get_state()},
                        extra=self.counters.extra(self.cfg, self._seconds()),
                        keep=self.cfg.train.keep_checkpoints)
        self.saved_at = step

    def _finish(self, stopped: bool, dormant: list[float] | None) -> TrainResult:
        """The last checkpoint, the final test ELBO and ``summary.json`` (unless stopped or abandoned)."""
        c = self.counters
        result = TrainResult(run_dir=self.run_dir, step=c.step, stopped_early=stopped, rank=self.ranks.rank)
        if dormant is not None:
            result.seconds, result.dormant = self._seconds(), dormant
            return result
        self._checkpoint()
        elapsed = time.perf_counter() - self.t0
        result.seconds = c.seconds_before + elapsed
        if stopped or not self.ranks.main:
            return result
        result.test = self._test_elbo()
        record = {"step": c.step, "split": "test", **result.test}
        with (self.run_dir / runfolder.METRICS).open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.record(record)
            self._board_images()
        self._write_summary(result.test, elapsed)
        return result

    def _write_summary(self, test: dict[str, Any], elapsed: float) -> None:
        c, trained = self.counters, self.counters.step - self.start
        summary: dict[str, Any] = {
            "preset": self.cfg.preset, "step": c.step, "test": test, "skipped_steps": c.skipped,
            "train_seconds": c.seconds_before + elapsed,  # this start's, over every session of it
            "train_seconds_this_session": elapsed,
            "frames_per_s_this_session": trained * self.frames_per_step / elapsed if trained else None,
            "precision": self.trainer.model.precision,  # as it ran ("auto" resolved)
        }
        if self.ranks.active:
            summary["ranks"] = self.ranks.world
        if c.window.steps:  # the dormant check's figure: each factor's KL over its window (nats per frame)
            summary["dormant_kl"] = c.window.mean()
        if restarts := runfolder.read_restarts(self.run_dir):
            summary["restarts"] = restarts  # the starts abandoned for a dormant factor
        write_text_atomic(self.run_dir / runfolder.SUMMARY, json.dumps(summary, indent=2) + "\n")
