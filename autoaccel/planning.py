"""``python -m autoaccel plan RUN``: the best front point within a latency/NFE budget, from pareto.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from autoaccel.errors import ConfigError
from autoaccel.objectives import DIRECTIONS
from autoaccel.pareto import choose_within


def read_front(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / "pareto.csv"
    if not path.exists():
        raise ConfigError(f"{run_dir} has no pareto.csv; run `python -m autoaccel report {run_dir}` first")
    return pd.read_csv(path)


def explain_plan(run_dir: Path, quality: str, limits: dict[str, float | None]) -> tuple[str, bool]:
    """A message for the user and whether a plan fits."""
    if quality not in DIRECTIONS:
        raise ConfigError(f"--quality {quality!r} is not a measured metric; valid: {', '.join(DIRECTIONS)}")
    front = read_front(run_dir)
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
