"""``indpred demo``'s work: train the demo model and its entangled twin, then evaluate both.

On a machine with two or more cores the twins train side by side, one process each
with half the cores: on a 2-core CPU two single-threaded trainings get through about
a third more frames per second in all than one two-threaded training after the other
(the small operations of the loop over time do not use a second thread well). Each
child's run folder is what ``indpred train`` would write; with the same thread count
its numbers are the same as a run trained alone. Under the demo's dormant-factor rule the
factored model's first two starts train side by side before the twins do (see
:func:`_train_starts_side_by_side`), so an abandoned start leaves no core idle.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from indpred.config import RunConfig
from indpred.run import CONFIG, METRICS, SUMMARY, read_metrics, read_restarts

IW_SAMPLES = 5  # importance samples of the bound the demo's evaluation reports
SETTINGS = "demo.json"  # the demo's own settings, beside its two runs, for ``indpred demo --resume``


def save_settings(out: Path, config: RunConfig, steps: int | None, eval_sequences: int) -> None:
    """Record what a demo was started with (the factored config; the twin derives from it)."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": config.to_dict(), "steps": steps, "eval_sequences": eval_sequences}
    (out / SETTINGS).write_text(json.dumps(record, indent=2) + "\n")


def load_settings(out: Path) -> tuple[RunConfig, int | None, int]:
    """The factored config, steps and evaluation size a demo in ``out`` was started with."""
    from indpred.errors import UserError

    path = out / SETTINGS
    if not path.is_file():
        raise UserError(f"cannot resume: {out} is not a folder made by indpred demo (no {SETTINGS}); "
                        "start a demo with: indpred demo --out DIR")
    record = json.loads(path.read_text())
    return RunConfig.from_dict(record["config"]), record["steps"], int(record["eval_sequences"])


def _train(config: dict[str, Any], run_dir: str, steps: int | None, progress: bool,
           resume: bool = False) -> tuple[float, bool]:
    """Train (or resume) one run, in this process or a worker; returns (seconds, stopped early)."""
    from indpred.train import train

    result = train(RunConfig.from_dict(config), Path(run_dir), steps=steps, progress=progress,
                   resume=resume)
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
    steps = [r["step"] for r in read_metrics(run_dir) if r.get("split") == "train"]
    return int(steps[-1]) if steps else 0


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


def _begun(run: Path) -> bool:
    """Whether ``run`` holds a run to resume (a stopped demo's)."""
    return (run / CONFIG).is_file()


def train_twins(
    twins: list[tuple[RunConfig, Path]], steps: int | None, *, side_by_side: bool, progress: bool
) -> tuple[list[tuple[float, bool]], float]:
    """Train each (config, run folder); returns [(seconds, stopped early)] and the wall time.

    A run folder that already holds a run (a stopped demo's) is resumed, so calling this
    again after a stop finishes the same runs. ``side_by_side``: one worker process each,
    ``cpu_count // len(twins)`` torch threads (at least one, recorded in its config);
    Ctrl-C reaches the workers too, and each saves a checkpoint and stops. Otherwise one
    after the other here, stopping at the first that stops early (the list is then shorter).
    """
    t0 = time.perf_counter()
    if not side_by_side:
        results = []
        for cfg, run in twins:
            results.append(_train(cfg.to_dict(), str(run), steps, progress, resume=_begun(run)))
            if results[-1][1]:
                break
        return results, time.perf_counter() - t0
    for cfg, _ in twins:
        cfg.train.threads = _threads_each(len(twins))
    if len(twins) == 2 and _starts_side_by_side(twins[0][0], steps):
        return _train_starts_side_by_side(twins, steps, progress), time.perf_counter() - t0
    jobs = [(cfg.to_dict(), run, steps, _begun(run)) for cfg, run in twins]
    total = sum(steps or cfg.train.steps for cfg, _ in twins)
    return _side_by_side(jobs, total, progress, "training both"), time.perf_counter() - t0


