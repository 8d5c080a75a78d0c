"""``python -m autoaccel plan RUN``: the plan a user asks for (the fastest within 1.25x of the reference's FID, the
best under 50 ms, ...), chosen on the run's front, compared with the reference and the standard configurations, with its
recipe and the command that applies it.

The trials, their figures and states, and the reference's figures come from the study's ledger (the run folder's,
or a shared storage's with ``--storage/--study``), never from the report's CSV files, which may be stale or gone:
the front is built here as the report builds it (``autoaccel.front.pareto``, under the limits of the run's budget). What
only the report computes is read where it keeps it: the recipes it wrote (``recipes/``) and the image features
behind the paired intervals (``features/``). Where the run kept its images' features, every FID comparison carries
its paired interval (``report.noise``): a plan whose interval covers a bound meets it, a tie goes to the faster
plan, and the message says so. Each figure used is range-checked first; a bad one is a one-line error naming the
study, the trial or key and the value.
"""

from __future__ import annotations

import json
import math
import numbers
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from autoaccel.errors import ConfigError
from autoaccel.front.limits import (
    LIMIT_OPTIONS,
    REFERENCE_SAMPLES,
    Limit,
    check_limit_value,
    check_reference_ratios,
    describe_limits,
    resolve_limits,
)
from autoaccel.front.objectives import DIRECTIONS
from autoaccel.front.pareto import front_frame, front_numbers
from autoaccel.report.files import recipe_path
from autoaccel.report.noise import Noise, cannot_tell_sentence, choose_with_noise, run_noise
from autoaccel.report.recommend import REFERENCE_FID, speedup
from autoaccel.search.ledger import reference_row, target_facts, trials_in_force
from autoaccel.search.run_folder import recorded_study

SHARES = {"adherence", "precision", "recall"}  # figures that are shares of images, in [0, 1]
SIGNED = {"kid", "psnr_vs_ode", "ssim_vs_ode", "clip_score", "pickscore"}  # may be negative (KID is unbiased)


@dataclass
class RecordedRun:
    """What ``plan`` reads of a run: its study's front and standard configurations, and the reference's figures."""

    run_dir: Path
    study_name: str
    front: pd.DataFrame  # the Pareto front under the run's budget limits, cheapest first
    standards: pd.DataFrame  # the standard configurations that completed (trials with a warm-start tag)
    reference: dict | None  # the reference's figures and what FID is measured against; None before it was measured
    quality_reference: str | None  # what FID is measured against: real-data or reference-samples


def read_run(run_dir: Path, storage: str | None = None, study_name: str | None = None) -> RecordedRun:
    """The run's front, standard configurations and reference, from its ledger alone (see the module's doc)."""
    config, ledger = recorded_study(run_dir, storage, study_name)
    name = ledger.study_name
    facts = target_facts(ledger.study)
    if facts is None:
        rebuild = f"python -m autoaccel report {shlex.quote(str(run_dir))}" + (
            f" --storage {shlex.quote(storage)} --study {shlex.quote(name)}" if storage else ""
        )
        raise ConfigError(
            f"study {name!r} was recorded by an older autoaccel, which did not store the objectives and the quality "
            f"reference plan needs; run `{rebuild}` once to store them"
        )
    reference = reference_row(ledger.study)
    if reference:
        reference = {**_checked_reference(reference, name), "quality_reference": facts.get("quality_reference")}
    trials = trials_in_force(ledger, config.budget)
    numbers_ = front_numbers(trials, list(facts["objectives"]))
    front = front_frame(trials, numbers_) if numbers_ else pd.DataFrame(columns=["trial", "nfe", "latency_ms"])
    if trials.empty or "warm_start" not in trials:
        standards = pd.DataFrame()
    else:
        standards = trials[(trials["state"] == "COMPLETE") & (trials["warm_start"].fillna("") != "")]
    return RecordedRun(Path(run_dir), name, front, standards, reference or None, facts.get("quality_reference"))


def _numbers_column(column: pd.Series) -> bool:
    """Numbers (or empty cells); pandas reads a column of True/False as numbers, which they are not."""
    if pd.api.types.is_bool_dtype(column):
        return False
    return pd.api.types.is_numeric_dtype(column) or column.isna().all()


