"""``python -m autoaccel workers N storage=postgresql://... [key=value ...]``: N local workers, one study.

Each worker is an ordinary ``search`` process on the shared storage (one GPU each where there are GPUs, via
CUDA_VISIBLE_DEVICES), with its own optimizer seed so that workers propose different points. Workers on
other machines join by running ``python -m autoaccel search`` with the same ``storage`` and ``study_name``.
When all have stopped, the report is built once. Ctrl-C or SIGTERM stops every worker cleanly (each marks
its trials in hand and queues them again), also while they are being started; a worker that has not stopped
after ``STOP_GRACE_S`` is killed, and every one is reaped.

How many workers one machine runs is bounded before any starts (``worker_bound``):

- the machine: with GPUs, ``WORKERS_PER_GPU`` per GPU (a second worker samples and trains while the other
  times; more only queue for the device lock), and never more than its CPU cores or ``MIN_LOCAL_WORKERS``,
  whichever is more; without a GPU, its CPU cores or ``MIN_LOCAL_WORKERS``, whichever is more (workers share
  the cores; the few beyond them overlap one worker's waiting on the database or the device lock with
  another's computing);
- the storage: each worker holds up to ``3 + budget.concurrent`` database connections at once (its main
  thread, its heartbeat, the beat of a claim it holds, one per trial waiting for another worker's twin), and a
  PostgreSQL server has ``max_connections`` less the reserved ones and those already open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, open_dict

from autoaccel.errors import ConfigError
from autoaccel.util.interrupts import INTERRUPT_POLL_S, deferred_interrupts

WORKER_SEED_STRIDE = 1000
MIN_LOCAL_WORKERS = 4
WORKERS_PER_GPU = 2
BASE_CONNECTIONS = 3  # per worker: main thread, heartbeat, a claim's beat; plus one per concurrent trial
STOP_GRACE_S = 60.0  # how long stopped workers get to mark their trials before they are killed


def require_shared_storage(storage: str | None, what: str) -> str:
    """``storage`` if several processes can share it; SQLite (the single-process default) is refused."""
    if not storage or str(storage).startswith("sqlite"):
        raise ConfigError(
            f"{what} need a storage that several processes can share, e.g. storage=postgresql://user@host/db; "
            f"got storage={storage!r} (SQLite is the single-process default)"
        )
    return str(storage)


def worker_commands(count: int, overrides: list[str]) -> list[list[str]]:
    """The command line of each worker: the user's overrides and its index (``as_worker`` does the rest)."""
    return [[sys.executable, "-m", "autoaccel", "search", *overrides, f"worker={index}"] for index in range(count)]


def as_worker(config: DictConfig) -> DictConfig:
    """``config`` as worker ``config.worker`` of a shared study runs it: on a storage several processes share,
    with its own optimizer seed (workers propose different points) and no report of its own (one is built when
    all have stopped). Unchanged without ``worker``."""
    worker = config.worker
    if worker is None:
        return config
    if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0:
        raise ConfigError(f"worker={worker!r} is not valid; it must be an integer >= 0 (or null: not a worker)")
    require_shared_storage(config.storage, f"worker={worker}")
    with open_dict(config):
        if config.optimizer.seed is not None:
            config.optimizer.seed = int(config.optimizer.seed) + WORKER_SEED_STRIDE * worker
        config.report.build = False
    return config


def shared_report(config: DictConfig, log=print) -> Path:
    """The shared study's report, built once every worker has stopped: the front timed again side by side, alone
    on this machine."""
    from autoaccel.front.limits import limits_in_force
    from autoaccel.report.build import build_report
    from autoaccel.search.confirm import confirm_before_report
    from autoaccel.search.ledger import reference_row
    from autoaccel.search.run import open_run, study_name_for

    context = open_run(Path(config.report.dir) / study_name_for(config))
    limits = limits_in_force(context.config.budget, reference_row(context.ledger.study))
    confirm_before_report(context, limits, log)
    return build_report(context, log)


