"""The trial record: an optuna study (SQLite in the run folder by default) holding every trial, its
parameters, every metric, its state and failure reason. Whatever proposed a trial, it is recorded here, so a
run resumes, reports and plans from the ledger alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from sqlalchemy.exc import SQLAlchemyError

from autoaccel.errors import ConfigError
from autoaccel.front.limits import REFERENCE_SAMPLES, Limit, limits_in_force, within_limits
from autoaccel.front.objectives import METRIC_COLUMNS
from autoaccel.measure.measurement import Measurement
from autoaccel.plan.candidate import Candidate
from autoaccel.search.liveness import DEAD_WORKER

if TYPE_CHECKING:
    from autoaccel.search.fingerprint import Fingerprint

METRIC_PREFIX = "metric."
FIDELITY_PREFIX = "fidelity."
DETAIL_PREFIX = "detail."
LEADING_COLUMNS = ["trial", "state", "warm_start", "feasible", "failure", *METRIC_COLUMNS, "timesteps"]
INTERRUPTED = "interrupted before it finished; evaluated again on resume"
REQUEUED = "requeued"
PLAN_KEY = "plan_key"  # which plan a trial ran (autoaccel.plan.identity): candidates running the same one are one plan
FIDELITY_CONSTRAINT = "fidelity"
CONFIRMATION = "latency_confirmation"  # study attribute: front latencies re-timed side by side before the report
SEARCH_RUN_PREFIX = "search_run."  # study attributes: one per search process, what it cost (record_search_run)


def not_a_result(failure: str | None) -> bool:
    """A failure that says nothing about the candidate (the run stopped, or its worker died): it is re-queued."""
    return failure is not None and (failure == INTERRUPTED or failure.startswith(DEAD_WORKER))


def _create_or_load(storage: str, study_name: str, directions: list[str], sampler, attempts: int = 10):
    """The study, the storage it lives in and whether this call created it. Workers starting together on a fresh
    database race to create its tables and the study (as does any process that opens a fresh SQLite ledger at the
    same moment, e.g. a report or a dashboard); the loser of such a race retries (and then loads what the winner
    created). The storage's unique study name makes exactly one caller the creator."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            backend = optuna.storages.RDBStorage(storage)  # creates the tables: part of the race
            try:
                study = optuna.create_study(
                    study_name=study_name, storage=backend, directions=directions, sampler=sampler
                )
                return study, backend, True
            except optuna.exceptions.DuplicatedStudyError:
                return optuna.load_study(study_name=study_name, storage=backend, sampler=sampler), backend, False
        except (IntegrityError, ProgrammingError, OperationalError) as error:
            created_meanwhile = not isinstance(error, OperationalError) or "already exists" in str(error)
            if attempt == attempts - 1 or not created_meanwhile:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def shown_url(storage: str) -> str:
    """A storage URL fit for a message: its password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage


def storage_error(storage: str, error: BaseException) -> ConfigError:
    """One line saying why ``storage`` cannot be opened and what a valid one looks like."""
    reason = (str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, ImportError):
        reason = "its database driver is not installed (PostgreSQL: pip install -e '.[postgres]')"
    return ConfigError(
        f"storage={shown_url(storage)!r} cannot be opened: {reason}; valid: sqlite:///PATH/ledger.db (one process) "
        "or postgresql://user:password@host/db (shared by workers)"
    )


def check_sqlite_file(storage: str) -> None:
    """Refuses a SQLite ledger file that exists but cannot be read: opening it would silently start a new study
    (SQLite treats a 0-byte file as an empty database) and the run folder would then mix two studies."""
    import sqlite3

    from sqlalchemy.engine import make_url

    if not storage or not storage.startswith("sqlite"):  # None: an in-memory study
        return
    database = make_url(storage).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    if not path.exists():
        return
    advice = "move it aside to start a new study, or restore it from a copy"
    if path.is_dir():
        raise ConfigError(f"ledger {path} is a directory, not a SQLite file; {advice}")
    with path.open("rb") as handle:
        header = handle.read(16)
    if header != b"SQLite format 3\x00":
        what = "is empty (0 bytes)" if path.stat().st_size == 0 else "is not a SQLite database"
        raise ConfigError(f"ledger {path} {what}; {advice}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as error:
        raise ConfigError(f"ledger {path} is damaged ({error}); {advice}") from None
    if verdict != "ok":
        raise ConfigError(f"ledger {path} is damaged ({verdict}); {advice}")
    if "studies" not in tables:
        raise ConfigError(f"ledger {path} is a SQLite database but not an optuna study ledger; {advice}")


LEDGER_FILE = "ledger.db"


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / LEDGER_FILE).resolve()}"


class Ledger:
    """One study; ``record`` writes a finished trial, ``trials_frame`` reads them all back."""

    def __init__(
        self, storage: str, study_name: str, directions: list[str], sampler=None, metric_names: list[str] | None = None
    ) -> None:
        """``metric_names``: the objectives' names, stored with the study (``Study.set_metric_names``) so optuna's
        own tools (optuna-dashboard, ``study.trials_dataframe()``) show ``fid`` and ``latency_ms``, not
        ``values_0``."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        check_sqlite_file(storage)
        try:
            self.study, backend, self.created = _create_or_load(storage, study_name, directions, sampler)
        except (ImportError, ValueError, SQLAlchemyError) as error:
            raise storage_error(storage, error) from None
        self._attach(storage, study_name, backend)
        if [direction.name.lower() for direction in self.study.directions] != directions:
            stored = [direction.name.lower() for direction in self.study.directions]
            raise ConfigError(
                f"study {study_name!r} in {shown_url(storage)} optimises {len(stored)} objectives ({stored}), "
                f"not the {len(directions)} asked for ({directions}); give the study's objectives or another study_name"
            )
        if metric_names and self.study.metric_names is None:
            with warnings.catch_warnings():  # experimental in optuna, and what its dashboard reads
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(list(metric_names))

    @classmethod
    def open_existing(cls, storage: str, study_name: str) -> Ledger:
        ledger = cls.__new__(cls)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        check_sqlite_file(storage)
        try:
            backend = optuna.storages.RDBStorage(storage)
            ledger.study = optuna.load_study(study_name=study_name, storage=backend)
        except (ImportError, ValueError, SQLAlchemyError) as error:
            raise storage_error(storage, error) from None
        ledger._attach(storage, study_name, backend)
        ledger.created = False
        return ledger

    def _attach(self, storage: str, study_name: str, backend: optuna.storages.BaseStorage) -> None:
        """Keeps the storage object the study was opened on: liveness writes to trials other than the ones this
        process asked (a dead worker's) and to claim studies through it, by the storage's public methods."""
        self.study_name = study_name
        self.storage = storage  # the URL, as given
        self.optuna_storage = backend
        self.study_id = backend.get_study_id_from_name(study_name)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number``, which the storage's methods take."""
        return self.optuna_storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def set_trial_attr(self, number: int, key: str, value: Any) -> None:
        """Writes a user attribute on trial ``number``, whichever worker holds it (``Trial.set_user_attr`` only
        writes to a trial this process asked)."""
        self.optuna_storage.set_trial_user_attr(self.trial_id(number), key, value)

    def check_settings(self, fingerprint: Fingerprint) -> None:
        """Stores what the study's figures mean (``autoaccel.search.fingerprint``); refuses to resume it under other
        settings, in one line naming each changed setting with the study's value and the new one."""
        stored = self.study.user_attrs.get("settings")
        if stored is None:
            self.study.set_user_attr("settings", fingerprint.values)
            return
        changed = fingerprint.differences(stored, self.study.user_attrs.get("config"))
        if changed:
            details = "; ".join(f"{key}: study has {old!r}, now {new!r}" for key, old, new in changed)
            raise ConfigError(
                f"study {self.study_name!r} was measured under other settings ({details}); its figures would not "
                "compare with new ones: resume it with its own settings, or start a new study with "
                "study_name=NEW (or another report.dir)"
            )
        if fingerprint.values.keys() - stored.keys():  # recorded by an older autoaccel: record what it lacked
            self.study.set_user_attr("settings", {**fingerprint.values, **stored})

    def sweep_interrupted(self) -> int:
        """Trials left RUNNING by an interrupted run: marked failed with the reason, their params enqueued again."""
        count = 0
        for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.set_trial_attr(frozen.number, "failure", INTERRUPTED)
            self.study.tell(frozen.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            if frozen.params:
                self.requeue(frozen.params, frozen.user_attrs)
            count += 1
        return count

    def requeue(self, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
        """Queues an unfinished trial's parameters again, keeping only what says where it came from; the copy is
        marked re-queued: it is evaluated even past the budget, so nothing a run started is lost."""
        kept = {key: user_attrs[key] for key in ("warm_start",) if key in user_attrs}
        self.study.enqueue_trial(params, user_attrs={**kept, REQUEUED: True})

    def has_requeued(self) -> bool:
        """Whether a re-queued trial (interrupted, or a dead worker's) waits to be evaluated."""
        waiting = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        return any(trial.user_attrs.get(REQUEUED) for trial in waiting)

    def enqueue_warm_start(
        self, configurations: list[tuple[str, dict[str, Any]]], exclusive: bool, room: int | None = None
    ) -> int:
        """Enqueues, in order, the standard configurations this study has not had yet, as many as ``room`` (the
        trials the budget has left) holds beside those already waiting; returns how many were enqueued. A resumed
        study with a larger budget thus continues the list where it stopped.

        On a storage this process holds alone (``exclusive``: the run folder's SQLite ledger) missing ones are
        added. On a shared storage only the worker that created the study enqueues them, so however many workers
        start together, the warm start is queued once per study.
        """
        if not exclusive and not self.created:
            return 0
        tags = set(self.study.user_attrs.get("enqueued", []))
        new = [(tag, params) for tag, params in configurations if tag not in tags]
        if room is not None:
            waiting = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
            new = new[: max(0, room - sum(not trial.user_attrs.get(REQUEUED) for trial in waiting))]
        for tag, params in new:
            self.study.enqueue_trial(params, user_attrs={"warm_start": tag})
        if new:
            self.study.set_user_attr("enqueued", sorted(tags | {tag for tag, _ in new}))
        return len(new)

    def queued_warm_starts(self) -> list[str]:
        """The tags of the standard configurations waiting to be evaluated, in the order they will be."""
        waiting = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        ordered = sorted(waiting, key=lambda trial: trial.number)
        return [trial.user_attrs["warm_start"] for trial in ordered if trial.user_attrs.get("warm_start")]

    def evaluated_candidates(self) -> dict[str, int]:
        """candidate key and plan key (``autoaccel.plan.identity``) -> number of the first finished trial that evaluated
        it (interrupted ones excluded)."""
        evaluated: dict[str, int] = {}
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        for frozen in sorted(self.study.get_trials(deepcopy=False, states=finished), key=lambda trial: trial.number):
            if not_a_result(frozen.user_attrs.get("failure")):
                continue
            for key in (frozen.user_attrs.get("candidate_key"), frozen.user_attrs.get(DETAIL_PREFIX + PLAN_KEY)):
                if key:
                    evaluated.setdefault(key, frozen.number)
        return evaluated

    def twin(self, trial: optuna.Trial, key: str) -> int | None:
        """Another trial whose result ``trial`` should reuse: one that finished the same candidate with a result
        (any worker's), else the earliest other RUNNING trial evaluating it; None when ``trial`` must evaluate.

        One read of the study answers both, so a twin that finishes between two questions is not missed. The
        key is on ``trial`` from the moment it was asked, so of two workers that ask the same candidate at once,
        the one with the higher trial number always sees the other and waits: exactly one evaluates.
        """
        finished, running = [], []
        for other in self.study.get_trials(deepcopy=False):
            if other.number == trial.number or other.user_attrs.get("candidate_key") != key:
                continue
            if other.state.is_finished() and not not_a_result(other.user_attrs.get("failure")):
                finished.append(other.number)
            elif other.state == optuna.trial.TrialState.RUNNING and other.number < trial.number:
                running.append(other.number)
        return min(finished or running) if finished or running else None

    def measurement_of(self, number: int) -> Measurement:
        """What trial ``number`` measured, read back from the ledger."""
        attrs = self.trial(number).user_attrs
        metrics = {
            key[len(METRIC_PREFIX) :]: (math.nan if value is None else value)
            for key, value in attrs.items()
            if key.startswith(METRIC_PREFIX)
        }
        details = {key[len(DETAIL_PREFIX) :]: value for key, value in attrs.items() if key.startswith(DETAIL_PREFIX)}
        return Measurement(attrs.get("status", "failed"), metrics, details, attrs.get("failure"))

    def history(self) -> list[tuple[dict[str, Any], list[float] | None]]:
        """Finished trials with a result, oldest first, as (searched params, objective values or None if failed).

        Interrupted trials and dead workers' trials are left out, as ``finished_count`` leaves them out: their
        candidates are queued again, and telling a resumed optimizer they failed would steer it away from them.
        """
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        trials = sorted(self.study.get_trials(deepcopy=False, states=finished), key=lambda trial: trial.number)
        return [
            (dict(trial.params), list(trial.values) if trial.values else None)
            for trial in trials
            if not not_a_result(trial.user_attrs.get("failure"))
        ]

    def fidelity_history(self) -> list[tuple[int, dict[str, float]]]:
        """(samples, metrics) for every level every finished trial was scored at, oldest first."""
        entries = []
        for frozen in sorted(self.study.get_trials(deepcopy=False), key=lambda trial: trial.number):
            entries += sorted(_levels(frozen).items())
        return entries

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        return self.study.get_trials(deepcopy=False)[number]

    def levels_of(self, number: int) -> dict[int, dict[str, float]]:
        """Trial ``number``'s figures at each fidelity level it was scored at."""
        return _levels(self.trial(number))

    def has_running(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))

    def has_waiting(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))

    def finished_count(self) -> int:
        """Trials with a result: interrupted trials and dead workers' trials are queued again, not counted."""
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        trials = self.study.get_trials(deepcopy=False, states=finished)
        return sum(not not_a_result(trial.user_attrs.get("failure")) for trial in trials)

    def record(
        self,
        trial: optuna.Trial,
        candidate: Candidate,
        measurement: Measurement,
        objectives: list[str],
        limits: list[Limit],
        per_level: dict[int, dict[str, float]] | None = None,
        top_level: int | None = None,
    ) -> optuna.trial.FrozenTrial:
        """Writes everything measured, then tells the study; a failed or non-finite trial is told FAIL.

        With multi-fidelity scoring, each level's figures are kept (``fidelity.<samples>.<metric>``) and a
        trial that stopped below ``top_level`` gets a violated ``fidelity`` constraint: not a plan to deploy.
        ``limits`` are stored as constraints only to steer optimizers that read them;
        whether a trial fits is decided when a front is built, with the limits in force then.
        """
        for level, metrics in (per_level or {}).items():
            for name, value in metrics.items():
                trial.set_user_attr(f"{FIDELITY_PREFIX}{level}.{name}", _json_number(value))
        trial.set_user_attr("candidate", candidate.as_dict)
        trial.set_user_attr("candidate_key", candidate.key)
        trial.set_user_attr("status", measurement.status)
        for name, value in measurement.metrics.items():
            trial.set_user_attr(METRIC_PREFIX + name, _json_number(value))
        for name, value in measurement.details.items():
            trial.set_user_attr(DETAIL_PREFIX + name, value)
        values = [measurement.metrics.get(name, math.nan) for name in objectives]
        if not measurement.ok or not all(math.isfinite(value) for value in values):
            reason = measurement.failure or f"objective(s) not finite: {dict(zip(objectives, values))}"
            trial.set_user_attr("failure", reason)
            return self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        for limit in limits:
            value = measurement.metrics.get(limit.metric, math.nan)
            if math.isfinite(value) and math.isfinite(limit.bound):
                trial.set_constraint(limit.option, limit.violation(value))
        if top_level is not None:
            reached = int(measurement.metrics.get("quality_samples", 0))
            trial.set_constraint(FIDELITY_CONSTRAINT, float(top_level - reached))
        return self.study.tell(trial, values)

    def trials_frame(self, limits: list[Limit] | None = None, confirmed: bool = True) -> pd.DataFrame:
        """Every trial as one row: number, state, params, metrics, details, failure, and ``feasible``: scored at
        full fidelity and within ``limits`` (metric -> upper bound, the limits in force now).

        With ``confirmed`` (the default), a trial whose cost structure was re-timed side by side before the
        report (``autoaccel.search.confirm``) has that latency, and the one timed during the search in
        ``search_latency_ms``."""
        confirmation = self.study.user_attrs.get(CONFIRMATION) if confirmed else None
        retimed = (confirmation or {}).get("structures", {})
        rows = []
        for frozen in self.study.get_trials(deepcopy=False):
            row: dict[str, Any] = {"trial": frozen.number, "state": frozen.state.name}
            candidate = frozen.user_attrs.get("candidate") or frozen.params
            row.update({f"param.{key}": value for key, value in candidate.items()})
            for key, value in frozen.user_attrs.items():
                if key.startswith(METRIC_PREFIX):
                    row[key[len(METRIC_PREFIX) :]] = math.nan if value is None else value
                elif key.startswith(FIDELITY_PREFIX):
                    level, name = key[len(FIDELITY_PREFIX) :].split(".", 1)
                    row[f"{name}@{level}"] = math.nan if value is None else value
                elif key.startswith(DETAIL_PREFIX):
                    row[key[len(DETAIL_PREFIX) :]] = json.dumps(value) if isinstance(value, list | dict) else value
            figure = retimed.get(row.get("cost_key") or f"trial-{frozen.number}")
            if figure is not None and "latency_ms" in row:
                row.update(search_latency_ms=row["latency_ms"], latency_ms=figure["latency_ms"])
                row["latency_iqr_ms"] = figure.get("latency_iqr_ms", row.get("latency_iqr_ms"))
                if "algorithmic_latency_ms" in figure:  # the plan without its runtime settings, timed beside it
                    row["algorithmic_latency_ms"] = figure["algorithmic_latency_ms"]
            row["warm_start"] = frozen.user_attrs.get("warm_start", "")
            row["feasible"] = reached_full_fidelity(frozen) and within_limits(row, limits or [])
            row["failure"] = frozen.user_attrs.get("failure", "")
            rows.append(row)
        frame = pd.DataFrame(rows)
        leading = [column for column in LEADING_COLUMNS if column in frame.columns]
        params = sorted(column for column in frame.columns if column.startswith("param."))
        rest = [column for column in frame.columns if column not in leading and column not in params]
        return frame[leading + params + rest]


