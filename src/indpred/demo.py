"""``indpred demo``'s work: train the demo model and its entangled twin, then evaluate both.

On a machine with two or more cores the twins train side by side, one process each
with half the cores: on a 2-core CPU two single-threaded trainings get through about
a third more frames per second in all than one two-threaded training after the other
(the small operations of the loop over time do not use a second thread well). Each
child's run folder is what ``indpred train`` would write; with the same thread count
its numbers are the same as a run trained alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from indpred.config import RunConfig
from indpred.run import METRICS, read_restarts

IW_SAMPLES = 5  # importance samples of the bound the demo's evaluation reports


def _train(config: dict[str, Any], run_dir: str, steps: int | None, progress: bool) -> tuple[float, bool]:
    """Train one twin (in this process or a worker); returns (seconds, stopped early)."""
    from indpred.train import train

    result = train(RunConfig.from_dict(config), Path(run_dir), steps=steps, progress=progress)
    return result.seconds, result.stopped_early


def _evaluate(run_dir: str, sequences: int, threads: int, progress: bool) -> None:
    """Evaluate one twin (``indpred eval`` with the demo's settings); ``threads`` 0: torch's default."""
    import torch

    from indpred.eval.evaluate import evaluate_run

    if threads:
        torch.set_num_threads(threads)
    evaluate_run(Path(run_dir), sequences=sequences, iw_samples=IW_SAMPLES, progress=progress)


def _steps_done(run_dir: Path) -> int:
    """The last training step logged in the run's metrics (0 before the first)."""
    path = run_dir / METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line the worker is still writing
            continue
        if record.get("split") == "train":
            return int(record["step"])
    return 0


def _wait(futures: list[Future], runs: list[Path], total: int, progress: bool, desc: str) -> None:
    """Wait for the workers, showing one bar over both runs' logged steps (a start abandoned
    for a dormant factor adds its steps to the total)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
        while not all(f.done() for f in futures):
            time.sleep(1.0)
            if total:
                abandoned = sum(r["step"] for run in runs for r in read_restarts(run))
                bar.total = total + abandoned
                bar.update(abandoned + sum(_steps_done(r) for r in runs) - bar.n)
        if total:
            bar.update(bar.total - bar.n)


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _threads_each(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def train_twins(
    twins: list[tuple[RunConfig, Path]], steps: int | None, *, side_by_side: bool, progress: bool
) -> tuple[list[tuple[float, bool]], float]:
    """Train each (config, run folder); returns [(seconds, stopped early)] and the wall time.

    ``side_by_side``: one worker process each, ``cpu_count // len(twins)`` torch threads
    (at least one, recorded in its config); Ctrl-C reaches the workers too, and each saves
    a checkpoint and stops. Otherwise one after the other here, stopping at the first
    that stops early (the list is then shorter).
    """
    t0 = time.perf_counter()
    if not side_by_side:
        results = []
        for cfg, run in twins:
            results.append(_train(cfg.to_dict(), str(run), steps, progress))
            if results[-1][1]:
                break
        return results, time.perf_counter() - t0
    for cfg, _ in twins:
        cfg.train.threads = _threads_each(len(twins))
    total = sum(steps or cfg.train.steps for cfg, _ in twins)
    with _pool(len(twins)) as pool:
        futures = [pool.submit(_train, cfg.to_dict(), str(run), steps, False) for cfg, run in twins]
        try:
            _wait(futures, [run for _, run in twins], total, progress, "training both")
        except KeyboardInterrupt:  # the workers got the signal too: let them save and stop
            for f in futures:
                try:
                    f.result()
                except BaseException:  # a worker killed by the signal counts as stopped
                    pass
            return [(0.0, True) for _ in twins], time.perf_counter() - t0
        results = [f.result() for f in futures]
    return results, time.perf_counter() - t0


def evaluate_twins(runs: list[Path], sequences: int, *, side_by_side: bool, progress: bool) -> None:
    """Evaluate each run, side by side (one worker each) or one after the other here."""
    if not side_by_side:
        for run in runs:
            _evaluate(str(run), sequences, 0, progress)
        return
    with _pool(len(runs)) as pool:
        futures = [pool.submit(_evaluate, str(r), sequences, _threads_each(len(runs)), False) for r in runs]
        _wait(futures, runs, 0, progress, "evaluating")
        for f in futures:
            f.result()
