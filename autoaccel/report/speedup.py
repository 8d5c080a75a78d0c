"""A plan's speed-up over the reference as the report states it: with the interval of its side-by-side rounds, a
tie where that interval holds 1 (the latencies cannot be told apart), and split into its algorithmic and runtime
factors where the plan has runtime settings.

The figures come from the latency confirmation (``autoaccel.search.confirm``): each front plan and the reference
were called once per round, in turn, so round i of each ran under the same load and their ratio is one paired
sample. The interval is the interquartile range of those per-round ratios (as ``bench runtime`` states its own). A
plan with runtime settings was timed in the same rounds without them: the reference's latency over that is the
algorithmic factor (steps, cache, student, pruning), and that over the plan's is the runtime factor (precision,
compilation, kernels); their product is the speed-up.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class SpeedUp:
    """The reference's latency over a plan's, with what the side-by-side rounds say about it."""

    value: float
    low: float | None = None  # interquartile range of the per-round ratios (None: not confirmed side by side)
    high: float | None = None
    algorithmic: float | None = None  # reference / the plan without its runtime settings
    runtime: float | None = None  # the plan without its runtime settings / the plan

    @property
    def tie(self) -> bool:
        """The rounds cannot tell the plan's latency from the reference's."""
        return self.low is not None and self.high is not None and self.low <= 1.0 <= self.high

    def text(self) -> str:
        """``3.2x [2.9, 3.5]``, with ``(a tie with the reference's latency)`` where the interval holds 1."""
        text = f"{self.value:.2f}x"
        if self.low is not None and self.high is not None:
            text += f" [{self.low:.3g}, {self.high:.3g}]"
        return text + (" (a tie with the reference's latency)" if self.tie else "")

    def split_text(self) -> str:
        """``1.6x algorithmic × 2.0x runtime``, or "" where the plan has no runtime settings timed apart."""
        if self.algorithmic is None or self.runtime is None:
            return ""
        return f"{self.algorithmic:.2f}x algorithmic × {self.runtime:.2f}x runtime"


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or number <= 0 else number


def plan_speedup(plan: pd.Series, reference: dict | None, confirmation: dict | None) -> SpeedUp | None:
    """``plan``'s speed-up over the reference (None where either latency was not measured), with the confirmation's
    per-round interval and the plan's algorithmic/runtime split where the confirmation timed them."""
    reference_ms, plan_ms = _number((reference or {}).get("latency_ms")), _number(plan.get("latency_ms"))
    if reference_ms is None or plan_ms is None:
        return None
    figure = ((confirmation or {}).get("structures") or {}).get(str(plan.get("cost_key")))
    timed_reference = (confirmation or {}).get("reference") or {}
    low = high = None
    if figure is not None:
        ratios = _round_ratios(timed_reference.get("latency_samples"), figure.get("latency_samples"))
        if len(ratios) > 1:
            low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    algorithmic_ms = _number(plan.get("algorithmic_latency_ms"))
    return SpeedUp(
        reference_ms / plan_ms,
        low,
        high,
        None if algorithmic_ms is None else reference_ms / algorithmic_ms,
        None if algorithmic_ms is None else algorithmic_ms / plan_ms,
    )


def _round_ratios(reference: list | None, plan: list | None) -> list[float]:
    """Round i's reference latency over round i's plan latency; a reference timed by one call (a call hundreds of
    steps long) is divided by every round of the plan."""
    reference, plan = list(reference or []), list(plan or [])
    if not reference or not plan:
        return []
    if len(reference) == 1:
        reference = reference * len(plan)
    return [base / own for base, own in zip(reference, plan) if own > 0]
