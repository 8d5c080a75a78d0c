"""Small run folders for ``plan`` tests: a configuration naming the study and a ledger whose trials are recorded
through ``autoaccel.search.ledger.Ledger`` as a search records them, with the figures a test chooses."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

from omegaconf import OmegaConf

from autoaccel.config import compose_config
from autoaccel.front.objectives import objective_directions
from autoaccel.measure.measurement import COMPLETE, FAILED, Measurement
from autoaccel.plan.candidate import Candidate
from autoaccel.report.files import REFERENCE_FILE
from autoaccel.report.html import REFERENCE_GRID
from autoaccel.search.ledger import Ledger, default_storage, record_reference_row, record_target_facts
from autoaccel.search.run import CONFIG_FILE

STUDY = "plan-test"
DETAILS = ("scheduler_class", "timesteps", "guidance_scale", "candidate_key")  # what a trial ran, not a figure


def write_ledger_run(
    folder: Path,
    trials: dict[int, dict],
    reference: dict | None = None,
    objectives: tuple[str, ...] = ("fid", "latency_ms"),
    quality_reference: str = "real-data",
    overrides: tuple[str, ...] = (),
) -> Path:
    """``folder`` as a search leaves it: config.yaml and ledger.db. ``trials``: trial number -> its figures (metric
    -> value), what it ran (``DETAILS``), and ``warm_start`` (a standard configuration's tag) or ``state`` FAIL;
    numbers in between are failed trials, so each trial has the number the test gives it; ``reference``: the
    reference call's figures."""
    folder.mkdir(parents=True, exist_ok=True)
    config = compose_config([f"study_name={STUDY}", f"report.dir={folder.parent}", *overrides])
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
    ledger = Ledger(default_storage(folder), STUDY, objective_directions(list(objectives)))
    record_target_facts(ledger.study, list(objectives), quality_reference)
    if reference is not None:
        record_reference_row(ledger.study, reference)
    for number in range(max(trials, default=-1) + 1):
        row = dict(trials.get(number, {"state": "FAIL"}))
        record_trial(ledger, number, row, list(objectives))
    return folder


def record_trial(ledger: Ledger, number: int, row: dict, objectives: list[str]) -> None:
    """Records one trial with ``row``'s figures (see ``write_ledger_run``); it gets trial number ``number``."""
    tag = row.pop("warm_start", "")
    if tag:
        ledger.enqueue_warm_start([(tag, {})], exclusive=True)
    trial = ledger.study.ask()
    assert trial.number == number, f"the ledger's next trial is {trial.number}, not {number}"
    failed = row.pop("state", "COMPLETE") == "FAIL"
    details = {key: row.pop(key) for key in DETAILS if key in row}
    metrics = {key: math.nan if value is None else float(value) for key, value in row.items()}
    measurement = Measurement(FAILED if failed else COMPLETE, metrics, details, "failed on purpose" if failed else None)
    ledger.record(trial, Candidate.from_params({"test.trial": number}), measurement, objectives, [])


def written_before_the_reference_was_renamed(folder: Path) -> None:
    """``folder`` (a run folder with its SQLite ledger) as autoaccel left it before the reference call got its own
    name in stored data: the study's reference row under the attribute ``teacher``, FID against the reference call's
    samples recorded as ``teacher-samples``, and the report's ``teacher.json`` and ``grids/teacher.png``."""
    with sqlite3.connect(folder / "ledger.db") as database:
        database.execute("UPDATE study_user_attributes SET key = 'teacher' WHERE key = 'reference'")
        database.execute(
            "UPDATE study_user_attributes SET value_json = replace(value_json, '\"reference-samples\"', "
            "'\"teacher-samples\"') WHERE key = 'target'"
        )
    database.close()
    for new, old in ((REFERENCE_FILE, "teacher.json"), (REFERENCE_GRID, "grids/teacher.png")):
        if (folder / new).exists():
            (folder / new).rename(folder / old)
