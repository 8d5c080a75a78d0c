"""``python -m autoaccel bench workers storage=postgresql://...``: many workers on one shared study.

A bounded load test of the shared ledger: W worker processes (default 8) each run autoaccel's own search loop
(``run_search``: heartbeats, dead-worker sweeps, twin detection, optuna's NSGA-II) on the cheap synthetic
problem until the study holds W x T finished trials (default 8 x 50). Each evaluation is a sleep of
``bench.load_work_ms`` standing in for real work, so what is measured is the coordination: throughput against
one worker on the same problem, and the ledger's consistency (trials lost, left running or waiting, candidates
evaluated twice, trials beyond the budget).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
from omegaconf import DictConfig

from autoaccel.cli.workers_command import require_shared_storage, stop_processes
from autoaccel.errors import ConfigError
from autoaccel.search.ledger import Ledger
from autoaccel.util.interrupts import deferred_interrupts

DIRECTIONS = ["minimize", "minimize"]
OBJECTIVES = ["fid", "nfe"]


def worker_main(storage: str, study_name: str, trials: int, seed: int, work_s: float) -> int:
    """One worker process: the real search loop on the synthetic problem, against the shared storage."""
    from autoaccel.optimizers.base import make_backend
    from autoaccel.search.liveness import LivenessSettings
    from autoaccel.search.loop import LoopBudget, run_search
    from autoaccel.testing.synthetic import SyntheticEvaluator, synthetic_space

    space = synthetic_space()
    ledger = Ledger(storage, study_name, DIRECTIONS)
    backend = make_backend("optuna_nsga2", space, {"seed": seed, "directions": DIRECTIONS}, len(OBJECTIVES))
    ledger.study.sampler = backend.sampler()
    liveness = LivenessSettings(interval_s=1.0, grace_s=10.0)  # run_search sweeps from its first iteration
    budget = LoopBudget(trials=trials, max_minutes=None, limits=[], concurrent=1)
    run_search(ledger, backend, SyntheticEvaluator(work_s), space, OBJECTIVES, budget, liveness=liveness)
    return 0


def run_load(storage: str, workers: int, trials_each: int, work_s: float, seed: int) -> dict:
    """Starts ``workers`` processes on a fresh study; returns the wall time and the ledger's consistency."""
    study_name = f"bench-workers-{workers}x{trials_each}-{uuid.uuid4().hex[:8]}"
    Ledger(storage, study_name, DIRECTIONS)  # created once up front, as a user's first worker would
    total = workers * trials_each
    started = time.perf_counter()
    processes: list[subprocess.Popen] = []
    try:
        for index in range(workers):
            with deferred_interrupts():  # a started worker is always in the list that is stopped
                processes.append(_start_worker(storage, study_name, total, seed + 1000 * index, work_s))
        codes = [process.wait() for process in processes]
    except BaseException:
        stop_processes(processes, log=lambda message: None)
        raise
    seconds = time.perf_counter() - started
    return {
        "workers": workers,
        "trials_each": trials_each,
        "seconds": seconds,
        "exit_codes": codes,
        **consistency(storage, study_name, total),
    }


def _start_worker(storage: str, study_name: str, total: int, seed: int, work_s: float) -> subprocess.Popen:
    """One worker process running ``benchmarks.workers`` from this checkout (its root on the child's path)."""
    checkout = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": checkout + (os.pathsep + path if path else "")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.workers",
            "--worker",
            storage,
            study_name,
            str(total),
            str(seed),
            str(work_s),
        ],
        env=env,
    )


def consistency(storage: str, study_name: str, budget: int) -> dict:
    """What the ledger holds after the workers stopped: counts a user checks to trust a shared study."""
    from autoaccel.search.ledger import not_a_result
    from autoaccel.search.liveness import DEAD_WORKER

    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    states = Counter(trial.state.name for trial in trials)
    results = [t for t in trials if t.state.is_finished() and not not_a_result(t.user_attrs.get("failure"))]
    evaluations = [t for t in results if "detail.duplicate_of" not in t.user_attrs]
    keys = Counter(t.user_attrs.get("candidate_key") for t in evaluations)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    per_worker = Counter(str(t.user_attrs.get("liveness.worker", "?")).rsplit(":", 1)[-1] for t in results)
    return {
        "study": study_name,
        "trials": len(trials),
        "results": len(results),
        "states": dict(states),
        "left_running": states.get("RUNNING", 0),
        "left_waiting": states.get("WAITING", 0),
        "swept_dead": sum(1 for t in trials if str(t.user_attrs.get("failure", "")).startswith(DEAD_WORKER)),
        "reused_duplicates": len(results) - len(evaluations),
        "evaluated_twice": sum(count - 1 for count in keys.values() if count > 1),
        "beyond_budget": max(0, len(results) - budget),
        "per_worker_results": sorted(per_worker.values()),
        "ledger_span_s": span,  # first trial started to last finished: the search without process start-up
    }