def check_figures(frame: pd.DataFrame, columns: list[str], study_name: str) -> None:
    """Each figure ``plan`` uses is a number in its range: trial numbers whole and >= 0, costs, NFE and FIDs finite
    and >= 0, shares in [0, 1], others finite; an empty cell is a figure not measured."""
    for column in dict.fromkeys(columns):
        if column not in frame or frame.empty:
            continue
        if not _numbers_column(frame[column]):
            raise ConfigError(f"study {study_name!r}: {column} holds non-numbers; valid: {_valid_range(column)}")
        valid = _valid_range(column)
        for index, value in frame[column].items():
            if pd.isna(value) and column not in ("trial", "nfe", "latency_ms"):
                continue
            if not _in_range(column, float(value)):
                trial = frame.at[index, "trial"] if "trial" in frame and column != "trial" else None
                where = f"trial {trial:g}" if _finite(trial) else f"row {index + 1}"
                raise ConfigError(f"study {study_name!r}: {where} has {column}={value}; valid: {valid}")


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


def check_limit_flags(values: dict[str, float | None]) -> None:
    """Each limit flag's value is in range (checked before the run is opened)."""
    for name, value in values.items():
        if value is not None:
            check_limit_value(LIMIT_OPTIONS[name], value, as_flag=True)


def plan_limits(
    values: dict[str, float | None], reference: dict | None, study_name: str = "", quality_reference: str | None = None
) -> list[Limit]:
    """The flags' limits, checked like the search's (``--max-fid-ratio`` needs the run's reference row)."""
    check_limit_flags(values)
    check_reference_ratios(values, quality_reference or (reference or {}).get("quality_reference"), flag=True)
    ratio = values.get("max_fid_ratio")
    if ratio is not None and not reference:
        raise ConfigError(
            f"--max-fid-ratio needs the reference's FID, which study {study_name!r} has not recorded (a search "
            "measures the reference before its first trial); resume the search, or limit the absolute FID with "
            "--max-fid"
        )
    if ratio is not None and not (_finite(reference.get("fid")) and reference["fid"] > REFERENCE_FID):
        raise ConfigError(
            f"--max-fid-ratio {ratio:g} needs the reference's FID > 0, but study {study_name!r} records "
            f"fid={reference.get('fid')} for it (0 where FID is measured against the reference's own samples); limit "
            "the absolute FID with --max-fid, or the fidelity to the reference with --min-psnr"
        )
    return resolve_limits(values, reference)


def default_goal(values: dict[str, float | None], quality: str) -> str:
    """The fastest plan when a quality limit is asked for; the best quality when only cost limits are."""
    asks_quality = any(LIMIT_OPTIONS[name].quality for name, value in values.items() if value is not None)
    return "latency_ms" if asks_quality else quality


REFERENCE_NUMBERS = ("fid", "fid_std", "latency_ms", "nfe", "quality_samples", "psnr_vs_ode", "adherence")


def _checked_reference(reference: dict, study_name: str) -> dict:
    """The study's reference row, its figures numbers in range (or null); else refused."""
    if not isinstance(reference, dict):
        raise ConfigError(f"study {study_name!r}: its reference row holds {type(reference).__name__}, not figures")
    for key in REFERENCE_NUMBERS:
        value = reference.get(key)
        if value is None:
            continue
        if not _finite(value) or not _in_range(key, float(value)):
            raise ConfigError(
                f"study {study_name!r}: the reference's {key}={json.dumps(value)} is not valid; valid: "
                f"{_valid_range(key)} or null"
            )
    return reference


def _standards_with(standards: pd.DataFrame, columns: list[str], study_name: str) -> pd.DataFrame:
    """The standard configurations, where they have every one of ``columns`` (figures checked), or nothing."""
    if standards.empty or any(column not in standards for column in columns):
        return pd.DataFrame()
    check_figures(standards, ["trial", *columns], study_name)
    return standards