def _levels(frozen: optuna.trial.FrozenTrial) -> dict[int, dict[str, float]]:
    levels: dict[int, dict[str, float]] = {}
    for key, value in frozen.user_attrs.items():
        if key.startswith(FIDELITY_PREFIX):
            level, name = key[len(FIDELITY_PREFIX) :].split(".", 1)
            levels.setdefault(int(level), {})[name] = math.nan if value is None else value
    return levels


def reached_full_fidelity(frozen: optuna.trial.FrozenTrial) -> bool:
    """The trial was scored at the run's top fidelity (a multi-fidelity trial stopped lower is not a plan)."""
    return (frozen.constraints or {}).get(FIDELITY_CONSTRAINT, 0.0) <= 0


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


TARGET_FACTS = "target"  # study attribute: what only the loaded model knows, so ``plan`` never loads it
REFERENCE_ROW = "reference"  # study attribute: the reference call's figures, measured once per study
OLD_REFERENCE_ROW = "teacher"  # the same row in a study written before it was renamed
OLD_QUALITY_REFERENCES = {"teacher-samples": REFERENCE_SAMPLES}  # stored kinds renamed since


def reference_row(study: optuna.Study) -> dict | None:
    """The reference call's figures recorded for the study (None before it was measured); a study written before
    the row was renamed holds it as ``teacher``, and a row written since under the new name wins."""
    attrs = study.user_attrs
    return attrs[REFERENCE_ROW] if REFERENCE_ROW in attrs else attrs.get(OLD_REFERENCE_ROW)


