"""Multi-fidelity scoring: a candidate is scored on few samples first and promoted to more samples only if it
could still reach the front (asynchronous successive halving; optuna has no multi-objective pruning).

A candidate is promoted from one level to the next when its optimistic point (quality minus ``z`` times its
bootstrap standard deviation, costs as measured) is not dominated by any point already scored at that level.
Only candidates scored at the top level can be deployment plans: lower-level trials carry a ``fidelity``
constraint and so never reach the front, and every front point is a full-fidelity measurement.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from autoaccel.errors import ConfigError
from autoaccel.objectives import DIRECTIONS

QUALITY_STD = {"fid": "fid_std", "kid": "kid_std"}


@dataclass
class FidelityLadder:
    """Sample counts per level, ascending; ``populations`` holds the objective points seen at each level."""

    levels: list[int]
    objectives: list[str]
    z: float = 1.0
    populations: dict[int, list[list[float]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.levels or sorted(set(self.levels)) != list(self.levels) or self.levels[0] < 2:
            raise ConfigError(f"fidelity.levels={self.levels} is not valid; give increasing sample counts >= 2")
        if not self.z >= 0:
            raise ConfigError(f"fidelity.z={self.z} is not valid; it must be >= 0")

    @property
    def top(self) -> int:
        return self.levels[-1]

    def _point(self, metrics: dict[str, float], optimistic: bool) -> list[float]:
        point = []
        for name in self.objectives:
            value = metrics[name]
            sign = 1.0 if DIRECTIONS[name] == "minimize" else -1.0
            if optimistic and name in QUALITY_STD:
                value = value - sign * self.z * metrics.get(QUALITY_STD[name], 0.0)
            point.append(sign * value)
        return point

    def remember(self, level: int, metrics: dict[str, float]) -> None:
        self.populations.setdefault(level, []).append(self._point(metrics, optimistic=False))

    def promote_and_remember(self, level: int, metrics: dict[str, float]) -> bool:
        """``promotable`` then ``remember``, atomically: concurrent trials may reach a level together."""
        with self._lock:
            promote = self.promotable(level, metrics)
            self.remember(level, metrics)
            return promote

    def promotable(self, level: int, metrics: dict[str, float]) -> bool:
        """Could this candidate, given its interval, still be non-dominated at ``level``?"""
        candidate = self._point(metrics, optimistic=True)
        for other in list(self.populations.get(level, [])):
            if all(o <= c for o, c in zip(other, candidate)) and any(o < c for o, c in zip(other, candidate)):
                return False
        return True

    def next_level(self, level: int) -> int | None:
        index = self.levels.index(level)
        return self.levels[index + 1] if index + 1 < len(self.levels) else None
