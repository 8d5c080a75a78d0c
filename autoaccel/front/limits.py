"""Limits: the question a user asks of a front ("the fastest plan whose FID is within 1.25x of the reference's,
under 100 ms"). Deployment limits (latency, NFE, memory, bytes) and quality limits (FID, FID relative to the
reference, fidelity to the reference's ODE solution) are one kind of thing: a bound on a measured figure.

Limits are part of the question, not of the measurement: every front is built from the measured figures with
the limits in force when it is built, so setting, changing or removing one never needs a new measurement.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoaccel.errors import ConfigError

REFERENCE_SAMPLES = "reference-samples"  # a target whose FID reference is the reference call's own samples


@dataclass(frozen=True)
class LimitOption:
    """A way to state a limit: ``budget.<name>`` in a search, ``--<name with dashes>`` in ``plan``."""

    name: str
    metric: str
    upper: bool  # the metric must be at most the bound (else at least)
    meaning: str
    quality: bool = False  # a quality limit: ``plan`` then looks for the fastest plan that meets it
    reference_ratio: bool = False  # the value is a multiple of the reference's figure, measured in the same run

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


LIMIT_OPTIONS: dict[str, LimitOption] = {
    option.name: option
    for option in (
        LimitOption("max_latency_ms", "latency_ms", True, "latency per batch call, ms"),
        LimitOption("max_nfe", "nfe", True, "unet evaluations per image"),
        LimitOption("max_memory_mb", "peak_memory_mb", True, "peak memory, MB"),
        LimitOption("max_bytes", "model_bytes", True, "the model's bytes"),
        LimitOption("max_fid", "fid", True, "FID", quality=True),
        LimitOption("max_fid_ratio", "fid", True, "FID as a multiple of the reference's", True, True),
        LimitOption("min_psnr", "psnr_vs_ode", False, "PSNR against the reference's ODE solution, dB", quality=True),
        LimitOption(
            "min_adherence", "adherence", False, "share of images read as their requested class, 0-1", quality=True
        ),
        LimitOption(
            "min_recall", "recall", False, "recall against the real images, 0-1 (the diversity kept)", quality=True
        ),
        LimitOption("min_pickscore", "pickscore", False, "PickScore: human preference for the prompt", quality=True),
    )
}


@dataclass(frozen=True)
class Limit:
    """One bound in force: ``metric <= bound`` (or ``>=`` for a lower bound), stated as ``option = value``."""

    option: str
    metric: str
    bound: float
    upper: bool = True
    stated: str = ""  # how the user stated it, when that differs from the bound (a ratio to the reference)
    ratio: float | None = None  # the multiple of the reference's figure, for a limit stated as one

    def fits(self, value: Any) -> bool:
        """A figure that was not measured (None, NaN) fits no limit."""
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        return value <= self.bound if self.upper else value >= self.bound

    def violation(self, value: float) -> float:
        """Signed distance past the bound (<= 0 when it fits): what optimizers that read constraints get."""
        return value - self.bound if self.upper else self.bound - value

    def miss(self, value: Any) -> float:
        """How far ``value`` is beyond the bound (0 when it fits, infinite when it was not measured)."""
        if self.fits(value):
            return 0.0
        if value is None or not math.isfinite(value) or not math.isfinite(self.bound):
            return math.inf
        return abs(self.violation(value))

    def describe(self) -> str:
        text = f"{self.metric} {'<=' if self.upper else '>='} {self.bound:.4g}"
        return f"{text} ({self.stated})" if self.stated else text


def resolve_limits(values: Mapping[str, Any], reference: Mapping[str, Any] | None) -> list[Limit]:
    """The limits stated in ``values`` (option name -> value or None), in ``LIMIT_OPTIONS`` order.

    A ratio to the reference becomes an absolute bound through the reference's figure (``reference``: the reference
    call's figures); before the reference is measured that bound is NaN, which nothing fits.
    """
    unknown = sorted(set(values) - set(LIMIT_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown limit(s) {unknown}; valid: {', '.join(LIMIT_OPTIONS)}")
    limits = []
    for name, option in LIMIT_OPTIONS.items():
        value = values.get(name)
        if value is None:
            continue
        check_limit_value(option, value)
        stated = ""
        bound = float(value)
        ratio = float(value) if option.reference_ratio else None
        if option.reference_ratio:
            figure = (reference or {}).get(option.metric)
            known = isinstance(figure, numbers.Real) and math.isfinite(figure)
            bound = bound * figure if known else math.nan
            shown = f"{figure:.4g}" if known else "not measured yet"
            stated = f"{value:g}x the reference's {option.metric} {shown}"
        limits.append(Limit(name, option.metric, bound, option.upper, stated, ratio))
    return limits


def limits_in_force(budget: Mapping[str, Any], reference: Mapping[str, Any] | None) -> list[Limit]:
    """The limits a configuration's ``budget`` section sets."""
    return resolve_limits({name: budget.get(name) for name in LIMIT_OPTIONS}, reference)


def check_limit_value(option: LimitOption, value: Any, as_flag: bool = False) -> None:
    """A bound is a finite number; upper bounds are positive (a negative one would select nothing)."""
    share = option.metric == "adherence"
    valid = "a number in [0, 1]" if share else "a finite number" + (" > 0" if option.upper else "")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or (option.upper and value <= 0) or (share and not 0 <= value <= 1):
        stated, unset = (f"{option.flag} {value}", "left out") if as_flag else (f"budget.{option.name}={value}", "null")
        raise ConfigError(f"{stated} is not valid; it must be {valid} ({option.meaning}), or {unset} for no limit")


def check_reference_ratios(values: Mapping[str, Any], quality_reference: str | None, flag: bool = False) -> None:
    """A ratio to the reference's FID needs FID measured against independent data: where the reference images are
    the reference call's own samples (``reference-samples``), the reference's FID is 0 by construction and no
    ratio selects a plan."""
    for name, option in LIMIT_OPTIONS.items():
        if option.reference_ratio and values.get(name) is not None and quality_reference == REFERENCE_SAMPLES:
            stated = option.flag if flag else f"budget.{name}"
            raise ConfigError(
                f"{stated}={values[name]} compares with the reference's {option.metric}, but this model's "
                f"{option.metric} is measured against the reference's own samples (0 for it by construction); "
                f"limit the absolute {option.metric} ({'--max-fid' if flag else 'budget.max_fid'}) or the fidelity to "
                f"the reference ({'--min-psnr' if flag else 'budget.min_psnr'}) instead"
            )


def describe_limits(limits: list[Limit]) -> str:
    return ", ".join(limit.describe() for limit in limits) or "none"


def within_limits(figures: Mapping[str, Any], limits: list[Limit]) -> bool:
    """Every limited figure was measured and meets its bound."""
    return all(limit.fits(figures.get(limit.metric)) for limit in limits)
