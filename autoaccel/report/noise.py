"""How sure the comparisons of a report, its recommendations and ``plan`` are, and the ties that follow.

Every comparison they make is between figures scored on the same seeds: a plan's FID against a bound, against the
reference call's (a ratio), against a standard configuration's or another plan's (a difference). Their noise is
the paired bootstrap of ``autoaccel.metrics.bootstrap`` over the per-image features the run kept in its folder
(``autoaccel.measure.feature_store``); a difference whose interval covers 0, or a figure whose interval covers its
bound, is a tie, and a tie goes to the faster plan. Where a plan's features are not in the folder (a run from before
they were kept, a shared study's trial measured on another machine) its figures are compared as measured, and the
report says so.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from autoaccel.front.limits import REFERENCE_SAMPLES, Limit
from autoaccel.front.pareto import BudgetChoice, choose_within
from autoaccel.measure.feature_store import (
    FEATURES_DIR,
    HELD_OUT,
    ODE,
    REFERENCE_CALL,
    REFERENCE_SET,
    FeatureSet,
    FeatureStore,
    kind_set,
    plan_set,
)
from autoaccel.metrics.bootstrap import LEVEL, Interval, PairedBootstrap, fid

REPRODUCED = 1e-3  # a kept feature set whose FID differs from the recorded figure by more (relative) is another's


@dataclass
class Noise:
    """The paired bootstrap of one run's compared figures; ``bootstrap`` None where no intervals could be made
    (``reason`` says why)."""

    samples: int
    bootstrap: PairedBootstrap | None
    sets: dict[int, str] = field(default_factory=dict)  # trial number -> its set in the bootstrap
    missing: list[int] = field(default_factory=list)  # compared trials whose features this folder lacks
    paired_reference: bool = False  # FID is against the reference call's own images on the same seeds
    reference_count: int = 0  # images in the FID reference set
    reason: str = ""

    def _name(self, row: Mapping) -> str | None:
        """A row's set: a trial's, or the reference call's for the reference row (which has no trial number)."""
        if self.bootstrap is None:
            return None
        trial = _number(row.get("trial"))
        if trial is None:
            return REFERENCE_CALL if REFERENCE_CALL in self.bootstrap else None
        return self.sets.get(int(trial))

    def fid(self, row: Mapping) -> Interval | None:
        name = self._name(row)
        return None if name is None else self.bootstrap.interval(name)

    def ratio(self, row: Mapping) -> Interval | None:
        """The row's FID over the reference call's, where both are scored against independent data."""
        name = self._name(row)
        if name is None or self.paired_reference or REFERENCE_CALL not in self.bootstrap:
            return None
        interval = self.bootstrap.ratio(name, REFERENCE_CALL)
        return None if math.isnan(interval.value) else interval

    def difference(self, row: Mapping, other: Mapping) -> Interval | None:
        """The row's FID minus the other's, paired on the seeds."""
        name, other_name = self._name(row), self._name(other)
        if name is None or other_name is None:
            return None
        return self.bootstrap.difference(name, other_name)

    def bound(self, row: Mapping, limit: Limit) -> tuple[Interval, float, str] | None:
        """(the row's interval of the figure ``limit`` bounds, the bound in that figure's terms, its name) for the
        limits an interval applies to (FID, FID ratio to the reference); None for the others."""
        if limit.option == "max_fid":
            interval = self.fid(row)
            return None if interval is None else (interval, limit.bound, "FID")
        if limit.option == "max_fid_ratio" and limit.ratio is not None:
            interval = self.ratio(row)
            return None if interval is None else (interval, limit.ratio, "FID ratio")
        return None

    def ties_bound(self, row: Mapping, limit: Limit) -> bool:
        found = self.bound(row, limit)
        return found is not None and found[0].covers(found[1])

    def floor(self) -> Interval | None:
        """The held-out real images' FID against the reference set: a perfect sampler's."""
        if self.bootstrap is None or HELD_OUT not in self.bootstrap:
            return None
        return self.bootstrap.interval(HELD_OUT)

    def ode_gap(self) -> Interval | None:
        """Where FID is against the reference call's own images: the exact ODE solution's FID against them."""
        if self.bootstrap is None or ODE not in self.bootstrap or not self.paired_reference:
            return None
        return self.bootstrap.interval(ODE)

    def cannot_tell_apart(self, front: pd.DataFrame) -> bool:
        """Two or more front plans, each with an interval, every one of them a tie in FID with the best."""
        rows = [row for _, row in front.iterrows() if self._name(row) is not None]
        if len(rows) < 2 or len(rows) < len(front):
            return False
        best = min(rows, key=lambda row: self.bootstrap.point[self._name(row)])
        return all(self.difference(row, best).covers(0.0) for row in rows)

    def method(self) -> str:
        """How the intervals were made, in a sentence."""
        if self.bootstrap is None:
            return f"no paired intervals: {self.reason}"
        reference = (
            "resampling the reference call's images with the same seed indices"
            if self.paired_reference
            else f"the {self.reference_count:,} images of the FID reference set drawn on their own"
        )
        text = (
            f"{LEVEL:.0%} intervals from {self.bootstrap.rounds} paired bootstrap rounds over the {self.samples} seeds "
            f"(each round draws seed indices once, for every plan and the reference call alike; {reference}); a "
            "difference whose interval covers 0, or a figure whose interval covers its bound, is a tie, and a tie goes "
            "to the faster plan"
        )
        if self.missing:
            trials = ", ".join(str(number) for number in sorted(self.missing))
            text += (
                f". Trial(s) {trials} are compared on their figures alone: their image features are not in this run "
                "folder (measured before autoaccel kept them, or by a worker on another machine)"
            )
        return text


