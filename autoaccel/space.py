"""Backend-neutral search spaces, loaded from ``search_spaces/*.yaml``.

A space names the techniques it searches, values it holds fixed, and ordered dimensions: ``int``, ``float``
(optionally ``log``), ``categorical``, and ``schedule`` (a per-step vector that expands into one float
dimension per step gap). A dimension may be conditional (``when: {other.param: [values]}``; the other
parameter must come earlier) and may need a capability of the target (``requires: guidance``). Optimizer
adapters translate these dimensions to their library; nothing here knows any optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from autoaccel.errors import ConfigError

DIMENSION_TYPES = ("int", "float", "categorical", "schedule")
TARGET_CAPABILITIES = ("guidance",)


@dataclass(frozen=True)
class Dimension:
    """One searched parameter. ``choices`` for categorical; ``low``/``high`` (inclusive) otherwise."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()
    requires: str | None = None

    def is_active(self, params: Mapping[str, Any]) -> bool:
        return all(params.get(other) in allowed for other, allowed in self.when)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    name: str
    techniques: tuple[str, ...]
    dimensions: tuple[Dimension, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def names(self) -> list[str]:
        return [dimension.name for dimension in self.dimensions]

    def dimension(self, name: str) -> Dimension:
        for dimension in self.dimensions:
            if dimension.name == name:
                return dimension
        raise KeyError(name)

    def for_target(self, capabilities: set[str]) -> SearchSpace:
        """Drops dimensions the target cannot use (and those conditioned on them)."""
        kept: list[Dimension] = []
        for dimension in self.dimensions:
            if dimension.requires and dimension.requires not in capabilities:
                continue
            if all(other in {kept_dimension.name for kept_dimension in kept} for other, _ in dimension.when):
                kept.append(dimension)
        return replace(self, dimensions=tuple(kept))

    def complete(self, searched: Mapping[str, Any]) -> dict[str, Any]:
        """The fixed values plus the searched ones, checked: active dimensions present and in range."""
        params = dict(self.fixed)
        for dimension in self.dimensions:
            if not dimension.is_active({**params, **searched}):
                continue
            if dimension.name not in searched:
                raise ConfigError(f"{self.source}: parameter {dimension.name!r} is missing from the candidate")
            value = searched[dimension.name]
            if not dimension.contains(value):
                raise ConfigError(f"{self.source}: {dimension.name}={value!r} is outside {describe(dimension)}")
            params[dimension.name] = value
        return params


def active_params(space: SearchSpace, values: Mapping[str, Any] | Callable[[Dimension], Any]) -> dict[str, Any]:
    """The searched values of the dimensions active given the fixed values and those chosen before them, in file
    order: what every optimizer must hand the loop. ``values`` is a full assignment (an optimizer that sees every
    dimension, conditional or not) or a function choosing each active dimension's value (optuna's define-by-run)."""
    pick = values if callable(values) else (lambda dimension: values[dimension.name])
    params: dict[str, Any] = dict(space.fixed)
    searched: dict[str, Any] = {}
    for dimension in space.dimensions:
        if dimension.is_active(params):
            params[dimension.name] = searched[dimension.name] = pick(dimension)
    return searched


def describe(dimension: Dimension) -> str:
    if dimension.kind == "categorical":
        return f"the choices {list(dimension.choices)}"
    return f"[{dimension.low}, {dimension.high}]" + (" (log scale)" if dimension.log else "")


def spaces_dir() -> Path:
    """The bundled space files: ``search_spaces/`` at the top of a checkout, or inside the installed package."""
    from autoaccel.resources import resource_dir

    return resource_dir("search_spaces")


def load_space(name_or_path: str) -> SearchSpace:
    """Loads a bundled space by name (``sampler``) or any YAML file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        path = candidate
    else:
        path = spaces_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(file.stem for file in spaces_dir().glob("*.yaml"))
            raise ConfigError(f"space={name_or_path!r} is not a bundled space or a YAML file; bundled: {known}")
    if not path.exists():
        raise ConfigError(f"space file {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    return parse_space(document, source=str(path))


def parse_space(document: Any, source: str = "<memory>") -> SearchSpace:
    from autoaccel.techniques.base import get_technique

    if not isinstance(document, dict):
        raise ConfigError(f"{source}: a space file must be a mapping with keys techniques, dimensions, fixed")
    unknown = sorted(map(str, set(document) - {"name", "description", "techniques", "dimensions", "fixed"}))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown}; valid: name, description, techniques, dimensions, fixed"
        )
    techniques = document.get("techniques")
    if not isinstance(techniques, list) or not techniques:
        raise ConfigError(f"{source}: 'techniques' must be a non-empty list of technique names")
    for technique_name in techniques:
        try:
            get_technique(str(technique_name))
        except ConfigError as error:
            raise ConfigError(f"{source}: techniques: {error}") from None
    raw_dimensions = document.get("dimensions") or {}
    if not isinstance(raw_dimensions, dict):
        raise ConfigError(f"{source}: 'dimensions' must be a mapping from parameter name to its definition")
    fixed = document.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: 'fixed' must be a mapping from parameter name to value")
    for key in list(fixed) + list(raw_dimensions):
        prefix = str(key).split(".", 1)[0]
        if "." not in str(key) or prefix not in techniques:
            raise ConfigError(
                f"{source}: parameter {key!r} must be named <technique>.<setting> with a technique from {techniques}"
            )
    dimensions: list[Dimension] = []
    for name, spec in raw_dimensions.items():
        dimensions.extend(_parse_dimension(str(name), spec, dimensions, source))
    return SearchSpace(
        name=str(document.get("name", Path(source).stem)),
        techniques=tuple(str(name) for name in techniques),
        dimensions=tuple(dimensions),
        fixed=dict(fixed),
        source=source,
    )


def _parse_dimension(name: str, spec: Any, earlier: list[Dimension], source: str) -> list[Dimension]:
    where = f"{source}: dimensions.{name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: must be a mapping with a 'type' ({', '.join(DIMENSION_TYPES)})")
    kind = spec["type"]
    if kind not in DIMENSION_TYPES:
        raise ConfigError(f"{where}.type={kind!r} is not valid; valid: {', '.join(DIMENSION_TYPES)}")
    allowed_keys = {"type", "low", "high", "log", "choices", "when", "requires", "count_from"}
    unknown = sorted(map(str, set(spec) - allowed_keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(allowed_keys)}")
    when = _parse_when(spec.get("when"), earlier, where)
    requires = spec.get("requires")
    if requires is not None and requires not in TARGET_CAPABILITIES:
        raise ConfigError(f"{where}.requires={requires!r} is not valid; valid: {list(TARGET_CAPABILITIES)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices must be a non-empty list")
        return [Dimension(name, kind, choices=tuple(choices), when=when, requires=requires)]
    low, high = spec.get("low"), spec.get("high")
    for label, bound in (("low", low), ("high", high)):
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not _finite(bound):
            raise ConfigError(f"{where}.{label}={bound!r} is not valid; it must be a finite number")
    if low > high:
        raise ConfigError(f"{where}: low={low} is above high={high}; need low <= high")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: log=true needs low > 0, got low={low}")
    if kind == "int":
        if int(low) != low or int(high) != high:
            raise ConfigError(f"{where}: an int dimension needs integer bounds, got low={low}, high={high}")
        return [Dimension(name, kind, int(low), int(high), log, when=when, requires=requires)]
    if kind == "float":
        return [Dimension(name, kind, float(low), float(high), log, when=when, requires=requires)]
    return _expand_schedule(name, spec, float(low), float(high), log, when, requires, earlier, where)


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an int beyond float range
        return False


def _parse_when(raw: Any, earlier: list[Dimension], where: str) -> tuple[tuple[str, tuple], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}.when must be a mapping {{earlier.param: [values]}}")
    earlier_names = {dimension.name: dimension for dimension in earlier}
    conditions = []
    for other, values in raw.items():
        if other not in earlier_names:
            raise ConfigError(
                f"{where}.when names {other!r}, which is not a dimension defined above it; "
                f"defined above: {sorted(earlier_names)}"
            )
        values = values if isinstance(values, list) else [values]
        for value in values:
            if not earlier_names[other].contains(value):
                raise ConfigError(
                    f"{where}.when: {other}={value!r} can never happen; {other} takes {describe(earlier_names[other])}"
                )
        conditions.append((other, tuple(values)))
    return tuple(conditions)


def _expand_schedule(name, spec, low, high, log, when, requires, earlier, where) -> list[Dimension]:
    """``name: {type: schedule, count_from: x.steps}`` -> ``name_0 .. name_{max-2}``, one per gap between steps.

    Gap i exists when the step count is at least i + 2, so an optimizer only sees the gaps it uses.
    """
    count_from = spec.get("count_from")
    counts = (
        {dimension.name: dimension for dimension in earlier}.get(count_from) if isinstance(count_from, str) else None
    )
    if counts is None or counts.kind != "int":
        raise ConfigError(f"{where}.count_from={count_from!r} must name an int dimension defined above it")
    if low <= 0:
        raise ConfigError(f"{where}: schedule gaps are relative step sizes and need low > 0, got low={low}")
    expanded = []
    for index in range(int(counts.high) - 1):
        active_counts = tuple(range(max(index + 2, int(counts.low)), int(counts.high) + 1))
        expanded.append(
            Dimension(
                f"{name}_{index}", "float", low, high, log, when=(*when, (count_from, active_counts)), requires=requires
            )
        )
    return expanded
