"""What the search itself cost, in device-hours, for the report to show beside the speed-up it found.

Every search process records the seconds it held its device (from the start of the command to the report, model
loading and the estimate included) and the device type (``autoaccel.search.ledger.record_search_run``); workers of
a shared study each record their own, so the figure is the sum over machines. Its parts come from the trials'
own records: the seconds each evaluation took (sampling, scoring, training and calibration, at every fidelity
level), of which its training minutes and compile seconds, and the reference's and the latency confirmation's
seconds each run recorded. Trials evaluated at once (``budget.concurrent``) overlap, so their sum may exceed the
runs' time. A study whose runs predate these records is given its trials' seconds alone, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from autoaccel.util.progress import duration

DEVICE_NAMES = {"cuda": "GPU", "cpu": "CPU", "mps": "GPU (MPS)", "xpu": "GPU (XPU)"}
COST_FILE = "search_cost.json"


def device_name(device: str) -> str:
    """What an hour on ``device`` (a torch device type) is called: GPU-hours on CUDA, CPU-hours on a CPU."""
    return DEVICE_NAMES.get(device, device.upper())


@dataclass(frozen=True)
class SearchCost:
    """Device seconds by device type (every search run's own time), and the parts they went to."""

    device_seconds: dict[str, float]
    runs: int
    parts: dict[str, float] = field(default_factory=dict)  # trials, of which training and compiling; reference, ...
    recorded: bool = True  # False: no run recorded its time (an older study): the trials' seconds stand in

    @property
    def seconds(self) -> float:
        return sum(self.device_seconds.values())

    def hours_text(self) -> str:
        """``0.42 GPU-hours`` (several device types: each, joined by +)."""
        return " + ".join(
            f"{seconds / 3600:.3g} {device_name(device)}-hours" for device, seconds in self.device_seconds.items()
        )

    def sentence(self) -> str:
        parts = ", ".join(f"{part} {duration(seconds)}" for part, seconds in self.parts.items() if seconds > 0)
        if not self.recorded:
            return f"at least {self.hours_text()}: the trials' own time ({parts}); its runs did not record theirs"
        runs = f"{self.runs} search run{'s' if self.runs != 1 else ''}"
        return f"{self.hours_text()} ({duration(self.seconds)} over {runs}; {parts})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_hours": {device_name(device): seconds / 3600 for device, seconds in self.device_seconds.items()},
            "seconds": self.seconds,
            "runs": self.runs,
            "recorded": self.recorded,
            "parts_seconds": dict(self.parts),
            "summary": self.sentence(),
        }


def search_cost(runs: list[dict[str, Any]], trials: pd.DataFrame, device: str) -> SearchCost:
    """The study's cost from its runs' records (``autoaccel.search.ledger.search_runs``) and its trials' rows
    (``Ledger.trials_frame``); ``device``: the device type of this run, for a study whose runs recorded nothing."""
    trial_seconds = _column_sum(trials, "seconds")
    parts = {
        "trials": trial_seconds,
        "of which training": _column_sum(trials, "train_minutes") * 60,
        "of which compiling": _column_sum(trials, "compile_seconds"),
    }
    for stage in ("reference", "confirmation"):
        parts[stage if stage == "reference" else "latency confirmation"] = sum(
            float((run.get("stages") or {}).get(stage, 0.0)) for run in runs
        )
    if not runs:
        return SearchCost({device: trial_seconds}, 0, parts, recorded=False)
    by_device: dict[str, float] = {}
    for run in runs:
        kind = str(run.get("device") or device)
        by_device[kind] = by_device.get(kind, 0.0) + float(run.get("seconds") or 0.0)
    return SearchCost(by_device, len(runs), parts)


def _column_sum(frame: pd.DataFrame, column: str) -> float:
    if frame.empty or column not in frame:
        return 0.0
    values = pd.to_numeric(frame[column], errors="coerce")
    total = float(values[values.notna()].sum())
    return total if math.isfinite(total) else 0.0


def best_speedup(recommendations) -> float | None:
    """The largest speed-up over the reference among the recommended plans (``Recommendation``), if any."""
    found = [item.speedup_vs_reference for item in recommendations if item.speedup_vs_reference is not None]
    return max(found) if found else None


def cost_beside_speedup(cost: SearchCost, speedup: float | None) -> str:
    """One line: what the search spent, and the speed-up it found for it."""
    found = f"; the fastest recommended plan is {speedup:.2f}x faster than the reference" if speedup else ""
    return f"The search spent {cost.hours_text()}{found}."
