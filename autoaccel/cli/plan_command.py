"""``python -m autoaccel plan RUN``: the plan a user asks for (the fastest within 1.25x of the teacher's FID, the best
under 50 ms, ...), chosen on the front the report wrote (pareto.csv), compared with the teacher and the standard
configurations, with its recipe and the command that applies it.

Where the run kept its images' features, every FID comparison carries its paired interval (``report.noise``): a plan
whose interval covers a bound meets it, a tie goes to the faster plan, and the message says so. What ``plan`` reads
(pareto.csv, trials.csv, teacher.json) may have been edited by hand: each figure it uses is range-checked first, and
a bad one is a one-line error naming the file, the row or key and the value.
"""

from __future__ import annotations

import json
import math
import numbers
import shlex
from pathlib import Path

import pandas as pd

from autoaccel.errors import ConfigError
from autoaccel.front.limits import (
    LIMIT_OPTIONS,
    Limit,
    check_limit_value,
    check_teacher_ratios,
    describe_limits,
    resolve_limits,
)
from autoaccel.front.objectives import DIRECTIONS
from autoaccel.report.build import TEACHER_FILE
from autoaccel.report.noise import TEACHER_SAMPLES, Noise, cannot_tell_sentence, choose_with_noise, run_noise
from autoaccel.report.recommend import REFERENCE_FID, speedup

FRONT_COLUMNS = ("trial", "nfe", "latency_ms", "recipe")  # what a plan reads besides the quality metric
SHARES = {"adherence", "precision", "recall"}  # figures that are shares of images, in [0, 1]
SIGNED = {"kid", "psnr_vs_ode", "ssim_vs_ode", "clip_score"}  # figures that may be negative (KID is unbiased)


def _rebuild(run_dir: Path) -> str:
    return f"rebuild it with `python -m autoaccel report {shlex.quote(str(run_dir))}`"


def read_front(run_dir: Path, quality: str = "fid") -> pd.DataFrame:
    """The run's pareto.csv as ``report`` wrote it; anything else (empty, another tool's table) is refused."""
    path = Path(run_dir) / "pareto.csv"
    rebuild = _rebuild(run_dir)
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} has no pareto.csv; run `python -m autoaccel report {shlex.quote(str(run_dir))}` first"
        )
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
    wrong = [column for column in numeric if not front.empty and not _numbers_column(front[column])]
    if wrong:
        raise ConfigError(f"{path}: column(s) {', '.join(wrong)} hold non-numbers; {rebuild}")
    return front


def _numbers_column(column: pd.Series) -> bool:
    """Numbers (or empty cells); pandas reads a column of True/False as numbers, which they are not."""
    if pd.api.types.is_bool_dtype(column):
        return False
    return pd.api.types.is_numeric_dtype(column) or column.isna().all()


def check_figures(frame: pd.DataFrame, columns: list[str], path: Path, run_dir: Path) -> None:
    """Each figure ``plan`` uses is a number in its range: trial numbers whole and >= 0, costs, NFE and FIDs finite
    and >= 0, shares in [0, 1], others finite; an empty cell is a figure not measured."""
    for column in dict.fromkeys(columns):
        if column not in frame or frame.empty:
            continue
        if not _numbers_column(frame[column]):
            raise ConfigError(f"{path}: column {column} holds non-numbers; {_rebuild(run_dir)}")
        valid = _valid_range(column)
        for index, value in frame[column].items():
            if pd.isna(value) and column not in ("trial", "nfe", "latency_ms"):
                continue
            if not _in_range(column, float(value)):
                trial = frame.at[index, "trial"] if "trial" in frame and column != "trial" else None
                where = f"row {index + 1}" + (f" (trial {trial:g})" if _finite(trial) else "")
                raise ConfigError(f"{path}: {where} has {column}={value}; valid: {valid}; {_rebuild(run_dir)}")


def _valid_range(column: str) -> str:
    if column == "trial":
        return "a whole number >= 0"
    if column in SHARES:
        return "a number in [0, 1]"
    if column in SIGNED:
        return "a finite number"
    return "a finite number >= 0"


def _in_range(column: str, value: float) -> bool:
    if not math.isfinite(value):
        return False
    if column == "trial":
        return value >= 0 and value.is_integer()
    if column in SHARES:
        return 0 <= value <= 1
    if column.startswith("fid"):  # a FID of identical image sets comes out as -1e-8 or so: it is 0
        return value >= -REFERENCE_FID
    return column in SIGNED or value >= 0


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def plan_limits(values: dict[str, float | None], teacher: dict | None) -> list[Limit]:
    """The flags' limits, checked like the search's (``--max-fid-ratio`` needs the run's teacher)."""
    for name, value in values.items():
        if value is not None:
            check_limit_value(LIMIT_OPTIONS[name], value, as_flag=True)
    check_teacher_ratios(values, (teacher or {}).get("quality_reference"), flag=True)
    ratio = values.get("max_fid_ratio")
    if ratio is not None and not teacher:
        raise ConfigError(
            "--max-fid-ratio needs the reference's FID, which this run folder does not have (teacher.json); rebuild "
            "the report with `python -m autoaccel report RUN` after the search has measured the reference"
        )
    if ratio is not None and not (_finite(teacher.get("fid")) and teacher["fid"] > REFERENCE_FID):
        raise ConfigError(
            f"--max-fid-ratio {ratio:g} needs the reference's FID > 0, but teacher.json has fid={teacher.get('fid')} "
            "(0 where FID is measured against the reference's own samples); limit the absolute FID with --max-fid, "
            "or the fidelity to the reference with --min-psnr"
        )
    return resolve_limits(values, teacher)


