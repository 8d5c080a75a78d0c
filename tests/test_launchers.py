"""Workers started through Hydra's launchers: ``search -m worker='range(3)' hydra/launcher=...`` puts three
workers on one PostgreSQL study (each its own optimizer seed, none building a report), which keep the budget,
queue the standard configurations once, evaluate each candidate once, lose nothing when one is killed, and leave
one report built when the sweep ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf

from autoaccel.errors import ConfigError
from autoaccel.search.ledger import Ledger
from autoaccel.search.liveness import DEAD_WORKER, WORKER
from tests.study_checks import evaluations

REPO = Path(__file__).resolve().parents[1]


def _config(**values):
    base = {"worker": None, "storage": "postgresql://h/db", "optimizer": {"seed": 7}, "report": {"build": True}}
    return OmegaConf.create({**base, **values})


def test_a_worker_gets_its_own_seed_no_report_and_needs_a_shared_storage():
    from autoaccel.cli.workers_command import WORKER_SEED_STRIDE, as_worker, worker_commands

    assert as_worker(_config()).optimizer.seed == 7 and as_worker(_config()).report.build  # not a worker
    seeds = [as_worker(_config(worker=index)).optimizer.seed for index in range(3)]
    assert seeds == [7, 7 + WORKER_SEED_STRIDE, 7 + 2 * WORKER_SEED_STRIDE]
    assert not as_worker(_config(worker=1)).report.build
    with pytest.raises(ConfigError, match=r"worker=2 need a storage that several processes can share"):
        as_worker(_config(worker=2, storage=None))
    with pytest.raises(ConfigError, match=r"worker=-1 is not valid; it must be an integer >= 0"):
        as_worker(_config(worker=-1))
    assert [command[-1] for command in worker_commands(2, ["storage=postgresql://h/db"])] == ["worker=0", "worker=1"]


def _check_the_study(url: str, study_name: str, trials_wanted: int) -> list[optuna.trial.FrozenTrial]:
    """What three workers on one study must leave: nothing hanging, the budget, the standard configurations once,
    every candidate evaluated once."""
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials()
    states = pd.Series([trial.state.name for trial in trials]).value_counts().to_dict()
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert Ledger.open_existing(url, study_name).finished_count() >= trials_wanted
    # a killed worker's trial is queued again under its tag: the retry, not a second queueing
    kept = [trial for trial in trials if not str(trial.user_attrs.get("failure", "")).startswith(DEAD_WORKER)]
    tags = [trial.user_attrs["warm_start"] for trial in kept if trial.user_attrs.get("warm_start")]
    assert tags and len(tags) == len(set(tags)), "each standard configuration is queued once"
    keys = [trial.user_attrs["candidate_key"] for trial in evaluations(trials)]
    assert len(keys) == len(set(keys)), "no candidate was evaluated twice"
    workers = {str(trial.user_attrs.get(WORKER)).rsplit(":", 1)[-1] for trial in trials if trial.user_attrs.get(WORKER)}
    assert len(workers) >= 2, f"the trials were held by {workers}: the workers did not share the study"
    return trials


def _sweep(launcher: list[str], overrides: list[str], log: Path, processes) -> subprocess.Popen:
    command = [sys.executable, "-m", "autoaccel", "search", "-m", "worker=range(3)", *launcher, *overrides]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return processes.start(command, cwd=REPO, env=environment, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _overrides(fast_overrides, url: str, study_name: str) -> list[str]:
    return [
        *fast_overrides,
        f"storage={url}",
        f"study_name={study_name}",
        "budget.trials=10",
        "liveness.interval_s=0.5",
        "liveness.grace_s=4",
    ]


@pytest.mark.slow
@pytest.mark.integration
def test_three_workers_through_the_joblib_launcher_share_one_study_and_one_report(
    postgres_url, fast_overrides, tmp_path, processes
):
    study_name = f"joblib-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "sweep.log"
    sweep = _sweep(
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"],
        _overrides(fast_overrides, postgres_url, study_name),
        log,
        processes,
    )
    assert sweep.wait(timeout=900) == 0, log.read_text()[-3000:]
    _check_the_study(postgres_url, study_name, 10)
    reports = Path(next(item.split("=", 1)[1] for item in fast_overrides if item.startswith("report.dir=")))
    assert (reports / study_name / "index.html").exists(), "one report, built when the sweep ended"
    assert log.read_text().count("report: ") == 1


@pytest.mark.slow
@pytest.mark.integration
def test_three_workers_through_submitit_one_killed_lose_nothing(postgres_url, fast_overrides, tmp_path, processes):
    study_name = f"submitit-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "sweep.log"
    launcher = [
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.launcher.timeout_min=30",
    ]
    sweep = _sweep(launcher, _overrides(fast_overrides, postgres_url, study_name), log, processes)
    storage = optuna.storages.RDBStorage(postgres_url)
    victim, held = _a_worker_holding_a_trial(storage, study_name, sweep, log)
    deadline = time.monotonic() + 600
    os.kill(victim, signal.SIGKILL)
    sweep.wait(timeout=900)
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    others = {int(str(t.user_attrs[WORKER]).rsplit(":", 1)[-1]) for t in trials if t.user_attrs.get(WORKER)} - {victim}
    while any(_alive(pid) for pid in others) and time.monotonic() < deadline + 600:
        time.sleep(0.5)  # a launcher may report the killed job before the others end: they finish the study
    trials = _check_the_study(postgres_url, study_name, 10)
    killed = trials[held.number]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["failure"].startswith(DEAD_WORKER)
    assert len([trial for trial in evaluations(trials) if trial.params == killed.params]) == 1


def _a_worker_holding_a_trial(storage, study_name: str, sweep: subprocess.Popen, log: Path):
    """(pid, trial) of a worker caught holding a trial mid-evaluation."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and sweep.poll() is None:
        try:
            running = optuna.load_study(study_name=study_name, storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
        except Exception:  # the study is not created yet
            running = []
        for trial in running:
            if "candidate_key" in trial.user_attrs and trial.user_attrs.get(WORKER):
                return int(str(trial.user_attrs[WORKER]).rsplit(":", 1)[-1]), trial
        time.sleep(0.05)
    raise AssertionError(f"no worker was caught holding a trial:\n{log.read_text()[-3000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.integration
def test_three_workers_on_a_local_ray_cluster_one_killed_lose_nothing(
    postgres_url, fast_overrides, tmp_path, processes
):
    """``hydra/launcher=ray`` starts a local Ray cluster (``ray.init``) and runs each worker as a Ray task; one
    is killed mid-trial and the study still ends whole (Ray may run the killed task again: it joins the study)."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    study_name = f"ray-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "sweep.log"
    launcher = [
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=3",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.remote.num_cpus=1",
    ]
    sweep = _sweep(launcher, _overrides(fast_overrides, postgres_url, study_name), log, processes)
    storage = optuna.storages.RDBStorage(postgres_url)
    victim, held = _a_worker_holding_a_trial(storage, study_name, sweep, log)
    os.kill(victim, signal.SIGKILL)
    sweep.wait(timeout=900)
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    others = {int(str(t.user_attrs[WORKER]).rsplit(":", 1)[-1]) for t in trials if t.user_attrs.get(WORKER)} - {victim}
    deadline = time.monotonic() + 600
    while any(_alive(pid) for pid in others) and time.monotonic() < deadline:
        time.sleep(0.5)
    trials = _check_the_study(postgres_url, study_name, 10)
    killed = trials[held.number]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["failure"].startswith(DEAD_WORKER)
    assert len([trial for trial in evaluations(trials) if trial.params == killed.params]) == 1
