"""The names of what a report writes in its run folder that other commands read (``plan`` finds a front plan's
recipe here): kept apart from building the report, so reading them loads nothing else."""

from __future__ import annotations

from pathlib import Path

REFERENCE_FILE = "reference.json"  # the reference call's figures, written by the report beside pareto.csv
RECIPES_DIR = "recipes"  # the front plans' recipes


def recipe_name(trial: int) -> str:
    """The file name the report gives a front plan's recipe."""
    return f"trial-{int(trial):04d}.yaml"


def recipe_path(run_dir: Path, trial: int) -> Path:
    """Where the report writes a front plan's recipe."""
    return Path(run_dir) / RECIPES_DIR / recipe_name(trial)