def default_goal(values: dict[str, float | None], quality: str) -> str:
    """The fastest plan when a quality limit is asked for; the best quality when only cost limits are."""
    asks_quality = any(LIMIT_OPTIONS[name].quality for name, value in values.items() if value is not None)
    return "latency_ms" if asks_quality else quality


TEACHER_NUMBERS = ("fid", "fid_std", "latency_ms", "nfe", "quality_samples", "psnr_vs_ode", "adherence")


def read_teacher(run_dir: Path) -> dict | None:
    """teacher.json as ``report`` wrote it: its figures numbers in range (or null), its kind text; else refused."""
    path = Path(run_dir) / TEACHER_FILE
    if not path.is_file():
        return None
    try:
        teacher = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid JSON; {_rebuild(run_dir)}") from None
    if not isinstance(teacher, dict):
        raise ConfigError(f"{path} holds {type(teacher).__name__}, not the reference's figures; {_rebuild(run_dir)}")
    for key in TEACHER_NUMBERS:
        value = teacher.get(key)
        if value is None:
            continue
        if not _finite(value) or not _in_range(key, float(value)):
            raise ConfigError(
                f"{path}: {key}={json.dumps(value)} is not valid; valid: {_valid_range(key)} or null; "
                f"{_rebuild(run_dir)}"
            )
    kind = teacher.get("quality_reference")
    if kind is not None and kind not in ("real-data", TEACHER_SAMPLES):
        raise ConfigError(
            f"{path}: quality_reference={json.dumps(kind)} is not valid; valid: real-data, {TEACHER_SAMPLES} or null"
        )
    return teacher


def read_standards(run_dir: Path, columns: list[str]) -> pd.DataFrame:
    """The standard configurations the study measured (trials.csv rows with a warm-start tag) that have every one of
    ``columns`` (figures checked like pareto.csv's), or nothing."""
    path = Path(run_dir) / "trials.csv"
    try:
        trials = pd.read_csv(path)
    except (OSError, ValueError):
        return pd.DataFrame()
    if "warm_start" not in trials or "state" not in trials or any(column not in trials for column in columns):
        return pd.DataFrame()
    tagged = trials["warm_start"].fillna("").astype(str) != ""
    standards = trials[tagged & (trials["state"] == "COMPLETE")]
    check_figures(standards, ["trial", *columns], path, run_dir)
    return standards


def _check_metric(front: pd.DataFrame, flag: str, metric: str, path: Path) -> None:
    """A metric to rank by must have been measured for some front plan."""
    if metric in front and front[metric].notna().any():
        return
    measured = [name for name in DIRECTIONS if name in front and front[name].notna().any()]
    raise ConfigError(
        f"{flag} {metric}: no plan in {path} has a measured {metric}; valid here: {', '.join(measured) or 'none'}"
    )


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
    path = Path(run_dir) / "pareto.csv"
    if goal not in front:
        raise ConfigError(f"--minimize {goal}: {path} has no {goal} column")
    used = ["trial", "nfe", "latency_ms", "fid", quality, goal, *(limit.metric for limit in limits)]
    check_figures(front, used, path, run_dir)
    if front.empty:
        return f"{run_dir}: the front is empty (no trial completed within the study's limits)", False
    _check_metric(front, "--quality", quality, path)
    _check_metric(front, "--minimize", goal, path)
    standards = read_standards(run_dir, list(dict.fromkeys(used)))
    noise = run_noise(run_dir, [front, standards], teacher, (teacher or {}).get("quality_reference"))
    choice = choose_with_noise(front, limits, goal, noise)
    wanted = f"{_goal_words(goal)} within {describe_limits(limits)}"
    if choice.row is None:
        misses = ", ".join(f"{LIMIT_OPTIONS[option].flag} by {excess:.4g}" for option, excess in choice.misses.items())
        lines = [f"no front plan is {wanted}; the closest misses {misses}:"]
        lines += _describe_row(choice.closest, run_dir, quality, teacher, noise)
        return "\n".join(lines + _noise_lines(front, noise, teacher)), False
    lines = [f"{wanted}:"] + _describe_row(choice.row, run_dir, quality, teacher, noise)
    lines += [f"  {tie}" for tie in choice.ties]
    standard = choose_with_noise(standards, limits, goal, noise).row
    if _tag(choice.row):
        lines.append(f"  it is the standard configuration {_tag(choice.row)}: the search found nothing better here")
    elif standard is None:
        lines.append("  no standard configuration meets these limits")
    else:
        lines.append(
            f"  vs the best standard configuration within them ({standard['warm_start']}): "
            f"{_comparison(choice.row, standard, quality, noise)}"
        )
    return "\n".join(lines + _noise_lines(front, noise, teacher)), True