def cannot_tell_sentence(samples: int, real_data: bool) -> str:
    remedy = "raise `quality.samples`" + ("" if real_data else " or give `target.data`")
    return f"at {samples} samples this search cannot tell these plans apart: {remedy}"


def run_noise(
    run_dir: Path,
    rows: Iterable[pd.DataFrame],
    reference_row: Mapping | None,
    quality_reference: str | None,
    quality: str = "fid",
) -> Noise | None:
    """The paired bootstrap of the trials in ``rows`` (front, standard configurations) and the reference call
    (``reference_row``: its figures), from the features in ``run_dir``; None where quality is not FID (no interval
    applies)."""
    if quality != "fid":
        return None
    reference_row = reference_row or {}
    frames = [frame for frame in rows if not frame.empty]
    samples = _run_samples(reference_row, frames)
    paired_reference = quality_reference == REFERENCE_SAMPLES
    if samples is None:
        return Noise(0, None, paired_reference=paired_reference, reason="no trial was scored")
    store = FeatureStore(Path(run_dir) / FEATURES_DIR)
    call = store.get(kind_set(REFERENCE_CALL, samples))
    reference = call if paired_reference else store.get(kind_set(REFERENCE_SET, samples))
    if reference is None or call is None and paired_reference:
        return Noise(
            samples,
            None,
            missing=sorted(_trials(frames)),
            paired_reference=paired_reference,
            reason=f"the FID reference set's features are not in {Path(run_dir) / FEATURES_DIR} (a run from before "
            "autoaccel kept them; rebuild the report on the machine that ran the search)",
        )
    paired: dict[str, np.ndarray] = {}
    sets: dict[int, str] = {}
    base = call or reference
    if not paired_reference and call is not None and _reproduces(call, reference, reference_row.get("fid"), base):
        paired[REFERENCE_CALL] = call.features.numpy()
    for frame in frames:
        for _, row in frame.iterrows():
            trial, key = _number(row.get("trial")), row.get("candidate_key")
            if trial is None or not isinstance(key, str) or _number(row.get("quality_samples")) != samples:
                continue
            kept = store.get(plan_set(key, samples))
            if kept is not None and _reproduces(kept, reference, row.get("fid"), base):
                name = plan_set(key, samples)
                paired[name] = kept.features.numpy()
                sets[int(trial)] = name
    ode = store.get(kind_set(ODE, samples))
    if paired_reference and ode is not None and ode.matches(base):
        paired[ODE] = ode.features.numpy()
    held_out = store.get(kind_set(HELD_OUT, samples))
    unpaired = {}
    if not paired_reference and held_out is not None and _same_extractor(held_out, reference):
        unpaired[HELD_OUT] = held_out.features.numpy()
    bootstrap = PairedBootstrap(paired, reference.features.numpy(), paired_reference, unpaired=unpaired)
    missing = sorted(_trials(frames) - set(sets))
    return Noise(samples, bootstrap, sets, missing, paired_reference, len(reference.features))


def _run_samples(reference_row: Mapping, frames: list[pd.DataFrame]) -> int | None:
    """The run's full sample count: the reference call's, else the most any compared trial was scored on."""
    counted = _number(reference_row.get("quality_samples"))
    if counted is not None:
        return int(counted)
    counts = [
        int(value)
        for frame in frames
        if "quality_samples" in frame
        for value in frame["quality_samples"]
        if _number(value) is not None
    ]
    return max(counts) if counts else None


def _trials(frames: list[pd.DataFrame]) -> set[int]:
    numbers_ = [trial for frame in frames if "trial" in frame for trial in frame["trial"]]
    return {int(trial) for trial in numbers_ if _number(trial) is not None}


def _same_extractor(kept: FeatureSet, other: FeatureSet) -> bool:
    return (kept.extractor, kept.seed) == (other.extractor, other.seed)


