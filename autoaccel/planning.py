"""``python -m autoaccel plan RUN``: the plan a user asks for (the fastest within 1.25x of the teacher's FID, the best
under 50 ms, ...), chosen on the front the report wrote (pareto.csv), compared with the teacher and the standard
configurations, with its recipe and the command that applies it."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import pandas as pd

from autoaccel.errors import ConfigError
from autoaccel.limits import (
    LIMIT_OPTIONS,
    Limit,
    check_limit_value,
    check_teacher_ratios,
    describe_limits,
    resolve_limits,
)
from autoaccel.objectives import DIRECTIONS
from autoaccel.pareto import choose_within
from autoaccel.report.recommend import speedup

TEACHER_FILE = "teacher.json"  # the teacher's figures, written by the report beside pareto.csv
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


def plan_limits(values: dict[str, float | None], teacher: dict | None) -> list[Limit]:
    """The flags' limits, checked like the search's (``--max-fid-ratio`` needs the run's teacher)."""
    for name, value in values.items():
        if value is not None:
            check_limit_value(LIMIT_OPTIONS[name], value, as_flag=True)
    check_teacher_ratios(values, (teacher or {}).get("quality_reference"), flag=True)
    if values.get("max_fid_ratio") is not None and not teacher:
        raise ConfigError(
            "--max-fid-ratio needs the reference's FID, which this run folder does not have (teacher.json); rebuild "
            "the report with `python -m autoaccel report RUN` after the search has measured the reference"
        )
    return resolve_limits(values, teacher)


def default_goal(values: dict[str, float | None], quality: str) -> str:
    """The fastest plan when a quality limit is asked for; the best quality when only cost limits are."""
    asks_quality = any(LIMIT_OPTIONS[name].quality for name, value in values.items() if value is not None)
    return "latency_ms" if asks_quality else quality


def read_teacher(run_dir: Path) -> dict | None:
    path = Path(run_dir) / TEACHER_FILE
    if not path.is_file():
        return None
    try:
        teacher = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid JSON; rebuild it with `python -m autoaccel report {run_dir}`") from None
    return teacher if isinstance(teacher, dict) else None


def read_standards(run_dir: Path) -> pd.DataFrame:
    """The standard configurations the study measured (trials.csv rows with a warm-start tag), or nothing."""
    path = Path(run_dir) / "trials.csv"
    try:
        trials = pd.read_csv(path)
    except (OSError, ValueError):
        return pd.DataFrame()
    if "warm_start" not in trials or "state" not in trials:
        return pd.DataFrame()
    tagged = trials["warm_start"].fillna("").astype(str) != ""
    return trials[tagged & (trials["state"] == "COMPLETE")]


def explain_plan(
    run_dir: Path, values: dict[str, float | None], goal: str | None = None, quality: str = "fid"
) -> tuple[str, bool]:
    """What ``plan`` prints, and whether a plan fits. ``values``: limit option -> value (None = no limit)."""
    for name, metric in (("--minimize", goal), ("--quality", quality)):
        if metric is not None and metric not in DIRECTIONS:
            raise ConfigError(f"{name} {metric!r} is not a measured metric; valid: {', '.join(DIRECTIONS)}")
    teacher = read_teacher(run_dir)
    limits = plan_limits(values, teacher)
    goal = goal or default_goal(values, quality)
    front = read_front(run_dir, quality)
    if goal not in front:
        raise ConfigError(f"--minimize {goal}: {Path(run_dir) / 'pareto.csv'} has no {goal} column")
    if front.empty:
        return f"{run_dir}: the front is empty (no trial completed within the study's limits)", False
    choice = choose_within(front, limits, goal)
    wanted = f"{_goal_words(goal)} within {describe_limits(limits)}"
    if choice.row is None:
        misses = ", ".join(f"{LIMIT_OPTIONS[option].flag} by {excess:.4g}" for option, excess in choice.misses.items())
        lines = [f"no front plan is {wanted}; the closest misses {misses}:"]
        lines += _describe_row(choice.closest, run_dir, quality, teacher)
        return "\n".join(lines), False
    lines = [f"{wanted}:"] + _describe_row(choice.row, run_dir, quality, teacher)
    standard = choose_within(read_standards(run_dir), limits, goal).row
    if _tag(choice.row):
        lines.append(f"  it is the standard configuration {_tag(choice.row)}: the search found nothing better here")
    elif standard is None:
        lines.append("  no standard configuration meets these limits")
    else:
        lines.append(
            f"  vs the best standard configuration within them ({standard['warm_start']}): "
            f"{_comparison(choice.row, standard, quality)}"
        )
    return "\n".join(lines), True


def _tag(row: pd.Series) -> str:
    """The standard configuration a front row is (its warm-start tag), or ''."""
    tag = row.get("warm_start")
    return tag if isinstance(tag, str) else ""


def _goal_words(goal: str) -> str:
    if goal == "latency_ms":
        return "the fastest plan"
    return f"the plan with the {'lowest' if DIRECTIONS[goal] == 'minimize' else 'highest'} {goal}"


def _describe_row(row: pd.Series, run_dir: Path, quality: str, teacher: dict | None) -> list[str]:
    """The plan's figures with their intervals, how it compares with the teacher, and how to use it."""
    recipe = Path(run_dir) / str(row["recipe"])
    lines = [
        f"  trial {int(row['trial'])}{f' ({_tag(row)})' if _tag(row) else ''}: {row.get('scheduler_class', '?')}, "
        f"timesteps {row.get('timesteps', '?')}",
        "  " + "   ".join(figure for figure in _figures(row, quality) if figure),
    ]
    if teacher:
        steps = teacher.get("timesteps", "?")
        lines.append(f"  vs the reference ({steps} steps): {_comparison(row, teacher, quality)}")
    lines += [f"  recipe: {recipe}", f"  apply:  python -m autoaccel apply {recipe} --out samples --n 16"]
    return lines


def _figures(row: pd.Series, quality: str) -> list[str]:
    def number(name: str) -> float:
        value = row.get(name)
        return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else math.nan

    figures = []
    for name in dict.fromkeys([quality, "fid", "kid"]):
        spread = number(f"{name}_std")
        if not math.isnan(number(name)):
            figures.append(f"{name} {number(name):.4g}" + (f" ± {spread:.2g}" if not math.isnan(spread) else ""))
    nfe = number("nfe")  # whole, except with cached calls (shares of a full forward)
    figures.append(f"nfe {nfe:.0f}" if nfe.is_integer() else f"nfe {nfe:.1f}")
    iqr = number("latency_iqr_ms")
    figures.append(f"latency {number('latency_ms'):.1f} ms" + (f" (IQR {iqr:.2g})" if not math.isnan(iqr) else ""))
    for name, unit in (("psnr_vs_ode", " dB"), ("precision", ""), ("recall", ""), ("peak_memory_mb", " MB")):
        if not math.isnan(number(name)):
            figures.append(f"{name} {number(name):.3g}{unit}")
    return figures


def _comparison(row: pd.Series, other, quality: str) -> str:
    """Speed-up and quality ratio of ``row`` over ``other`` (the teacher, a standard configuration)."""
    parts = []
    faster = speedup(other.get("latency_ms"), row.get("latency_ms"))
    if faster is not None and faster > 0:
        parts.append(f"{faster:.2f}x faster")
    value, other_value = row.get(quality), other.get(quality)
    if _positive(value) and _positive(other_value):
        parts.append(
            f"{quality} {float(other_value):.4g} -> {float(value):.4g} ({float(value) / float(other_value):.2f}x)"
        )
    return ", ".join(parts) or "no comparable figures"


def _positive(value) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value) and value > 0