def worker_bound(cpus: int, gpus: int, free_connections: int | None, concurrent: int) -> tuple[int, str]:
    """The most workers this machine and storage run, and why (``free_connections``: None where the storage
    does not say)."""
    machine = max(MIN_LOCAL_WORKERS, cpus)
    reasons = [f"{cpus} CPU cores: up to max({MIN_LOCAL_WORKERS}, cores) = {machine}"]
    if gpus:
        machine = min(WORKERS_PER_GPU * gpus, machine)
        reasons = [f"{gpus} GPUs: {WORKERS_PER_GPU} per GPU, within max({MIN_LOCAL_WORKERS}, {cpus} CPU cores)"]
    bound = machine
    if free_connections is not None:
        each = BASE_CONNECTIONS + concurrent
        bound = min(bound, free_connections // each)
        reasons.append(
            f"the database has {free_connections} free connections, {each} per worker "
            f"({BASE_CONNECTIONS} + budget.concurrent={concurrent}): {free_connections // each}"
        )
    return max(0, bound), "; ".join(reasons)


def run_workers(count: int, overrides: list[str], log=print) -> int:
    from autoaccel.config import compose_config
    from autoaccel.search.run import study_name_for

    config = compose_config(overrides)
    require_shared_storage(config.storage, "workers")
    free_connections = _check_before_starting(config)
    gpus = _gpu_count()
    bound, why = worker_bound(os.cpu_count() or 1, gpus, free_connections, int(config.budget.concurrent))
    if count > bound:
        raise ConfigError(
            f"workers {count} is more than this machine and storage can run: at most {bound} ({why}); "
            "start fewer, or add workers on other machines with `python -m autoaccel search` and the same storage"
        )
    processes: list[subprocess.Popen] = []
    try:
        for index, command in enumerate(worker_commands(count, overrides)):
            environment = dict(os.environ)
            if gpus:
                environment["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
            with deferred_interrupts():  # a started worker is always in the list that is stopped
                processes.append(subprocess.Popen(command, env=environment))
        log(f"started {count} workers on study {study_name_for(config)!r} ({gpus or 'no'} GPUs)")
        codes = [_wait_interruptibly(process) for process in processes]
    except BaseException:
        stop_processes(processes, log)
        raise
    failed = [code for code in codes if code != 0]
    if failed:
        log(f"{len(failed)} of {count} workers exited with an error (codes {failed})")
    if len(failed) == count:
        raise ConfigError(f"all {count} workers exited with an error (codes {failed}); see their messages above")
    index = shared_report(config, log)  # every worker has stopped: the front is timed side by side alone
    log(f"report: {index}")
    return max(codes) if failed else 0


def _wait_interruptibly(process: subprocess.Popen) -> int:
    """``process.wait()``, waking every ``INTERRUPT_POLL_S``: an interrupt that lands just before a blocking wait
    starts would otherwise be seen only when the worker exits."""
    while True:
        try:
            return process.wait(timeout=INTERRUPT_POLL_S)
        except subprocess.TimeoutExpired:
            continue


def stop_processes(processes: list[subprocess.Popen], log=print, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every running one (each marks its trials in hand and exits), then waits; those still running
    after ``grace_s``, or at a second interrupt, are killed. Every one is reaped."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    if running:
        log(f"stopping {len(running)} workers (each marks its trials in hand; killed after {grace_s:.0f} s)")
    deadline = time.monotonic() + grace_s
    try:
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
    finally:  # a second Ctrl-C: no more waiting
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def _check_before_starting(config) -> int | None:
    """What would make every worker fail at once, checked once here: N identical tracebacks say less than one
    line. The storage is opened (and its tables created) so an unreachable server or a missing driver is named.
    Returns how many more connections its server accepts (None where the storage does not say)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from autoaccel.front.objectives import objective_directions
    from autoaccel.search.checks import validate_config
    from autoaccel.search.ledger import storage_error

    validate_config(config)
    # "quality" resolves per target when each worker loads it; either resolution is a known metric
    objective_directions(["fid" if name == "quality" else str(name) for name in config.objectives])
    try:
        storage = optuna.storages.RDBStorage(str(config.storage))
    except (ImportError, ValueError, SQLAlchemyError) as error:
        raise storage_error(str(config.storage), error) from None
    try:
        return _free_connections(storage.engine)
    finally:
        storage.engine.dispose()


def _free_connections(engine) -> int | None:
    """Connections a PostgreSQL server still accepts from ordinary users: max_connections less the reserved
    ones and the client connections open now (this one included, as it closes)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    if engine.dialect.name != "postgresql":
        return None
    try:
        with engine.connect() as connection:
            most = int(connection.execute(text("SHOW max_connections")).scalar())
            reserved = int(connection.execute(text("SHOW superuser_reserved_connections")).scalar())
            used = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            ).scalar()
    except SQLAlchemyError:
        return None  # a server that does not say: only the machine bounds the workers
    return max(0, most - reserved - int(used) + 1)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no working CUDA runtime: CPU workers
        return 0
