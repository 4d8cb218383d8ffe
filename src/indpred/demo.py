"""``indpred demo``: train the demo model and its entangled twin, evaluate both, compare.

On a machine with two or more cores the twins train side by side, one process each
with half the cores: on a 2-core CPU two single-threaded trainings get through about
a third more frames per second in all than one two-threaded training after the other
(the small operations of the loop over time do not use a second thread well). Each
child's run folder is what ``indpred train`` would write; with the same thread count
its numbers are the same as a run trained alone.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from indpred.config import RunConfig


def _train_child(config: dict[str, Any], run_dir: str, steps: int | None) -> tuple[float, bool]:
    """Train one twin in a worker process; returns (seconds, stopped early)."""
    from indpred.train import train

    result = train(RunConfig.from_dict(config), Path(run_dir), steps=steps, progress=False)
    return result.seconds, result.stopped_early


def _evaluate_child(run_dir: str, sequences: int, threads: int) -> None:
    import torch

    from indpred.eval.evaluate import evaluate_run

    if threads:
        torch.set_num_threads(threads)
    evaluate_run(Path(run_dir), sequences=sequences, iw_samples=5, progress=False)


def _steps_done(run_dir: Path) -> int:
    """The last training step logged in ``metrics.jsonl`` (0 before the first)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        if '"split": "train"' in line:
            step = int(line.split('"step": ', 1)[1].split(",", 1)[0])
    return step


def _wait(futures: list[Future], runs: list[Path], total: int, progress: bool, desc: str) -> None:
    """Wait for the workers, showing one bar over both runs' logged steps."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
        while not all(f.done() for f in futures):
            time.sleep(1.0)
            if total:
                bar.update(sum(_steps_done(r) for r in runs) - bar.n)
        if total:
            bar.update(total - bar.n)


def train_side_by_side(
    twins: list[tuple[RunConfig, Path]], steps: int | None, *, progress: bool
) -> tuple[list[tuple[float, bool]], float]:
    """Train each (config, run folder) in its own process; returns [(seconds, stopped)] and wall time.

    Each process gets ``cpu_count // len(twins)`` torch threads (at least one), recorded
    in its config. Ctrl-C reaches the workers too: each saves a checkpoint and stops.
    """
    threads = max(1, (os.cpu_count() or 1) // len(twins))
    configs = []
    for cfg, _ in twins:
        cfg.train.threads = threads
        configs.append(cfg.to_dict())
    total = sum(steps or cfg.train.steps for cfg, _ in twins)
    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=len(twins), mp_context=context) as pool:
        futures = [pool.submit(_train_child, c, str(run), steps) for c, (_, run) in zip(configs, twins)]
        try:
            _wait(futures, [run for _, run in twins], total, progress, "training both")
        except KeyboardInterrupt:  # the workers got the signal too: let them save and stop
            for f in futures:
                try:
                    f.result()
                except BaseException:
                    pass
            return [(0.0, True) for _ in twins], time.perf_counter() - t0
        results = [f.result() for f in futures]
    return results, time.perf_counter() - t0


def evaluate_side_by_side(runs: list[Path], sequences: int, *, progress: bool) -> None:
    """Evaluate each run in its own process (``indpred eval`` with 5 importance samples)."""
    threads = max(1, (os.cpu_count() or 1) // len(runs))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(runs), mp_context=context) as pool:
        futures = [pool.submit(_evaluate_child, str(r), sequences, threads) for r in runs]
        _wait(futures, runs, 0, progress, "evaluating")
        for f in futures:
            f.result()