def _check_metric(front: pd.DataFrame, flag: str, metric: str, study_name: str) -> None:
    """A metric to rank by must have been measured for some front plan."""
    if metric in front and front[metric].notna().any():
        return
    measured = [name for name in DIRECTIONS if name in front and front[name].notna().any()]
    raise ConfigError(
        f"{flag} {metric}: no plan on the front of study {study_name!r} has a measured {metric}; valid here: "
        f"{', '.join(measured) or 'none'}"
    )


def explain_plan(
    run_dir: Path,
    values: dict[str, float | None],
    goal: str | None = None,
    quality: str = "fid",
    storage: str | None = None,
    study_name: str | None = None,
) -> tuple[str, bool]:
    """What ``plan`` prints, and whether a plan fits. ``values``: limit option -> value (None = no limit);
    ``storage``/``study_name``: a shared study (``run_dir`` then holds what its report wrote)."""
    for name, metric in (("--minimize", goal), ("--quality", quality)):
        if metric is not None and metric not in DIRECTIONS:
            raise ConfigError(f"{name} {metric!r} is not a measured metric; valid: {', '.join(DIRECTIONS)}")
    check_limit_flags(values)
    run = read_run(run_dir, storage, study_name)
    reference, name = run.reference, run.study_name
    limits = plan_limits(values, reference, name, run.quality_reference)
    goal = goal or default_goal(values, quality)
    front = run.front
    used = ["trial", "nfe", "latency_ms", "fid", quality, goal, *(limit.metric for limit in limits)]
    check_figures(front, used, name)
    if front.empty:
        return f"{run_dir}: the front is empty (no trial completed within the study's limits)", False
    _check_metric(front, "--quality", quality, name)
    _check_metric(front, "--minimize", goal, name)
    standards = _standards_with(run.standards, list(dict.fromkeys(used)), name)
    noise = run_noise(run_dir, [front, standards], reference, run.quality_reference)
    choice = choose_with_noise(front, limits, goal, noise)
    wanted = f"{_goal_words(goal)} within {describe_limits(limits)}"
    if choice.row is None:
        misses = ", ".join(f"{LIMIT_OPTIONS[option].flag} by {excess:.4g}" for option, excess in choice.misses.items())
        lines = [f"no front plan is {wanted}; the closest misses {misses}:"]
        lines += _describe_row(choice.closest, run_dir, quality, reference, noise)
        return "\n".join(lines + _noise_lines(front, noise, reference)), False
    lines = [f"{wanted}:"] + _describe_row(choice.row, run_dir, quality, reference, noise)
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
    return "\n".join(lines + _noise_lines(front, noise, reference)), True


def _noise_lines(front: pd.DataFrame, noise: Noise | None, reference: dict | None) -> list[str]:
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
        real_data = (reference or {}).get("quality_reference") != REFERENCE_SAMPLES
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
    row: pd.Series, run_dir: Path, quality: str, reference: dict | None, noise: Noise | None = None
) -> list[str]:
    """The plan's figures with their intervals, how it compares with the reference, and how to use it."""
    recipe = recipe_path(run_dir, int(row["trial"]))
    lines = [
        f"  trial {int(row['trial'])}{f' ({_tag(row)})' if _tag(row) else ''}: {row.get('scheduler_class', '?')}, "
        f"timesteps {row.get('timesteps', '?')}",
        "  " + "   ".join(figure for figure in _figures(row, quality, noise) if figure),
    ]
    if reference:
        steps = reference.get("timesteps", "?")
        lines.append(f"  vs the reference ({steps} steps): {_comparison(row, reference, quality, noise)}")
    quoted = shlex.quote(str(recipe))
    if recipe.is_file():
        lines += [f"  recipe: {quoted}", f"  apply:  python -m autoaccel apply {quoted} --out samples --n 16"]
    else:  # on the front since the report was built, or its artifacts are on another machine
        lines.append(
            f"  recipe: not written yet ({quoted}); write it with "
            f"`python -m autoaccel report {shlex.quote(str(run_dir))}`"
        )
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
    """Speed-up and quality of ``row`` against ``other`` (the reference, a standard configuration): a ratio of the
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
    against_reference = "trial" not in other
    interval = None
    if noise is not None and quality == "fid":
        interval = noise.ratio(row) if against_reference else noise.difference(row, other)
    if interval is not None and against_reference:
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
