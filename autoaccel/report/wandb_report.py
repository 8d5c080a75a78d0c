"""The run in Weights & Biases: config, trials table, Pareto scatter, hypervolume over trials, image grids
and recipes as an artifact. Offline by default (files under the run's report folder, upload later with
``wandb sync``); online when the user has configured W&B (``WANDB_API_KEY`` or ``wandb login``) or sets
``WANDB_MODE=online``.
"""

from __future__ import annotations

import math
import netrc
import os
from pathlib import Path
from typing import Any

import pandas as pd

from autoaccel.front.objectives import METRIC_COLUMNS
from autoaccel.report.wandb_workspace import create_report, report_spec, write_spec

PLANS_DIR = "wandb-plans"  # the front plans' runs (their own wandb/ folder, apart from the search run's)
TABLE_COLUMNS = ["trial", "state", "warm_start", *METRIC_COLUMNS, "timesteps", "failure"]


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; else online when credentials exist, offline otherwise (never a hang or a prompt)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def _table(frame: pd.DataFrame, columns: list[str]):
    import wandb

    columns = [column for column in columns if column in frame.columns]
    rows = []
    for _, row in frame[columns].iterrows():
        rows.append([None if isinstance(value, float) and math.isnan(value) else value for value in row.tolist()])
    return wandb.Table(columns=columns, data=rows)


def log_run(
    run_dir: Path,
    study_name: str,
    config: dict,
    trials: pd.DataFrame,
    front: pd.DataFrame,
    reference: dict | None,
    hypervolumes: list[float],
    grids: dict[str, str],
    project: str = "autoaccel",
    objectives: tuple[str, ...] = ("fid", "latency_ms"),
    recommendations: tuple[str, ...] = (),
) -> str:
    """Writes one W&B run for the search, one small run per front plan (its settings and figures: the report's
    parallel coordinates), and the W&B Report's specification (``autoaccel.report.wandb_workspace``), created in
    W&B when the run is online; returns the mode it ran in."""
    import wandb

    mode = wandb_mode()
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=project,
        name=study_name,
        dir=str(run_dir),
        mode=mode,
        config=config,
        reinit="finish_previous",
        job_type="search",
        group=study_name,
    )
    try:
        for row in trial_history(trials, front, reference, hypervolumes, list(objectives)):
            run.log(row)
        trials_table = _table(trials, TABLE_COLUMNS)
        front_table = _table(front, TABLE_COLUMNS + ["recipe"])
        complete = trials[trials["state"] == "COMPLETE"]
        scatter_table = _table(complete, ["trial", "latency_ms", "fid", "nfe", "warm_start"])
        run.log(
            {
                "trials": trials_table,
                "pareto_front": front_table,
                "pareto_scatter": wandb.plot.scatter(
                    scatter_table, "latency_ms", "fid", title="quality (fid) vs latency_ms, all complete trials"
                ),
                "grids": [wandb.Image(str(run_dir / path), caption=label) for label, path in grids.items()],
            }
        )
        run.summary["front_size"] = len(front)
        run.summary["trials"] = len(trials)
        run.summary["final_hypervolume"] = hypervolumes[-1] if hypervolumes else 0.0
        if reference:
            run.summary.update(
                {f"reference/{key}": value for key, value in reference.items() if isinstance(value, int | float)}
            )
        recipes_dir = run_dir / "recipes"
        if recipes_dir.is_dir() and any(recipes_dir.iterdir()):
            artifact = wandb.Artifact(
                f"{study_name}-recipes", type="recipe", description="deployment plans on the Pareto front"
            )
            artifact.add_dir(str(recipes_dir))
            run.log_artifact(artifact)
    finally:
        run.finish()
    settings = _log_front_plans(run_dir, study_name, front, list(objectives), project, mode)
    spec = report_spec(study_name, project, list(objectives), settings, list(recommendations), run.entity or None)
    write_spec(run_dir, spec)
    if mode == "online":
        create_report(run_dir)
    return mode


def trial_history(
    trials: pd.DataFrame, front: pd.DataFrame, reference: dict | None, hypervolumes: list[float], objectives: list[str]
) -> list[dict[str, Any]]:
    """One history row per trial (in trial order): its number, the front's hypervolume after it, its objectives,
    and the same quality figure again under ``front_``/``standard_`` where the point is on the front or a
    standard configuration (the scatter's marked series); then one row for the reference (``reference_``)."""
    quality = objectives[0]
    on_front = set(front["trial"].astype(int)) if not front.empty else set()
    rows = []
    for (_, row), hypervolume in zip(trials.sort_values("trial").iterrows(), hypervolumes):
        entry: dict[str, Any] = {"trial": int(row["trial"]), "hypervolume": hypervolume}
        if row.get("state") == "COMPLETE":
            entry.update(_finite(row, objectives))
            if quality in entry and int(row["trial"]) in on_front:
                entry[f"front_{quality}"] = entry[quality]
            if quality in entry and isinstance(row.get("warm_start"), str) and row.get("warm_start"):
                entry[f"standard_{quality}"] = entry[quality]
        rows.append(entry)
    figures = _finite(reference or {}, objectives)
    if len(figures) == len(objectives):
        rows.append({f"reference_{quality}": figures[quality], **{name: figures[name] for name in objectives[1:]}})
    return rows


def _finite(row, names: list[str]) -> dict[str, float]:
    """``names`` -> their values in ``row`` (a mapping or a frame row), those that are finite numbers."""
    values = {name: row.get(name) for name in names}
    return {
        name: float(value)
        for name, value in values.items()
        if isinstance(value, int | float) and math.isfinite(float(value))
    }


def _log_front_plans(run_dir: Path, study_name: str, front: pd.DataFrame, objectives: list[str], project, mode) -> list:
    """One run per front plan, named ``<study>/trial-<n>`` in the study's group: its settings (``param.*``) as
    config and its figures as summary, which a parallel-coordinates panel plots across plans. Returns the
    setting names."""
    import wandb

    settings = sorted(
        {column[len("param.") :] for column in front.columns if column.startswith("param.")}
        if not front.empty
        else set()
    )
    plans_dir = run_dir / PLANS_DIR
    if not front.empty:
        plans_dir.mkdir(parents=True, exist_ok=True)
    for _, row in front.iterrows():
        values = {name: row.get(f"param.{name}") for name in settings}
        plan = wandb.init(
            project=project,
            name=f"{study_name}/trial-{int(row['trial'])}",
            dir=str(plans_dir),
            mode=mode,
            group=study_name,
            job_type="plan",
            config={name: value for name, value in values.items() if not _missing(value)},
            reinit="finish_previous",
        )
        try:
            plan.summary.update(_finite(row, objectives))
            plan.summary["trial"] = int(row["trial"])
        finally:
            plan.finish()
    return settings


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