Job = tuple[dict[str, Any], Path, "int | None", bool]  # config, run folder, steps, resume


def _side_by_side(jobs: list[Job], total: int, progress: bool, desc: str) -> list[tuple[float, bool]]:
    """Run each job in its own worker process; [(seconds, stopped early)] in the jobs' order."""
    with _pool(len(jobs)) as pool:
        futures = [pool.submit(_train, cfg, str(run), steps, False, resume)
                   for cfg, run, steps, resume in jobs]
        try:
            _wait(futures, [run for _, run, _, _ in jobs], total, progress, desc)
        except KeyboardInterrupt:  # the workers got the signal too: let them save and stop
            for f in futures:
                try:
                    f.result()
                except BaseException:  # a worker killed by the signal counts as stopped
                    pass
            return [(0.0, True) for _ in jobs]
        return [f.result() for f in futures]


def _starts_side_by_side(cfg: RunConfig, steps: int | None) -> bool:
    """Whether the factored model's first two starts can be trained side by side (see below)."""
    tc = cfg.train
    return (cfg.model.factors > 1 and tc.dormant_check > 0 and tc.dormant_restarts in (1, 2)
            and (steps or tc.steps) > tc.dormant_check)


def _train_starts_side_by_side(twins: list[tuple[RunConfig, Path]], steps: int | None,
                               progress: bool) -> list[tuple[float, bool]]:
    """Train the factored model under its dormant-factor rule without leaving a core idle.

    Trained one after the other (``indpred train``), each abandoned start costs the
    ``train.dormant_check`` steps on one core while the other, once the twin is done,
    waits. Here starts 0 and 1 train side by side to the check, each from its own seed
    (:func:`~indpred.train.restarts.start_config`); then the one the rule keeps
    (:func:`~indpred.train.restarts.kept_start`: the first awake one, or start 2 from
    scratch if neither is) trains on beside the twin. Each start is a function of its
    seed alone and a resumed run repeats an uninterrupted one, so the factored run is
    bit for bit the one ``indpred train`` would make; its folder records the abandoned
    starts the same way (``restarts.jsonl``), and its config is the start's own.

    The starts train in hidden folders beside the run; the run's folder appears, in one
    rename, only once the choice is made. A stopped demo therefore resumes the starts while
    the run's folder is missing, and the run (and the twin) once it is there.
    """
    from indpred.train.restarts import kept_start, record_abandoned_start, start_config

    (cfg, run), (twin, twin_run) = twins
    tc = cfg.train

    if not run.is_dir():
        probes = [run.parent / f".{run.name}-start-{k}" for k in range(3)]
        jobs: list[Job] = [(start_config(cfg, k).to_dict(), probes[k], tc.dormant_check, _begun(probes[k]))
                           for k in range(2)]
        first = _side_by_side(jobs, 2 * tc.dormant_check, progress, "first starts")
        if any(stopped for _, stopped in first):
            return [(0.0, True), (0.0, True)]
        kl = [json.loads((p / SUMMARY).read_text())["dormant_kl"] for p in probes[:2]]
        chosen = kept_start(cfg, kl)
        shutil.rmtree(probes[2], ignore_errors=True)  # a half-made folder of an earlier try
        if chosen == 2:
            probes[2].mkdir()
        for k in range(chosen):
            record_abandoned_start(probes[chosen], cfg, k, tc.dormant_check, kl[k], first[k][0],
                                   probes[k] / METRICS)
        os.replace(probes[chosen], run)
        for p in probes:
            shutil.rmtree(p, ignore_errors=True)
    # The kept start resumes with its own config; start 2 begins from scratch in the folder
    # that already records the two abandoned starts.
    job: Job = (start_config(cfg, 2).to_dict(), run, steps or tc.steps, _begun(run))
    total = (steps or tc.steps) + (steps or twin.train.steps)  # _wait adds the abandoned starts
    return _side_by_side([job, (twin.to_dict(), twin_run, steps, _begun(twin_run))], total, progress,
                         "training both")


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
