"""A candidate: plain parameter values with a stable identity, decoded into technique configs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

    def plan(self, techniques: tuple[str, ...]) -> list[tuple[Any, Any]]:
        """(technique, config) pairs in the order the techniques apply."""
        params = self.as_dict
        chosen = sorted((get_technique(name) for name in techniques), key=lambda technique: technique.order)
        return [(technique, technique.config_from_params(params)) for technique in chosen]


def apply_plan(pipeline, plan: list[tuple[Any, Any]], target) -> None:
    for technique, config in plan:
        technique.apply(pipeline, config, target)
