"""``python -m autoaccel plan RUN``: the best front point within a latency/NFE budget, from pareto.csv."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from autoaccel.errors import ConfigError
from autoaccel.objectives import DIRECTIONS
from autoaccel.pareto import choose_within

LIMIT_FLAGS = {"latency_ms": "--max-latency-ms", "nfe": "--max-nfe"}
FRONT_COLUMNS = ("trial", "nfe", "latency_ms", "recipe")  # what a plan reads besides the quality metric


def read_front(run_dir: Path, quality: str = "fid") -> pd.DataFrame:
    """The run's pareto.csv as ``report`` wrote it; anything else (empty, another tool's table) is refused."""
    path = Path(run_dir) / "pareto.csv"
    rebuild = f"rebuild it with `python -m autoaccel report {run_dir}`"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no pareto.csv; run `python -m autoaccel report {run_dir}` first")
    try:
        front = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path} is empty (no header, no rows); {rebuild}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{path} is not a readable CSV ({' '.join(str(error).split())}); {rebuild}") from None
    missing = [column for column in (*FRONT_COLUMNS, quality) if column not in front.columns]
    if missing:
        raise ConfigError(
            f"{path} lacks the column(s) {', '.join(missing)}, so autoaccel report did not write it; {rebuild}"
        )
    numeric = ("trial", "nfe", "latency_ms", quality)
    wrong = [column for column in numeric if not front.empty and not pd.api.types.is_numeric_dtype(front[column])]
    if wrong:
        raise ConfigError(f"{path}: column(s) {', '.join(wrong)} hold non-numbers; {rebuild}")
    return front


def check_limits(limits: dict[str, float | None]) -> None:
    """A budget is a positive finite number: a negative, zero, NaN or infinite one selects nothing or all."""
    for metric, limit in limits.items():
        if limit is not None and not (math.isfinite(limit) and limit > 0):
            flag = LIMIT_FLAGS.get(metric, metric)
            raise ConfigError(f"{flag} {limit} is not valid; it must be a finite number > 0 (or left out: no limit)")


def explain_plan(run_dir: Path, quality: str, limits: dict[str, float | None]) -> tuple[str, bool]:
    """A message for the user and whether a plan fits."""
    if quality not in DIRECTIONS:
        raise ConfigError(f"--quality {quality!r} is not a measured metric; valid: {', '.join(DIRECTIONS)}")
    check_limits(limits)
    front = read_front(run_dir, quality)
    if front.empty:
        return f"{run_dir}: the front is empty (no trial completed within the study's constraints)", False
    choice = choose_within(front, quality, limits)
    limit_text = ", ".join(f"{metric} <= {limit:g}" for metric, limit in limits.items() if limit is not None) or "none"
    if choice.row is not None:
        row = choice.row
        return (
            f"best plan within {limit_text}: trial {int(row['trial'])}  {quality} {row[quality]:.4g}  "
            f"nfe {row['nfe']:.0f}  latency {row['latency_ms']:.1f} ms\nrecipe: "
            f"{Path(run_dir) / str(row['recipe'])}"
        ), True
    row = choice.closest
    misses = ", ".join(f"{metric} by {excess:.4g}" for metric, excess in choice.misses.items())
    return (
        f"no front point fits {limit_text}; closest: trial {int(row['trial'])}  {quality} {row[quality]:.4g}  "
        f"nfe {row['nfe']:.0f}  latency {row['latency_ms']:.1f} ms (misses {misses})\nrecipe: "
        f"{Path(run_dir) / str(row['recipe'])}"
    ), False
