"""Fault injection: workers killed mid-trial on a shared PostgreSQL study, SIGINT/SIGTERM then resume, and
out-of-memory inside a trial. What a user relies on: no trial lost, none evaluated twice, the interrupted
candidate evaluated again, and the search going on."""

from __future__ import annotations

import _thread
import contextlib
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from autoaccel.config import compose_config
from autoaccel.search.ledger import INTERRUPTED, Ledger, not_a_result
from autoaccel.search.liveness import DEAD_WORKER, WORKER
from autoaccel.util.interrupts import cancellation
from tests.study_checks import evaluations

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ctrl_c():
    """Ctrl-C raises KeyboardInterrupt in this process, as in a terminal, also where the test run was started
    with SIGINT ignored (a background job of a shell without job control)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _start(processes, overrides: list[str], log: Path) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return processes.start(
        [sys.executable, "-m", "autoaccel", "search", *overrides],
        cwd=REPO,
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


@functools.cache
def _opened(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per database for the whole module: polling with a new one each time
    leaves connections open until garbage collection, and a PostgreSQL server runs out of them."""
    return optuna.storages.RDBStorage(url)


def _study_exists(storage: str, study_name: str) -> bool:
    """Whether the worker has created its study yet, read without writing: opening a ledger file the worker is
    still creating would race it to create the tables."""
    if not storage.startswith("sqlite:///"):
        return True  # the shared database's tables exist; optuna reports a missing study itself
    path = Path(storage[len("sqlite:///") :])
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            found = connection.execute("SELECT 1 FROM studies WHERE study_name = ?", (study_name,)).fetchone()
    except sqlite3.Error:  # no file yet, or no tables yet
        return False
    return found is not None


def _wait_for_running(storage: str, study_name: str, worker: subprocess.Popen, log: Path, owner=lambda trial: True):
    """The first RUNNING trial of ``study_name`` that ``owner`` accepts, polled for as long as ``worker`` runs
    (however slow a busy machine makes it)."""
    while worker.poll() is None:
        if not _study_exists(storage, study_name):
            time.sleep(0.05)
            continue
        try:
            study = optuna.load_study(study_name=study_name, storage=_opened(storage))
            running = [trial for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if owner(trial)]
            if running:
                return running[0]
        except Exception:  # the database or the study is not created yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"the worker exited before such a trial of {study_name} ran:\n{log.read_text()[-3000:]}")


def _freeze_one_holding_a_trial(
    workers: list[subprocess.Popen], logs: list[Path], storage: str, study_name: str
) -> tuple[subprocess.Popen, optuna.trial.FrozenTrial]:
    """Stops (SIGSTOP) the first worker seen holding a trial with a whole candidate; returns it and that trial.

    Whichever worker it is: on a busy machine one worker can go a long while without winning a trial. Checked
    after the stop, so the trial cannot finish between looking and killing, however busy the machine. Polls for
    as long as some worker runs.
    """
    while True:
        live = [worker for worker in workers if worker.poll() is None]
        if not live:
            tails = "\n".join(log.read_text()[-1500:] for log in logs)
            raise AssertionError(f"every worker exited before one was caught holding a trial:\n{tails}")
        try:
            study = optuna.load_study(study_name=study_name, storage=_opened(storage))
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except Exception:  # the database or the study is not created yet
            running = []
        holder = next((worker for trial in running for worker in live if _held_by(trial, worker)), None)
        if holder is None:
            time.sleep(0.05)
            continue
        holder.send_signal(signal.SIGSTOP)
        study = optuna.load_study(study_name=study_name, storage=_opened(storage))
        held = [
            trial for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if _held_by(trial, holder)
        ]
        if held:
            return holder, held[0]
        holder.send_signal(signal.SIGCONT)  # it finished that trial meanwhile: catch one in the next


def _held_by(trial: optuna.trial.FrozenTrial, process: subprocess.Popen) -> bool:
    return str(trial.user_attrs.get(WORKER, "")).endswith(f":{process.pid}") and "candidate_key" in trial.user_attrs


def _report_dir(overrides: list[str]) -> Path:
    return Path(next(option.split("=", 1)[1] for option in overrides if option.startswith("report.dir=")))