def run_workers_benchmark(config: DictConfig, log=print) -> Path:
    storage = require_shared_storage(config.storage, "bench workers")
    workers, trials_each = int(config.bench.load_workers), int(config.bench.load_trials)
    work_s = float(config.bench.load_work_ms) / 1000
    for name, value, least in (
        ("load_workers", workers, 1),
        ("load_trials", trials_each, 1),
        ("load_work_ms", work_s, 0),
    ):
        if value < least:
            raise ConfigError(f"bench.{name}={config.bench[name]} is not valid; it must be >= {least}")
    log(f"== 1 worker x {trials_each} trials")
    single = run_load(storage, 1, trials_each, work_s, int(config.seed))
    log(f"   {single['seconds']:.1f}s; == {workers} workers x {trials_each} trials")
    many = run_load(storage, workers, trials_each, work_s, int(config.seed))
    log(f"   {many['seconds']:.1f}s")
    return write_workers_table(Path(config.bench.dir), storage, work_s, single, many)


def write_workers_table(bench_dir: Path, storage: str, work_s: float, single: dict, many: dict) -> Path:
    import platform

    server = storage.split("@")[-1].split("/")[0] if "@" in storage else storage.split("://")[0]
    lines = [
        "# Workers benchmark: many processes on one shared study",
        "",
        f"Generated by `python -m autoaccel bench workers` against PostgreSQL at `{server}` on "
        f"this machine ({platform.machine()}, {_cpu_count()} CPU cores). Every worker runs autoaccel's search "
        "loop (heartbeats, dead-worker sweeps, twin detection, optuna NSGA-II) on the synthetic problem; each "
        f"evaluation is a {work_s * 1000:.0f} ms sleep standing in for real work, so the figures measure the "
        "coordination through the ledger, not a model.",
        "",
        "| workers | trials asked of the study | wall s (with start-up) | search s | results / s (search) | "
        "speed-up vs 1 worker | left running | left waiting | evaluated twice | reused duplicates | beyond budget | "
        "dead swept | results per worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_rate = single["results"] / single["ledger_span_s"]
    for row in (single, many):
        rate = row["results"] / row["ledger_span_s"]
        lines.append(
            f"| {row['workers']} | {row['workers'] * row['trials_each']} | {row['seconds']:.1f} | "
            f"{row['ledger_span_s']:.1f} | {rate:.1f} | "
            f"{rate / base_rate:.2f}x | {row['left_running']} | {row['left_waiting']} | {row['evaluated_twice']} | "
            f"{row['reused_duplicates']} | {row['beyond_budget']} | {row['swept_dead']} | "
            f"{row['per_worker_results']} |"
        )
    lines += [
        "",
        "Consistency, in words: a trial *left running* or *left waiting* would be lost work; *evaluated twice* "
        "counts candidates measured by two trials (twins wait for each other instead); *reused duplicates* are "
        "re-proposed candidates answered from the ledger without evaluating; *beyond budget* is how many results "
        "past workers x trials the study got (each worker stops when the study is full, so at most workers - 1 "
        "trials in flight can land after).",
        "",
        f"Raw figures: `{json.dumps({'single': single, 'many': many})}`",
    ]
    bench_dir.mkdir(parents=True, exist_ok=True)
    path = bench_dir / "workers.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one load-test worker (started by bench workers)")
    parser.add_argument("--worker", nargs=5, metavar=("STORAGE", "STUDY", "TRIALS", "SEED", "WORK_S"), required=True)
    options = parser.parse_args(argv)
    storage, study, trials, seed, work_s = options.worker
    return worker_main(storage, study, int(trials), int(seed), float(work_s))


if __name__ == "__main__":
    sys.exit(main())
