"""A run folder and its study stay true whatever the user does between runs: limits changed on resume, a command
that failed to start, a damaged ledger, a second process on the same SQLite study, a budget smaller than the
warm start, a study where nothing completed, a storage that cannot be opened, many workers on one study."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest

from autoaccel.cli.main import main
from autoaccel.cli.search_command import search
from autoaccel.config import compose_config
from tests.conftest import fast_overrides_for

REPO = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda message: None}


def _run_dir(overrides: list[str], study: str = "pipeline-sampler") -> Path:
    return Path(next(item.split("=", 1)[1] for item in overrides if item.startswith("report.dir="))) / study


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: what 'nothing changed' compares."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def finished_original(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory):
    """A complete study of 6 trials (the standard configurations at 4 and 10 steps), no limits, and its run folder,
    searched once for the module: each test gets a copy (``finished_run``).

    Fidelity to the ODE solution against NFE: both deterministic on one machine, so the front is the same every run.
    """
    overrides = fast_overrides_for(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory.mktemp("finished") / "reports")
    search(compose_config([*overrides, *FIXED_FRONT, "budget.trials=6"]), **QUIET)
    return _run_dir(overrides)


@pytest.fixture
def finished_run(finished_original, fast_overrides):
    """A copy of the finished study's run folder where ``fast_overrides`` puts it: the test may resume or damage it."""
    run_dir = _run_dir(fast_overrides)
    shutil.copytree(finished_original, run_dir)
    return run_dir


FIXED_FRONT = ["budget.warm_start_steps=[4,10]", "objectives=[psnr_vs_ode,nfe]"]


def _expected_front(trials: pd.DataFrame, max_nfe: float) -> set[int]:
    """The front recomputed by hand: complete trials within the limit that nothing within it dominates."""
    fits = trials[(trials["state"] == "COMPLETE") & (trials["nfe"] <= max_nfe)]
    front = set()
    for _, row in fits.iterrows():
        no_worse = (fits["psnr_vs_ode"] >= row["psnr_vs_ode"]) & (fits["nfe"] <= row["nfe"])
        better = (fits["psnr_vs_ode"] > row["psnr_vs_ode"]) | (fits["nfe"] < row["nfe"])
        if not (no_worse & better).any():
            front.add(int(row["trial"]))
    return front


@pytest.mark.slow
@pytest.mark.integration
def test_a_limit_set_or_removed_on_resume_gives_the_front_of_the_limits_in_force(fast_overrides, finished_run, capsys):
    open_front = pd.read_csv(finished_run / "pareto.csv")
    assert set(open_front["nfe"]) == {4, 10}, "the test needs a front with a 4-step and a 10-step plan"
    trials = pd.read_csv(finished_run / "trials.csv")
    assert set(open_front["trial"]) == _expected_front(trials, float("inf"))

    search(compose_config([*fast_overrides, *FIXED_FRONT, "budget.trials=6", "budget.max_nfe=4"]), **QUIET)
    limited = pd.read_csv(finished_run / "pareto.csv")
    assert set(limited["trial"]) == _expected_front(trials, 4) and (limited["nfe"] <= 4).all()
    trials = pd.read_csv(finished_run / "trials.csv")
    assert (trials["feasible"] == ((trials["state"] == "COMPLETE") & (trials["nfe"] <= 4))).all()
    assert "nfe &lt;= 4" in (finished_run / "index.html").read_text()
    # plan reads the front the report built: it never picks a plan beyond the study's limit
    capsys.readouterr()
    assert main(["plan", str(finished_run)]) == 0
    chosen = int(capsys.readouterr().out.split("trial ", 1)[1].split()[0])
    assert chosen in set(limited["trial"])
    # every recipe and grid in the folder belongs to the current front
    recipes = {path.name for path in (finished_run / "recipes").glob("trial-*.yaml")}
    assert recipes == {Path(recipe).name for recipe in limited["recipe"]}
    grids = {path.name for path in (finished_run / "grids").glob("trial-*.png")}
    assert grids == {f"trial-{int(number):04d}.png" for number in limited["trial"]}

    search(compose_config([*fast_overrides, *FIXED_FRONT, "budget.trials=6"]), **QUIET)  # the 10-step plans return
    assert set(pd.read_csv(finished_run / "pareto.csv")["trial"]) == set(open_front["trial"])
    assert main(["report", str(finished_run)]) == 0  # report applies the limits of the last run's configuration
    assert set(pd.read_csv(finished_run / "pareto.csv")["trial"]) == set(open_front["trial"])