@pytest.mark.slow
@pytest.mark.integration
def test_four_workers_one_killed_nothing_lost_nothing_duplicated(postgres_url, fast_overrides, tmp_path, processes):
    study_name = f"faults-{uuid.uuid4().hex[:8]}"
    overrides = [
        *fast_overrides,
        f"storage={postgres_url}",
        f"study_name={study_name}",
        "budget.trials=10",
        "liveness.interval_s=0.5",
        "liveness.grace_s=4",
        "report.build=false",
    ]
    logs = [tmp_path / f"w{index}.log" for index in range(4)]
    workers = [_start(processes, [*overrides, f"optimizer.seed={1000 * index}"], log) for index, log in enumerate(logs)]
    victim, held = _freeze_one_holding_a_trial(workers, logs, postgres_url, study_name)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for worker, log in zip(workers, logs):
        if worker is not victim:
            assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = optuna.load_study(study_name=study_name, storage=_opened(postgres_url)).get_trials()
    states = pd.Series([trial.state.name for trial in trials]).value_counts().to_dict()
    assert "RUNNING" not in states and "WAITING" not in states, states  # nothing left hanging: nothing lost
    killed = trials[held.number]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["failure"].startswith(DEAD_WORKER)
    # evaluated exactly once in the study: after the kill, or before it by a twin the killed trial was waiting on
    of_killed = [trial for trial in evaluations(trials) if trial.params == killed.params]
    assert len(of_killed) == 1, "the killed worker's candidate is evaluated, once"
    keys = [trial.user_attrs["candidate_key"] for trial in evaluations(trials)]
    assert len(keys) == len(set(keys)), "no candidate was evaluated twice"
    ledger = Ledger.open_existing(postgres_url, study_name)
    assert ledger.finished_count() >= 10

    # the report and plans come from the shared ledger alone, on any machine that reaches the database
    from autoaccel.cli.main import main

    elsewhere = tmp_path / "elsewhere"
    assert main(["report", str(elsewhere), "--storage", postgres_url, "--study", study_name]) == 0
    assert (elsewhere / "index.html").exists() and (elsewhere / "pareto.csv").exists()
    assert main(["plan", str(elsewhere), "--max-nfe", "100"]) == 0


def _signal(signum: int) -> None:
    """A signal sent to the main thread: it wakes the main thread where it waits."""
    signal.pthread_kill(threading.main_thread().ident, signum)


def _signal_before_the_wait(signum: int) -> None:
    """What the main thread finds of a signal that lands just before it starts waiting: the signal is pending
    (Python runs its handler at the next bytecode), but nothing wakes the wait."""
    _thread.interrupt_main(signum)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("deliver", [_signal, _signal_before_the_wait], ids=["signal", "signal-before-the-wait"])
