"""A candidate: plain parameter values with a stable identity, decoded into technique configs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autoaccel.plan.steps import Plan
from autoaccel.techniques.base import get_technique


def to_plain(value: Any) -> Any:
    """numpy scalars, tuples and NaN as plain YAML/JSON values, so equal values hash and serialise equally."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return to_plain(value.item())
    if isinstance(value, float) and value != value:
        return None
    return value


@dataclass(frozen=True)
class Candidate:
    """Complete parameters (fixed + searched) of one point of a space."""

    params: tuple[tuple[str, Any], ...]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Candidate:
        return cls(tuple(sorted((key, to_plain(value)) for key, value in params.items())))

    @property
    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def key(self) -> str:
        """Stable short hash: the same parameters give the same key in any process."""
        return hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:12]

    def plan(self, techniques: tuple[str, ...]) -> Plan:
        """The plan these parameters decode to: each of ``techniques`` with its config."""
        params = self.as_dict
        chosen = sorted((get_technique(name) for name in techniques), key=lambda technique: technique.order)
        return Plan.of((technique, technique.config_from_params(params)) for technique in chosen)


def plan_cost(plan: Iterable[tuple[Any, Any]]) -> dict[str, dict[str, Any]]:
    """technique name -> the settings of its config that change deployment cost; a technique whose config
    leaves the deployment as it is (pruning ratio 0, quantization off) adds nothing, so such a plan shares the
    timing of the plain pipeline."""
    costs = {technique.name: to_plain(technique.cost_settings(config)) for technique, config in plan}
    return {name: settings for name, settings in costs.items() if settings}


def cost_key(measured: Mapping[str, Any], plan: Iterable[tuple[Any, Any]]) -> str:
    """The latency cache key: the measured structure (``measured``) and every applied technique's cost settings,
    as JSON with sorted keys, so the same plan gives the same key in any process."""
    return json.dumps(to_plain({**measured, "techniques": plan_cost(plan)}), sort_keys=True)
