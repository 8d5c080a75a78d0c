"""``python -m autoaccel workers N storage=postgresql://... [key=value ...]``: N local workers, one study.

Each worker is an ordinary ``search`` process on the shared storage (one GPU each where there are GPUs, via
CUDA_VISIBLE_DEVICES), with its own optimizer seed so that workers propose different points. Workers on
other machines join by running ``python -m autoaccel search`` with the same ``storage`` and ``study_name``.
When all have stopped, the report is built once. Ctrl-C or SIGTERM stops every worker cleanly (each marks
its trials in hand and queues them again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from autoaccel.errors import ConfigError

WORKER_SEED_STRIDE = 1000


def require_shared_storage(storage: str | None, what: str) -> str:
    """``storage`` if several processes can share it; SQLite (the single-process default) is refused."""
    if not storage or str(storage).startswith("sqlite"):
        raise ConfigError(
            f"{what} need a storage that several processes can share, e.g. storage=postgresql://user@host/db; "
            f"got storage={storage!r} (SQLite is the single-process default)"
        )
    return str(storage)


def worker_commands(count: int, overrides: list[str], seed: int | None) -> list[list[str]]:
    """The command line of each worker: the user's overrides, no per-worker report, its own optimizer seed."""
    commands = []
    for index in range(count):
        command = [sys.executable, "-m", "autoaccel", "search", *overrides, "report.build=false"]
        if seed is not None:
            command.append(f"optimizer.seed={seed + WORKER_SEED_STRIDE * index}")
        commands.append(command)
    return commands


def run_workers(count: int, overrides: list[str], log=print) -> int:
    from autoaccel.config import compose_config
    from autoaccel.report.build import build_report
    from autoaccel.run import open_run, study_name_for

    config = compose_config(overrides)
    require_shared_storage(config.storage, "workers")
    _check_before_starting(config)
    gpus = _gpu_count()
    processes = []
    for index, command in enumerate(worker_commands(count, overrides, config.optimizer.seed)):
        environment = dict(os.environ)
        if gpus:
            environment["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        processes.append(subprocess.Popen(command, env=environment))
    log(f"started {count} workers on study {study_name_for(config)!r} ({gpus or 'no'} GPUs)")
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()
        raise
    failed = [code for code in codes if code != 0]
    if failed:
        log(f"{len(failed)} of {count} workers exited with an error (codes {failed})")
    if len(failed) == count:
        raise ConfigError(f"all {count} workers exited with an error (codes {failed}); see their messages above")
    index = build_report(open_run(Path(config.report.dir) / study_name_for(config)), log)
    log(f"report: {index}")
    return max(codes) if failed else 0


def _check_before_starting(config) -> None:
    """What would make every worker fail at once, checked once here: N identical tracebacks say less than one
    line. The storage is opened (and its tables created) so an unreachable server or a missing driver is named."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from autoaccel.config.checks import validate_config
    from autoaccel.ledger import storage_error
    from autoaccel.objectives import objective_directions

    validate_config(config)
    # "quality" resolves per target when each worker loads it; either resolution is a known metric
    objective_directions(["fid" if name == "quality" else str(name) for name in config.objectives])
    try:
        optuna.storages.RDBStorage(str(config.storage))
    except (ImportError, ValueError, SQLAlchemyError) as error:
        raise storage_error(str(config.storage), error) from None


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no working CUDA runtime: CPU workers
        return 0