def test_an_interrupt_mid_trial_marks_it_and_the_same_command_resumes_it(
    fast_overrides, monkeypatch, capsys, ctrl_c, deliver
):
    """Ctrl-C lands while the fifth trial samples (in its worker thread, as in a real run): that trial stops at
    its next sampling step, is marked interrupted and queued again, nothing stays RUNNING, and the same command
    evaluates it on resume. The trial waits for the main thread to see the signal (an event, not a sleep), also
    when the signal lands just before the main thread blocks waiting for trials."""
    import autoaccel.measure.evaluator as evaluator_module
    from autoaccel.cli.main import main

    real = evaluator_module.sample_in_chunks
    calls = {"count": 0}

    def interrupted_on_the_fifth_call(pipeline, seeds, chunk_size):
        calls["count"] += 1
        if calls["count"] == 5:
            stop = cancellation()  # set by the main thread once it has seen the interrupt
            deliver(signal.SIGINT)
            assert stop.wait(timeout=120), "the main thread never saw the interrupt"
        return real(pipeline, seeds, chunk_size)  # stops at its first sampling step: the trial is cut short

    monkeypatch.setattr(evaluator_module, "sample_in_chunks", interrupted_on_the_fifth_call)
    study_name = "interrupted"
    overrides = [*fast_overrides, f"study_name={study_name}", "budget.trials=6", "budget.warm_start_steps=[]"]
    storage = f"sqlite:///{_report_dir(fast_overrides) / study_name / 'ledger.db'}"
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["search", *overrides]) == 130
        study = optuna.load_study(study_name=study_name, storage=_opened(storage))
        assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        interrupted = [trial for trial in study.trials if trial.user_attrs.get("failure") == INTERRUPTED]
        assert len(interrupted) == 1 and interrupted[0].user_attrs.get("candidate_key")
        waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        assert [trial.system_attrs["fixed_params"] for trial in waiting] == [interrupted[0].params]

        monkeypatch.setattr(evaluator_module, "sample_in_chunks", real)
        assert main(["search", *overrides]) == 0
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    trials = optuna.load_study(study_name=study_name, storage=_opened(storage)).get_trials()
    assert sum(trial.state.is_finished() and not not_a_result(trial.user_attrs.get("failure")) for trial in trials) == 6
    assert any(trial.params == interrupted[0].params for trial in evaluations(trials))


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_from_outside_stops_the_process_cleanly_and_the_same_command_resumes(
    fast_overrides, tmp_path, processes
):
    """A scheduler's SIGTERM, sent to a real process: exit code 130, no trial left RUNNING, whatever was in hand
    queued again, and the same command finishes the budget (the in-process test pins down which trial)."""
    study_name = "sigterm"
    overrides = [*fast_overrides, f"study_name={study_name}", "budget.trials=6"]
    storage = f"sqlite:///{_report_dir(fast_overrides) / study_name / 'ledger.db'}"
    worker = _start(processes, overrides, tmp_path / "run.log")
    _wait_for_running(
        storage,
        study_name,
        worker,
        tmp_path / "run.log",
        lambda trial: trial.number >= 4 and "candidate_key" in trial.user_attrs,
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=600) == 130, (tmp_path / "run.log").read_text()[-3000:]
    assert "interrupted" in (tmp_path / "run.log").read_text()
    study = optuna.load_study(study_name=study_name, storage=_opened(storage))
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    interrupted = [trial.params for trial in study.trials if trial.user_attrs.get("failure") == INTERRUPTED]
    waiting = [
        trial.system_attrs["fixed_params"] for trial in study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    ]
    assert all(params in waiting for params in interrupted)

    resumed = _start(processes, overrides, tmp_path / "resume.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    trials = optuna.load_study(study_name=study_name, storage=_opened(storage)).get_trials()
    assert sum(trial.state.is_finished() and not not_a_result(trial.user_attrs.get("failure")) for trial in trials) == 6
    assert all(any(trial.params == params for trial in evaluations(trials)) for params in interrupted)


@pytest.mark.slow
@pytest.mark.integration
def test_out_of_memory_in_a_trial_is_recorded_and_the_search_goes_on(fast_overrides, monkeypatch):
    import autoaccel.measure.evaluator as evaluator_module
    from autoaccel.cli.search_command import search

    real = evaluator_module.sample_in_chunks
    calls = {"count": 0}

    def sometimes_out_of_memory(pipeline, seeds, chunk_size):
        calls["count"] += 1
        if calls["count"] % 3 == 0:
            raise MemoryError("cannot allocate 17179869184 bytes")
        return real(pipeline, seeds, chunk_size)

    monkeypatch.setattr(evaluator_module, "sample_in_chunks", sometimes_out_of_memory)
    index = search(compose_config([*fast_overrides, "budget.trials=7", "study_name=oom"]), log=lambda m: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    failures = trials[trials["state"] == "FAIL"]["failure"]
    assert failures.str.startswith("out of memory").sum() >= 1
    assert (trials["state"] == "COMPLETE").sum() >= 3 and len(trials) == 7


@pytest.mark.slow
@pytest.mark.integration
def test_workers_command_runs_n_workers_on_one_study_then_one_report(postgres_url, fast_overrides, capsys):
    from autoaccel.cli.main import main

    study_name = f"workers-cmd-{uuid.uuid4().hex[:8]}"
    overrides = [*fast_overrides, f"storage={postgres_url}", f"study_name={study_name}", "budget.trials=6"]
    assert main(["workers", "2", *overrides]) == 0
    trials = optuna.load_study(study_name=study_name, storage=_opened(postgres_url)).get_trials()
    assert Ledger.open_existing(postgres_url, study_name).finished_count() >= 6
    assert all(trial.user_attrs.get(WORKER) for trial in trials)  # every trial names the worker that held it
    assert (_report_dir(fast_overrides) / study_name / "index.html").exists()
    assert main(["workers", "2", *fast_overrides]) == 2
    assert "storage=postgresql://" in capsys.readouterr().err


LONG_TRAINING_SPACE = """
name: long_training
techniques: [distillation, solver, timesteps]
fixed:
  distillation.method: consistency
  distillation.steps: 2
  distillation.iterations: 60
  distillation.batch_size: 8
  distillation.data_samples: 16
dimensions:
  distillation.seed: {type: categorical, choices: [0, 1]}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_stops_a_long_training_trial_at_its_next_iteration_and_the_resume_continues_it(
    fast_overrides, monkeypatch, tmp_path, ctrl_c
):
    """Ctrl-C 5 iterations into a 60-iteration consistency distillation trial: the trial stops at its next
    iteration (not after the other 55) with a checkpoint on disk, and the same command continues it from there
    instead of training the student from scratch."""
    import autoaccel.distill.consistency as consistency
    import autoaccel.distill.training as training
    from autoaccel.cli.main import main
    from autoaccel.distill.students import forget_students

    real_pause = training.pause_point
    iterations = {"before": 0, "after": 0}

    def interrupted_at_the_fifth_iteration():
        if cancellation() is not None and cancellation().is_set():
            iterations["after"] += 1
        else:
            iterations["before"] += 1
        if iterations["before"] == 6 and iterations["after"] == 0:  # five iterations done
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            assert cancellation().wait(timeout=600), "the main thread never saw the interrupt"
            iterations["after"] += 1
        real_pause()

    starts = []
    real_resume = consistency.resume
    monkeypatch.setattr(consistency, "resume", lambda *args: starts.append(real_resume(*args)) or starts[-1])
    monkeypatch.setattr(training, "pause_point", interrupted_at_the_fifth_iteration)
    space_file = tmp_path / "long.yaml"
    space_file.write_text(LONG_TRAINING_SPACE)
    study_name = "long-training"
    overrides = [*fast_overrides, f"space={space_file}", f"study_name={study_name}", "budget.trials=1"]
    run_dir = _report_dir(fast_overrides) / study_name
    forget_students()
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["search", *overrides]) == 130
        assert iterations == {"before": 6, "after": 1}  # nothing ran after the interrupt was seen
        checkpoints = list((run_dir / "artifacts" / "checkpoints").glob("*.pt"))
        assert [path.stem.rsplit("-", 1)[1] for path in checkpoints] == ["5"]
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{run_dir / 'ledger.db'}")
        assert [trial.user_attrs.get("failure") for trial in study.get_trials(states=[TrialState.FAIL])] == [
            INTERRUPTED
        ]

        forget_students()  # the next process holds nothing in memory
        iterations.update(before=-(10**9), after=0)  # no more interrupts
        assert main(["search", *overrides]) == 0
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    assert starts[-1][0] == 5  # continued from its checkpoint
    assert iterations["before"] == -(10**9) + 60 - 5 and iterations["after"] == 0
    trials = optuna.load_study(study_name=study_name, storage=f"sqlite:///{run_dir / 'ledger.db'}").trials
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params


def test_a_worker_count_beyond_the_machine_or_the_database_is_refused_before_any_starts(
    postgres_url, fast_overrides, capsys, monkeypatch
):
    import autoaccel.cli.workers_command as workers
    from autoaccel.cli.main import main

    monkeypatch.setattr(workers.subprocess, "Popen", lambda *args, **kwargs: pytest.fail("a worker was started"))
    overrides = [*fast_overrides, f"storage={postgres_url}", f"study_name=bound-{uuid.uuid4().hex[:8]}"]
    assert main(["workers", "1000000", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    bound = max(workers.MIN_LOCAL_WORKERS, os.cpu_count())
    assert len(err.splitlines()) == 1 and "workers 1000000" in err and f"at most {bound}" in err, err
    assert "CPU cores" in err and "free connections" in err


def test_the_worker_bound_follows_gpus_cores_and_free_connections():
    from autoaccel.cli.workers_command import worker_bound

    assert worker_bound(cpus=2, gpus=0, free_connections=None, concurrent=1)[0] == 4  # the tests' 3 workers fit
    assert worker_bound(cpus=64, gpus=0, free_connections=None, concurrent=1)[0] == 64
    assert worker_bound(cpus=64, gpus=8, free_connections=None, concurrent=1)[0] == 16
    assert worker_bound(cpus=2, gpus=8, free_connections=None, concurrent=1)[0] == 4
    bound, why = worker_bound(cpus=64, gpus=0, free_connections=40, concurrent=2)
    assert bound == 8 and "40 free connections, 5 per worker" in why
    assert worker_bound(cpus=64, gpus=0, free_connections=3, concurrent=1)[0] == 0


@pytest.mark.integration
def test_ctrl_c_while_workers_start_stops_and_reaps_every_one_started(
    postgres_url, fast_overrides, monkeypatch, ctrl_c
):
    """An interrupt that lands while workers are being started: no further one starts, and every one already
    started is stopped and reaped (stand-in workers that would otherwise run for ten minutes)."""
    import autoaccel.cli.workers_command as workers

    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    monkeypatch.setattr(workers, "worker_commands", lambda count, overrides: [sleeper] * count)
    real_popen, started = subprocess.Popen, []

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        if len(started) == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, right after the second worker started
        return started[-1]

    monkeypatch.setattr(workers.subprocess, "Popen", popen)
    overrides = [*fast_overrides, f"storage={postgres_url}", f"study_name=spawn-{uuid.uuid4().hex[:8]}"]
    try:
        with pytest.raises(KeyboardInterrupt):
            workers.run_workers(3, overrides, log=lambda message: None)
        assert len(started) == 2  # the third was never started
        assert all(process.returncode is not None for process in started)  # stopped and reaped
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
