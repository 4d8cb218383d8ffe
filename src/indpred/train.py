"""Training: the optimisation loop, checkpoints, logging, resumption.

Every step draws its batch by index (step·B … step·B + B − 1 of the training stream),
and the reparameterisation noise comes from one saved generator, so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

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

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

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
from indpred.errors import UserError
from indpred.eval.elbo import dataset_elbo
from indpred.lock import run_lock
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo

TRAIN_STREAM_LENGTH = 2**31 - 1  # the training stream is, in practice, endless


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
    """Where a finished (or stopped) run stands."""

    run_dir: Path
    step: int
    test: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_early: bool = False


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
        for name in (runfolder.CONFIG, runfolder.METRICS, runfolder.SUMMARY):
            (run_dir / name).unlink(missing_ok=True)
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
    write_atomic(path, "".join(line + "\n" for line in kept))


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
    The run folder is locked for the whole call (one writer per run).
    """
    run_dir = Path(run_dir)
    clear = check_run_dir(run_dir, resume=resume, force=force)
    if resume:
        cfg = runfolder.load_config(run_dir)
    if steps is not None:
        cfg.train.steps = steps
    cfg.resolve()
    device = runfolder.resolve_device(cfg.train.device)
    datasets = make_datasets(cfg.data)  # fails early on a bad MNIST folder
    make_run_dir(run_dir, clear=False)
    with run_lock(run_dir, "train"):
        if clear:
            make_run_dir(run_dir, clear=True)
        cfg.save(run_dir / runfolder.CONFIG)
        return _train_locked(cfg, run_dir, device, datasets, resume=resume, progress=progress)


def _train_locked(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    datasets: tuple[Dataset, Dataset],
    *,
    resume: bool,
    progress: bool,
) -> TrainResult:
    tc = cfg.train
    train_set, test_set = datasets
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(tc.seed)
    model = FactoredVAE(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    noise = torch.Generator(device=device).manual_seed(tc.seed + 1)

    start = 0
    ckpt_dir = run_dir / runfolder.CHECKPOINTS
    clean_stale_temporaries(ckpt_dir)
    if resume and (found := read_latest_valid(ckpt_dir)) is not None:
        ckpt, state, weights, train_tensors = found
        load_weights(model, weights, ckpt)
        optimizer.load_state_dict(optimizer_from_flat(train_tensors, state["optimizer"]))
        noise.set_state(train_tensors["rng.noise"])
        start = state["step"]
        _trim_metrics(run_dir / runfolder.METRICS, start)
    saved_at = start if resume and start else None

    def checkpoint(step: int) -> None:
        nonlocal saved_at
        if saved_at == step:
            return
        save_checkpoint(ckpt_dir, step, model, optimizer, rng={"noise": noise.get_state()},
                        extra={"preset": cfg.preset, "skipped_steps": skipped},
                        keep=tc.keep_checkpoints)
        saved_at = step

    B, T = tc.batch_size, cfg.data.seq_len
    log = (run_dir / runfolder.METRICS).open("a")
    interactive = sys.stderr.isatty()  # in a log file, one progress line every 30 s
    bar = tqdm(total=tc.steps, initial=start, disable=not progress, unit="step",
               dynamic_ncols=True, desc=run_dir.name, mininterval=0.1 if interactive else 30.0)
    sums = {"elbo": 0.0, "log_likelihood": 0.0, "n": 0}
    kl_sum = torch.zeros(cfg.model.factors, dtype=torch.float64)
    t_log, t0 = time.perf_counter(), time.perf_counter()
    step = start
    skipped, bad_in_a_row = 0, 0
    stopped = False
    model.train()
    try:
        with _stop_on_signals() as signals:
            while step < tc.steps:
                frames = train_set.get_batch(range(step * B, (step + 1) * B))["frames"]
                frames = frames.to(device, non_blocking=True)  # (B, T, C, H, W)
                lr = tc.lr * tc.lr_decay ** (step // tc.lr_decay_every)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                beta = min(1.0, (step + 1) / tc.kl_warmup) if tc.kl_warmup else 1.0
                buffers = [b.clone() for b in model.buffers()]  # batch-norm statistics
                terms = sequence_elbo(model, frames, generator=noise)
                loss = -(terms.log_likelihood - beta * terms.kl.sum(-1)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), tc.grad_clip if tc.grad_clip else math.inf)
                step += 1
                bar.update(1)
                if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                    # Skip the update, undo the statistics the bad batch touched, count it.
                    for b, saved in zip(model.buffers(), buffers):
                        b.copy_(saved)
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    bad_in_a_row += 1
                    log.write(json.dumps({"step": step, "split": "train", "skipped": "non-finite "
                                          "loss or gradient", "skipped_total": skipped}) + "\n")
                    log.flush()
                    if bad_in_a_row >= tc.max_bad_steps:
                        last = latest_checkpoint(ckpt_dir)
                        raise UserError(
                            f"training stopped at step {step}: {bad_in_a_row} steps in a row had a "
                            f"non-finite loss or gradient; the last good checkpoint "
                            f"({last.name if last else 'none'}) is intact. Lower train.lr or set "
                            "train.grad_clip, then --resume")
                    continue
                bad_in_a_row = 0
                optimizer.step()

                with torch.no_grad():
                    sums["elbo"] += terms.elbo.mean().item()
                    sums["log_likelihood"] += terms.log_likelihood.mean().item()
                    kl_sum += terms.kl.mean(0).double().cpu()
                    sums["n"] += 1
                if (step % tc.log_every == 0 or step == tc.steps) and sums["n"]:
                    now = time.perf_counter()
                    n = sums["n"]
                    fps = n * B * T / max(now - t_log, 1e-9)
                    record = {"step": step, "split": "train", "elbo": sums["elbo"] / n,
                              "log_likelihood": sums["log_likelihood"] / n,
                              "kl": (kl_sum / n).tolist(), "lr": lr, "kl_weight": beta,
                              "frames_per_s": fps}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix(elbo=f"{record['elbo']:.1f}", fps=f"{fps:.0f}", refresh=interactive)
                    sums = {"elbo": 0.0, "log_likelihood": 0.0, "n": 0}
                    kl_sum.zero_()
                    t_log = now
                if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
                    test = dataset_elbo(model, test_set, seed=cfg.data.seed, device=device)
                    log.write(json.dumps({"step": step, "split": "test", **test}) + "\n")
                    log.flush()
                if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                    checkpoint(step)
                if signals["stop"]:
                    stopped = step < tc.steps
                    break
    finally:
        bar.close()
        log.close()
    checkpoint(step)

    elapsed = time.perf_counter() - t0
    result = TrainResult(run_dir=run_dir, step=step, seconds=elapsed, stopped_early=stopped)
    if stopped:
        return result
    result.test = dataset_elbo(model, test_set, seed=cfg.data.seed, device=device)
    with (run_dir / runfolder.METRICS).open("a") as f:
        f.write(json.dumps({"step": step, "split": "test", **result.test}) + "\n")
    trained = step - start
    summary = {
        "preset": cfg.preset, "step": step, "test": result.test, "skipped_steps": skipped,
        "train_seconds_this_session": elapsed,
        "frames_per_s_this_session": trained * B * T / elapsed if trained else None,
    }
    write_atomic(run_dir / runfolder.SUMMARY, json.dumps(summary, indent=2) + "\n")
    return result


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
