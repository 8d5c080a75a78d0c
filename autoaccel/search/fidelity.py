"""Multi-fidelity scoring: a candidate is scored on few samples first and promoted to more samples only if it
could still reach the front (asynchronous successive halving; optuna has no multi-objective pruning).

Every candidate is scored on the same seeds at a level (common random numbers), so two candidates' figures at
one level differ by far less noise than two independent FIDs: the sampling noise both share cancels. The
default rule (``paired``) therefore compares a candidate with the points already scored at its level directly,
and stops it only when one of them beats it by more than ``z`` times the paired error of that level: the
spread, over candidates that reached the top level, of how far their figures moved between this level and the
top (times sqrt 2, since two candidates' errors add). Until three candidates have climbed there is no
estimate and every candidate is promoted. ``z=0`` (the default) takes the level's figures as measured; larger
values promote more candidates (reports/bench/optimizers.md, part (c), measures both). The older ``interval``
rule stops a candidate only when even its optimistic point (quality minus ``z`` bootstrap standard deviations)
is dominated; the bootstrap deviation includes the noise common seeds cancel, so it promotes most candidates
at low sample counts.

With ``train_shares`` (one per level, the last 1) iterations are a fidelity too: at a lower level a candidate's
training techniques do that share of their training (``Technique.train_share_param``) and keep a checkpoint the
next level continues from, so a candidate that cannot reach the front never pays for its full training.

Only candidates scored at the top level can be deployment plans: lower-level trials carry a ``fidelity``
constraint and so never reach the front, and every front point is a full-fidelity measurement.
"""

from __future__ import annotations

import math
import statistics
import threading
from dataclasses import dataclass, field

from autoaccel.errors import ConfigError
from autoaccel.front.objectives import DIRECTIONS
from autoaccel.front.pareto import dominates
from autoaccel.plan.candidate import Candidate
from autoaccel.techniques.base import get_technique

QUALITY_STD = {"fid": "fid_std", "kid": "kid_std"}
RULES = ("paired", "interval")
MIN_CLIMBS = 3  # candidates scored at a level and at the top before that level's paired error is trusted


@dataclass
class FidelityLadder:
    """Sample counts per level, ascending; ``populations`` holds the objective points seen at each level and
    ``climbs`` each level's (point there, point at the top) for candidates that reached the top."""

    levels: list[int]
    objectives: list[str]
    z: float = 0.0
    rule: str = "paired"
    train_shares: list[float] = field(default_factory=list)
    populations: dict[int, list[list[float]]] = field(default_factory=dict)
    climbs: dict[int, list[tuple[list[float], list[float]]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _last: tuple[int, list[float]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.levels or sorted(set(self.levels)) != list(self.levels) or self.levels[0] < 2:
            raise ConfigError(f"fidelity.levels={self.levels} is not valid; give increasing sample counts >= 2")
        if not self.z >= 0:
            raise ConfigError(f"fidelity.z={self.z} is not valid; it must be >= 0")
        if self.rule not in RULES:
            raise ConfigError(f"fidelity rule {self.rule!r} is not valid; choose one of {list(RULES)}")

    @property
    def top(self) -> int:
        return self.levels[-1]

    def _point(self, metrics: dict[str, float], optimistic: bool = False) -> list[float]:
        """Objective values signed so that lower is better (optimistic: quality less ``z`` bootstrap stds)."""
        point = []
        for name in self.objectives:
            value = metrics[name]
            sign = 1.0 if DIRECTIONS[name] == "minimize" else -1.0
            if optimistic and name in QUALITY_STD:
                value = value - sign * self.z * metrics.get(QUALITY_STD[name], 0.0)
            point.append(sign * value)
        return point

    def remember(self, level: int, metrics: dict[str, float], below: dict[int, dict[str, float]] | None = None) -> None:
        """Adds a scored point to its level. ``below``: the same candidate's figures at lower levels; without
        it (a study's history replayed in order, each trial's levels ascending) a top-level point is paired
        with the point remembered just before it when that one was one level lower."""
        point = self._point(metrics)
        self.populations.setdefault(level, []).append(point)
        if level == self.top and len(self.levels) > 1:
            lower = {low: self._point(figures) for low, figures in (below or {}).items() if low != level}
            if below is None and self._last is not None and self._last[0] == self.levels[-2]:
                lower = {self._last[0]: self._last[1]}
            for low, low_point in lower.items():
                self.climbs.setdefault(low, []).append((low_point, point))
        self._last = (level, point)

    def promote_and_remember(
        self, level: int, metrics: dict[str, float], below: dict[int, dict[str, float]] | None = None
    ) -> bool:
        """``promotable`` then ``remember``, atomically: concurrent trials may reach a level together."""
        with self._lock:
            promote = self.promotable(level, metrics)
            self.remember(level, metrics, below if below is not None else {})
            return promote

    def promotable(self, level: int, metrics: dict[str, float]) -> bool:
        """Could this candidate still be non-dominated at ``level``, given how far that level can mislead?"""
        if self.rule == "interval":
            return not self._dominated(level, self._point(metrics, optimistic=True), [0.0] * len(self.objectives))
        margins = self.paired_margins(level)
        return margins is None or not self._dominated(level, self._point(metrics), margins)

    def paired_margins(self, level: int) -> list[float] | None:
        """Per objective, ``z`` times the paired error at ``level`` (0 at the top, whose figures are the ones
        plans are judged on); None while too few candidates have climbed from it to tell."""
        if level == self.top:
            return [0.0] * len(self.objectives)
        climbs = self.climbs.get(level, [])
        if len(climbs) < MIN_CLIMBS:
            return None
        margins = []
        for index in range(len(self.objectives)):
            shifts = [high[index] - low[index] for low, high in climbs]
            margins.append(self.z * math.sqrt(2) * statistics.stdev(shifts))
        return margins

    def _dominated(self, level: int, candidate: list[float], margins: list[float]) -> bool:
        """Does a point at ``level`` beat ``candidate`` by at least ``margins`` everywhere and strictly somewhere?"""
        population = self.populations.get(level, [])
        shifted = [[value + margin for value, margin in zip(other, margins)] for other in population]
        return any(dominates(other, candidate) for other in shifted)

    def candidate_at(self, candidate: Candidate, level: int) -> Candidate:
        """``candidate`` as scored at ``level``: its training techniques set to that level's share."""
        if not self.train_shares:
            return candidate
        return with_train_share(candidate, float(self.train_shares[self.levels.index(level)]))

    def next_level(self, level: int) -> int | None:
        index = self.levels.index(level)
        return self.levels[index + 1] if index + 1 < len(self.levels) else None


def with_train_share(candidate: Candidate, share: float) -> Candidate:
    """``candidate`` with every technique in it that trains set to do ``share`` of its training."""
    if share >= 1.0:
        return candidate
    params = candidate.as_dict
    changed = dict(params)
    for name in {key.split(".", 1)[0] for key in params}:
        technique = get_technique(name)
        if technique.train_share_param is not None:
            changed[f"{name}.{technique.train_share_param}"] = share
    return candidate if changed == params else Candidate.from_params(changed)