@pytest.mark.slow
@pytest.mark.integration
def test_a_command_that_fails_to_start_leaves_nothing_behind(fast_overrides, capsys):
    run_dir = _run_dir(fast_overrides)
    assert main(["search", *fast_overrides, "objectives=[fid,latency_ms,nfe]", "optimizer.name=adam"]) == 2
    _one_line_error(capsys, "adam")
    assert not run_dir.exists()
    search(compose_config([*fast_overrides, "budget.trials=1"]), **QUIET)  # the same folder then searches as usual
    trials = pd.read_csv(run_dir / "trials.csv")
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 1


def test_a_study_with_other_objectives_is_refused_in_one_line(fast_overrides, capsys):
    run_dir = _run_dir(fast_overrides)
    run_dir.mkdir(parents=True)
    storage = f"sqlite:///{run_dir / 'ledger.db'}"
    optuna.create_study(study_name="pipeline-sampler", storage=storage, directions=["minimize"] * 3)
    before = _snapshot(run_dir)
    assert main(["search", *fast_overrides, "budget.trials=3"]) == 2
    _one_line_error(capsys, "3 objectives", "study_name")
    assert _snapshot(run_dir) == before


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_a_damaged_ledger_is_one_error_and_nothing_in_the_run_folder_changes(
    finished_run, fast_overrides, capsys, damage
):
    ledger = finished_run / "ledger.db"
    if damage == "empty":
        ledger.write_bytes(b"")
    elif damage == "garbage":
        ledger.write_bytes(b"not a database at all" * 100)
    else:
        ledger.write_bytes(ledger.read_bytes()[:1500])
    before = _snapshot(finished_run)
    assert main(["search", *fast_overrides, *FIXED_FRONT, "budget.trials=6"]) == 2
    _one_line_error(capsys, str(ledger))
    assert main(["report", str(finished_run)]) == 2
    _one_line_error(capsys, str(ledger))
    assert _snapshot(finished_run) == before