def record_reference_row(study: optuna.Study, row: dict) -> None:
    """Stores the reference call's figures under the current name (an older study's ``teacher`` row stays, read
    no more)."""
    study.set_user_attr(REFERENCE_ROW, row)


def record_search_run(study: optuna.Study, device: str, seconds: float, trials: int, stages: dict[str, float]) -> None:
    """What one search process cost: the device type it ran on, the seconds it held it (from the start of the
    command to the report), the trials it evaluated and the seconds of its stages outside the trials (reference,
    confirmation). Under a key of its own, so that workers of a shared study never overwrite each other's."""
    record = {
        "device": device,
        "seconds": round(float(seconds), 3),
        "trials": int(trials),
        "stages": {stage: round(float(value), 3) for stage, value in stages.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    study.set_user_attr(f"{SEARCH_RUN_PREFIX}{uuid.uuid4().hex[:16]}", record)


def search_runs(study: optuna.Study) -> list[dict[str, Any]]:
    """Every search process's cost record (``record_search_run``), in the order they finished."""
    runs = [value for key, value in study.user_attrs.items() if key.startswith(SEARCH_RUN_PREFIX)]
    return sorted(runs, key=lambda record: str(record.get("finished", "")))


def record_target_facts(study: optuna.Study, objectives: list[str], quality_reference: str) -> None:
    """Stores the objectives as resolved for the target (``quality`` -> its metric) and what its FID is measured
    against (``real-data`` or ``reference-samples``): ``plan`` builds the front and compares with the reference
    from the ledger alone, without loading the model."""
    facts = {"objectives": list(objectives), "quality_reference": quality_reference}
    if study.user_attrs.get(TARGET_FACTS) != facts:
        study.set_user_attr(TARGET_FACTS, facts)


def target_facts(study: optuna.Study) -> dict[str, Any] | None:
    """What ``record_target_facts`` stored, or None for a study recorded before autoaccel stored it; a kind stored
    under its older name (``teacher-samples``) is read as the current one."""
    facts = study.user_attrs.get(TARGET_FACTS)
    if isinstance(facts, dict) and facts.get("quality_reference") in OLD_QUALITY_REFERENCES:
        facts = {**facts, "quality_reference": OLD_QUALITY_REFERENCES[facts["quality_reference"]]}
    return facts


def trials_in_force(ledger: Ledger, budget: Any) -> pd.DataFrame:
    """Every trial of the study, feasible under the limits ``budget`` sets (a configuration's budget section) with
    the study's reference figures: the trials the report builds its front from, read from the ledger alone."""
    limits = limits_in_force(budget, reference_row(ledger.study))
    return ledger.trials_frame(limits)