def _noise_lines(front: pd.DataFrame, noise: Noise | None, teacher: dict | None) -> list[str]:
    """What the intervals say about the whole front, and where there are none."""
    if noise is None:
        return []
    if noise.bootstrap is None:
        return [f"  ({noise.method()})"] if noise.samples else []
    lines = []
    if noise.missing:
        trials = ", ".join(str(number) for number in noise.missing)
        lines.append(f"  (no paired interval for trial(s) {trials}: their image features are not in this run folder)")
    if noise.cannot_tell_apart(front):
        real_data = (teacher or {}).get("quality_reference") != TEACHER_SAMPLES
        lines.append(cannot_tell_sentence(noise.samples, real_data))
    return lines


def _tag(row: pd.Series) -> str:
    """The standard configuration a front row is (its warm-start tag), or ''."""
    tag = row.get("warm_start")
    return tag if isinstance(tag, str) else ""


def _goal_words(goal: str) -> str:
    if goal == "latency_ms":
        return "the fastest plan"
    return f"the plan with the {'lowest' if DIRECTIONS[goal] == 'minimize' else 'highest'} {goal}"


def _describe_row(
    row: pd.Series, run_dir: Path, quality: str, teacher: dict | None, noise: Noise | None = None
) -> list[str]:
    """The plan's figures with their intervals, how it compares with the teacher, and how to use it."""
    recipe = Path(run_dir) / str(row["recipe"])
    lines = [
        f"  trial {int(row['trial'])}{f' ({_tag(row)})' if _tag(row) else ''}: {row.get('scheduler_class', '?')}, "
        f"timesteps {row.get('timesteps', '?')}",
        "  " + "   ".join(figure for figure in _figures(row, quality, noise) if figure),
    ]
    if teacher:
        steps = teacher.get("timesteps", "?")
        lines.append(f"  vs the reference ({steps} steps): {_comparison(row, teacher, quality, noise)}")
    quoted = shlex.quote(str(recipe))
    lines += [f"  recipe: {quoted}", f"  apply:  python -m autoaccel apply {quoted} --out samples --n 16"]
    return lines


def _figures(row: pd.Series, quality: str, noise: Noise | None) -> list[str]:
    def number(name: str) -> float:
        value = row.get(name)
        return float(value) if _finite(value) else math.nan

    figures = []
    fid = None if noise is None else noise.fid(row)
    for name in dict.fromkeys([quality, "fid", "kid"]):
        spread = number(f"{name}_std")
        if name == "fid" and fid is not None:
            figures.append(f"fid {number('fid'):.4g} {fid.bounds()}")
        elif not math.isnan(number(name)):
            figures.append(f"{name} {number(name):.4g}" + (f" ± {spread:.2g}" if not math.isnan(spread) else ""))
    nfe = number("nfe")  # whole, except with cached calls (shares of a full forward)
    figures.append(f"nfe {nfe:.0f}" if nfe.is_integer() else f"nfe {nfe:.1f}")
    iqr = number("latency_iqr_ms")
    figures.append(f"latency {number('latency_ms'):.1f} ms" + (f" (IQR {iqr:.2g})" if not math.isnan(iqr) else ""))
    for name, unit in (("psnr_vs_ode", " dB"), ("precision", ""), ("recall", ""), ("peak_memory_mb", " MB")):
        if not math.isnan(number(name)):
            figures.append(f"{name} {number(name):.3g}{unit}")
    return figures


def _comparison(row: pd.Series, other, quality: str, noise: Noise | None = None) -> str:
    """Speed-up and quality of ``row`` against ``other`` (the teacher, a standard configuration): a ratio of the
    quality figures where the other's is positive, else their difference (a reference scored against its own
    samples has FID 0); with intervals, the paired interval and whether it is a tie."""
    parts = []
    faster = speedup(other.get("latency_ms"), row.get("latency_ms"))
    if faster is not None and faster > 0:
        parts.append(f"{faster:.2f}x faster")
    value, other_value = row.get(quality), other.get(quality)
    if not (_finite(value) and _finite(other_value)):
        return ", ".join(parts) or "no comparable figures"
    change = f"{quality} {float(other_value):.4g} -> {float(value):.4g}"
    teacher = "trial" not in other
    interval = None
    if noise is not None and quality == "fid":
        interval = noise.ratio(row) if teacher else noise.difference(row, other)
    if interval is not None and teacher:
        tie = f", a tie with 1 at {noise.samples} samples" if interval.covers(1.0) else ""
        parts.append(f"{change} ({interval.value:.2f}x {interval.bounds()}{tie})")
    elif interval is not None:
        tie = f", a tie at {noise.samples} samples" if interval.covers(0.0) else ""
        parts.append(f"{change} (difference {interval.text(signed=True)}{tie})")
    elif float(other_value) > REFERENCE_FID and float(value) > 0:
        parts.append(f"{change} ({float(value) / float(other_value):.2f}x)")
    else:
        parts.append(f"{change} ({float(value) - float(other_value):+.4g})")
    return ", ".join(parts)
