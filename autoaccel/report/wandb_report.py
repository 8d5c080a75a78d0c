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

import pandas as pd

from autoaccel.front.objectives import METRIC_COLUMNS

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
) -> str:
    """Writes one W&B run for the search; returns the mode it ran in."""
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
    )
    try:
        for trial_number, hypervolume in zip(trials.sort_values("trial")["trial"], hypervolumes):
            run.log({"trial": int(trial_number), "hypervolume": hypervolume})
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
    return mode