def _reproduces(kept: FeatureSet, reference: FeatureSet, recorded, base: FeatureSet) -> bool:
    """The kept features were measured like the others (extractor, seeds) and give the FID the ledger recorded for
    them (a reference set changed since, or a hand-edited figure, would make the interval another figure's)."""
    if not kept.matches(base) or not _same_extractor(kept, reference):
        return False
    figure = _number(recorded)
    if figure is None:
        return False
    measured = fid(kept.features.numpy(), reference.features.numpy())
    return abs(measured - figure) <= REPRODUCED * max(1.0, abs(figure))


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def choose_with_noise(front: pd.DataFrame, limits: list[Limit], optimize: str, noise: Noise | None) -> BudgetChoice:
    """``choose_within`` where the data cannot tell a plan from a bound or from the best plan: a plan whose
    interval covers a bound counts as meeting it, and of plans whose FID cannot be told from the best one's the
    faster is chosen; each such tie is said in ``ties``. Without intervals, the plain choice."""
    strict = choose_within(front, limits, optimize)
    if noise is None or noise.bootstrap is None or front.empty:
        return strict
    records = front.to_dict("records")
    eligible = np.array(
        [
            all(limit.fits(record.get(limit.metric)) or noise.ties_bound(record, limit) for limit in limits)
            for record in records
        ],
        dtype=bool,
    )
    if not eligible.any():
        return strict
    row = choose_within(front[eligible], [], optimize).row
    ties: list[str] = []
    at = f"at {noise.samples} samples"
    if optimize == "fid" and "latency_ms" in front:
        tied = [
            other
            for _, other in front[eligible].iterrows()
            if (difference := noise.difference(other, row)) is not None and difference.covers(0.0)
        ]
        fastest = min(tied, key=lambda other: float(other["latency_ms"]), default=row)
        if int(fastest["trial"]) != int(row["trial"]):
            difference = noise.difference(fastest, row)
            ties.append(
                f"tie: its FID {float(fastest['fid']):.4g} cannot be told from trial {int(row['trial'])}'s "
                f"{float(row['fid']):.4g} {at} (difference {difference.text(signed=True)}); chosen as the faster"
            )
            row = fastest
    for limit in limits:
        found = noise.bound(row, limit)
        if found is None or not found[0].covers(found[1]):
            continue
        interval, bound, figure = found
        text = f"tie: its {figure} {interval.text()} cannot be told from {bound:.4g} {at}"
        if not limit.fits(row.get(limit.metric)):
            if strict.row is not None:
                text += f"; chosen as the faster (trial {int(strict.row['trial'])} meets it by its figure)"
            else:
                text += "; chosen as the faster (no plan meets it by its figure)"
        ties.append(text)
    return BudgetChoice(row, None, {}, tuple(ties))


def difference_text(noise: Noise | None, row: Mapping, other: Mapping) -> str:
    """``; difference +1.2 [0.4, 2.1]`` or ``; difference +0.3 [-0.2, 0.8], a tie at 512 samples``, or ''."""
    difference = None if noise is None else noise.difference(row, other)
    if difference is None:
        return ""
    tie = f", a tie at {noise.samples} samples" if difference.covers(0.0) else ""
    return f"; difference {difference.text(signed=True)}{tie}"


INTERVAL_COLUMNS = ["fid_lo", "fid_hi", "fid_ratio", "fid_ratio_lo", "fid_ratio_hi"]


def with_intervals(frame: pd.DataFrame, noise: Noise | None) -> pd.DataFrame:
    """``frame`` with each compared trial's FID interval and FID ratio to the reference call (with its interval)
    in ``INTERVAL_COLUMNS``; NaN where a trial has none."""
    frame = frame.copy()
    values = {column: [] for column in INTERVAL_COLUMNS}
    for _, row in frame.iterrows():
        fid_interval = None if noise is None or "trial" not in row else noise.fid(row)
        ratio = None if noise is None or "trial" not in row else noise.ratio(row)
        values["fid_lo"].append(math.nan if fid_interval is None else fid_interval.lo)
        values["fid_hi"].append(math.nan if fid_interval is None else fid_interval.hi)
        values["fid_ratio"].append(math.nan if ratio is None else ratio.value)
        values["fid_ratio_lo"].append(math.nan if ratio is None else ratio.lo)
        values["fid_ratio_hi"].append(math.nan if ratio is None else ratio.hi)
    for column, column_values in values.items():
        frame[column] = column_values
    return frame


def reference_gap_sentence(noise: Noise | None, stochastic: bool, reference: str) -> str:
    """Where FID is against the reference call's own images: what the exact ODE solution scores against them, and
    (for an ancestral reference call) that this distance is part of every deterministic plan's figure, not noise."""
    gap = None if noise is None else noise.ode_gap()
    if gap is None:
        return ""
    text = (
        f"The many-step ODE solution from the same noise (the one psnr_vs_ode compares with) scores FID {gap.text()} "
        "against the reference call's images"
    )
    if stochastic:
        text += (
            f": the reference call ({reference}) adds fresh noise at every step, so no deterministic plan can "
            "reproduce its images from the same noise. That distance between the ODE's distribution and the "
            "ancestral sampler's is part of every deterministic plan's FID, not sampling noise; differences between "
            "plans are judged by their paired intervals."
        )
    else:
        text += ": the FID a plan that solves the ODE exactly would show here."
    return text