def _hold_study_lock(run_dir: Path, processes, seconds: float = 600) -> subprocess.Popen:
    """Another process holding the run folder's study for ``seconds``, as a running search does."""
    code = textwrap.dedent(
        f"""
        import time
        from autoaccel.search.study_lock import StudyLock
        lock = StudyLock({str(run_dir)!r}, "pipeline-sampler")
        lock.acquire()
        print("held", flush=True)
        time.sleep({seconds})
        """
    )
    holder = processes.start([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_process_on_a_sqlite_study_is_refused_until_the_first_is_gone(
    finished_run, fast_overrides, capsys, processes
):
    holder = _hold_study_lock(finished_run, processes)
    before = _snapshot(finished_run)
    assert main(["search", *fast_overrides, *FIXED_FRONT, "budget.trials=8"]) == 2
    _one_line_error(capsys, f"process {holder.pid}", "storage=postgresql://", "workers")
    assert _snapshot(finished_run) == before
    holder.kill()  # a holder that dies, however it dies, releases the study
    holder.wait()
    search(compose_config([*fast_overrides, *FIXED_FRONT, "budget.trials=8"]), **QUIET)
    assert len(pd.read_csv(finished_run / "trials.csv")) == 8


@pytest.mark.slow
@pytest.mark.integration
def test_the_budget_caps_the_warm_start_and_a_full_study_says_how_to_continue(fast_overrides):
    messages: list[str] = []
    search(compose_config([*fast_overrides, "budget.trials=1"]), log=messages.append)
    run_dir = _run_dir(fast_overrides)
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 1 and trials["warm_start"].tolist() == ["ddim-4"]
    assert any("only the first 1" in message for message in messages)

    messages.clear()
    search(compose_config([*fast_overrides, "budget.trials=1"]), log=messages.append)
    assert any("is complete" in message and "budget.trials=21" in message for message in messages)
    assert len(pd.read_csv(run_dir / "trials.csv")) == 1

    search(compose_config([*fast_overrides, "budget.trials=4"]), **QUIET)  # raised: the rest of the warm start first
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4
    assert trials["warm_start"].fillna("").tolist()[:3] == ["ddim-4", "dpmsolver++2m-4", "unipc-4"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_study_where_nothing_completed_reports_why(fast_overrides, monkeypatch):
    from autoaccel.measure.evaluator import Evaluator
    from autoaccel.measure.measurement import Measurement

    def fail(self, candidate, samples=None):
        return Measurement("failed", {}, {"seconds": 0.0}, "RuntimeError: the technique refused this model")

    monkeypatch.setattr(Evaluator, "evaluate", fail)
    messages: list[str] = []
    index = search(compose_config([*fast_overrides, "budget.trials=3"]), log=messages.append)
    html = index.read_text()
    assert "no trial completed" in html and "the technique refused this model" in html
    assert any("no trial" in message and "3x RuntimeError" in message for message in messages)
    assert pd.read_csv(index.parent / "pareto.csv").empty
    assert main(["report", str(index.parent)]) == 0


@pytest.mark.parametrize(
    ("storage", "needle"),
    [
        ("notaurl", "Could not parse"),
        ("sqlite:////nonexistent-folder/deeper/ledger.db", "unable to open"),
        ("postgresql+pg8000://user:secret@127.0.0.1:1/db", "driver is not installed"),
        ("postgresql://user:secret@127.0.0.1:1/db", "refused"),
    ],
)
def test_a_storage_that_cannot_be_opened_is_one_line_and_hides_the_password(fast_overrides, capsys, storage, needle):
    assert main(["search", *fast_overrides, f"storage={storage}"]) == 2
    err = _one_line_error(capsys, needle, "postgresql://user:password@host/db")
    assert "secret" not in err
    assert not _run_dir(fast_overrides).exists()


@pytest.mark.slow
def test_workers_on_an_unreachable_database_say_so_once(fast_overrides, tmp_path, processes):
    result = processes.run(
        [sys.executable, "-m", "autoaccel", "workers", "3", *fast_overrides, "storage=postgresql://u:p@127.0.0.1:1/db"],
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "refused" in lines[0], lines


SLOW_DATABASE_WORKER = """
import os, pathlib, sys, time
import optuna
from autoaccel.cli.main import main

enqueue = optuna.Study.enqueue_trial


def slow_enqueue(self, *args, **kwargs):  # a slow database: every queued trial takes a while to land
    time.sleep(0.3)
    return enqueue(self, *args, **kwargs)


optuna.Study.enqueue_trial = slow_enqueue
start = pathlib.Path(sys.argv[1])
start.with_name(f"ready-{os.getpid()}").touch()  # imported and waiting
while not start.exists():  # every worker starts at the same moment
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_three_workers_enqueue_the_warm_start_once_and_keep_the_budget(
    postgres_url, fast_overrides, tmp_path, processes
):
    study_name = f"budget-{uuid.uuid4().hex[:8]}"
    overrides = [
        *fast_overrides,
        f"storage={postgres_url}",
        f"study_name={study_name}",
        "budget.trials=12",
        "budget.warm_start_steps=[4,6,10]",
        "report.build=false",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = tmp_path / "start"
    workers = [
        processes.start(
            [sys.executable, "-c", SLOW_DATABASE_WORKER, str(start), "search", *overrides, f"optimizer.seed={index}"],
            cwd=REPO,
            env=environment,
            stdout=(tmp_path / f"w{index}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for index in range(3)
    ]
    while len(list(tmp_path.glob("ready-*"))) < len(workers):  # every worker imported autoaccel and waits
        assert all(worker.poll() is None for worker in workers), "a worker exited before the start"
        time.sleep(0.05)
    start.touch()
    for index, worker in enumerate(workers):
        assert worker.wait(timeout=900) == 0, (tmp_path / f"w{index}.log").read_text()[-3000:]
    trials = optuna.load_study(study_name=study_name, storage=postgres_url).get_trials()
    finished = [trial for trial in trials if trial.state.is_finished()]
    assert 12 <= len(finished) <= 12 + 2, f"{len(finished)} results for a budget of 12 with 3 workers"
    tags = [trial.user_attrs["warm_start"] for trial in trials if "warm_start" in trial.user_attrs]
    assert sorted(tags) == sorted(set(tags)) and len(tags) == 9, tags  # nine standard configurations, once each
    proposed = [
        trial
        for trial in finished
        if "warm_start" not in trial.user_attrs and "detail.duplicate_of" not in trial.user_attrs
    ]
    assert proposed, "the optimizer proposed candidates of its own"
