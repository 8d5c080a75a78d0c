"""Backend-neutral search spaces, loaded from ``search_spaces/*.yaml``.

A space names the techniques it searches, values it holds fixed, and ordered dimensions: ``int``, ``float``
(optionally ``log``), ``categorical``, and ``schedule`` (a per-step vector that expands into one float
dimension per step gap). A dimension may be conditional (``when: {other.param: [values]}``; the other
parameter must come earlier) and may need a capability of the target (``requires: guidance``; ``distillation``,
``lora``: ``Target.capabilities``). Optimizer
adapters translate these dimensions to their library; nothing here knows any optimizer.

Every key and value is checked when the file loads, against what each technique declares (``Technique.params``),
and against size limits checked before anything is expanded, so a small file cannot exhaust memory.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from autoaccel.errors import ConfigError
from autoaccel.space.combinations import check_combinations
from autoaccel.techniques.base import ParamSpec, Technique, get_technique, registered_techniques
from autoaccel.util.resources import resource_dir

DIMENSION_TYPES = ("int", "float", "categorical", "schedule")
TARGET_CAPABILITIES = ("guidance", "distillation", "lora")  # what Target.capabilities may hold
SCALAR_TYPES = (str, int, float, bool, type(None))

# Generous for real spaces (the bundled ones are about 3 KB with at most 33 dimensions), small enough that no
# file can exhaust memory or bloat a ledger. The step count itself is capped by the timesteps technique.
MAX_FILE_BYTES = 256 * 1024
MAX_DIMENSIONS = 2000  # after schedules are expanded
MAX_CHOICES = 256  # per categorical dimension, and values per ``when`` condition
MAX_TOTAL_CHOICES = 4096  # over all categorical dimensions
MAX_TEXT = 2000  # characters in any string (name, description, a choice, a fixed value)

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 60, 60


def _show(value: Any) -> str:
    """A short repr for error messages: a bad value may be a huge or deeply aliased structure."""
    try:
        return _SHOWN.repr(value)
    except (ValueError, RecursionError):  # e.g. an int with more digits than Python will print
        return f"<a {type(value).__name__}>"


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

    def for_target(self, capabilities: set[str], **target_limits: int | tuple) -> SearchSpace:
        """Drops dimensions the target cannot use (and those conditioned on them), and checks the settings a
        target bounds (``num_train_timesteps=1000``: no more steps than the model was trained with)."""
        kept: list[Dimension] = []
        for dimension in self.dimensions:
            if dimension.requires and dimension.requires not in capabilities:
                continue
            if all(other in {kept_dimension.name for kept_dimension in kept} for other, _ in dimension.when):
                kept.append(dimension)
        reduced = replace(self, dimensions=tuple(_narrowed(dimension, target_limits) for dimension in kept))
        for limit_name, limit in target_limits.items():
            reduced._check_target_limit(limit_name, limit)
        return reduced

    def _check_target_limit(self, limit_name: str, limit: int | tuple) -> None:
        """Raises ConfigError naming the key if a value may exceed what the target allows for its setting (or,
        for a limit that lists choices, is not among them)."""
        if isinstance(limit, tuple):
            for key, value in self.fixed.items():
                spec = _declared_spec(key)
                if spec is not None and spec.target_limit == limit_name and value not in limit:
                    raise ConfigError(
                        f"{self.source}: fixed.{key}={value!r} is not one this target takes; valid: {list(limit)}"
                    )
            return
        highest = {f"fixed.{key}": (key, value) for key, value in self.fixed.items()}
        for dimension in self.dimensions:
            numbers = [choice for choice in dimension.choices if _is_number(choice)]
            top = dimension.high if dimension.kind != "categorical" else max(numbers, default=None)
            label = "high" if dimension.kind != "categorical" else "choices"
            highest[f"dimensions.{dimension.name}.{label}"] = (dimension.name, top)
        for where, (key, value) in highest.items():
            spec = _declared_spec(key)
            if spec is None or spec.target_limit != limit_name or not _is_number(value) or value <= limit:
                continue
            narrowed = replace(spec, high=limit if spec.high is None else min(spec.high, limit))
            raise ConfigError(
                f"{self.source}: {where}={value} is beyond this target's {limit_name}={limit}; "
                f"{key} takes {narrowed.describe()} for it"
            )

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
    return resource_dir("search_spaces")


def bundled_spaces() -> list[str]:
    return sorted(file.stem for file in spaces_dir().glob("*.yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    """Loads a bundled space by name (``sampler``) or any YAML file by path."""
    path = _resolve_space(name_or_path)
    return parse_space(_read_document(path), source=str(path))


def _resolve_space(name_or_path: str) -> Path:
    valid = f"valid: a bundled space {bundled_spaces()} or the path of a YAML file"
    if not str(name_or_path).strip():
        raise ConfigError(f"space={name_or_path!r} is empty; {valid}")
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        path = candidate
    else:
        path = spaces_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"space={name_or_path!r} is not a bundled space or a YAML file; bundled: {bundled_spaces()}"
            )
    if not path.exists():
        raise ConfigError(f"space file {path} does not exist; {valid}")
    if path.is_dir():
        raise ConfigError(f"space={name_or_path!r} is a directory; {valid}")
    if not path.is_file():
        raise ConfigError(f"space={name_or_path!r} is not a regular file; {valid}")
    return path


def _read_document(path: Path) -> Any:
    """The parsed YAML, after checking the file's size: nothing larger than MAX_FILE_BYTES is read."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size} bytes is more than a space file may have ({MAX_FILE_BYTES} bytes)")
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from error
    except (ValueError, RecursionError) as error:  # an int of thousands of digits; nesting deeper than Python's stack
        raise ConfigError(f"{path}: not valid YAML: {_show(' '.join(str(error).split()))}") from error


def parse_space(document: Any, source: str = "<memory>") -> SearchSpace:
    """A checked SearchSpace: every key names a declared setting of a listed technique, every value (fixed,
    choice, bound) is one that setting accepts, and the space is within the size limits."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: a space file must be a mapping with keys techniques, dimensions, fixed")
    unknown = sorted(map(_show, set(document) - {"name", "description", "techniques", "dimensions", "fixed"}))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) [{', '.join(unknown)}]; valid: name, description, techniques, dimensions, fixed"
        )
    techniques = _parse_techniques(document.get("techniques"), source)
    name = _parse_text(document.get("name", Path(source).stem), f"{source}: name")
    _parse_text(document.get("description"), f"{source}: description")
    raw_dimensions = document.get("dimensions") or {}
    if not isinstance(raw_dimensions, dict):
        raise ConfigError(f"{source}: 'dimensions' must be a mapping from parameter name to its definition")
    fixed = document.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: 'fixed' must be a mapping from parameter name to value")
    for key in list(fixed) + list(raw_dimensions):
        _technique_of(key, techniques, source)
    for key, value in fixed.items():
        _check_fixed(key, value, techniques, source)
    dimensions: list[Dimension] = []
    for key, spec in raw_dimensions.items():
        if len(dimensions) >= MAX_DIMENSIONS:
            raise ConfigError(f"{source}: dimensions.{key}: the space already has the most it may ({MAX_DIMENSIONS})")
        dimensions.extend(_parse_dimension(key, spec, dimensions, techniques, source))
    _check_totals(dimensions, source)
    check_combinations(techniques, tuple(dimensions), fixed, source)
    return SearchSpace(
        name=name,
        techniques=techniques,
        dimensions=tuple(dimensions),
        fixed=dict(fixed),
        source=source,
    )


def _parse_techniques(raw: Any, source: str) -> tuple[str, ...]:

    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: 'techniques' must be a non-empty list of technique names")
    known = ", ".join(sorted(technique.name for technique in registered_techniques()))
    for position, technique_name in enumerate(raw):
        if not isinstance(technique_name, str):
            raise ConfigError(f"{source}: techniques: {_show(technique_name)} is not a technique name; known: {known}")
        try:
            get_technique(technique_name)
        except ConfigError as error:
            raise ConfigError(f"{source}: techniques: {error}") from None
        if technique_name in raw[:position]:
            raise ConfigError(f"{source}: techniques: {technique_name!r} is listed twice; list each once")
    return tuple(raw)


def _parse_text(value: Any, where: str) -> str:
    """A name or description: a string (or a plain scalar, written as text) of at most MAX_TEXT characters."""
    text = value if isinstance(value, str) else _show(value) if isinstance(value, SCALAR_TYPES) else None
    if text is None or len(text) > MAX_TEXT:
        raise ConfigError(f"{where}={_show(value)} is not valid; it must be a string of at most {MAX_TEXT} characters")
    return text


def _technique_of(key: Any, techniques: tuple[str, ...], source: str) -> Technique:

    prefix, dot, setting = key.partition(".") if isinstance(key, str) else ("", "", "")
    if not dot or not setting or prefix not in techniques:
        raise ConfigError(
            f"{source}: parameter {_show(key)} must be named <technique>.<setting> with a technique from "
            f"{list(techniques)}"
        )
    return get_technique(prefix)


def _setting_spec(key: str, techniques: tuple[str, ...], where: str, source: str) -> ParamSpec:
    """The declared spec of ``key``; a ConfigError listing the technique's settings if it has none such."""
    technique = _technique_of(key, techniques, source)
    spec = technique.param_spec(key.split(".", 1)[1])
    if spec is None:
        raise ConfigError(
            f"{where}: {key!r} is not a setting of {technique.name}; valid: {technique.describe_params()}"
        )
    return spec


def _narrowed(dimension: Dimension, target_limits: Mapping[str, int | tuple]) -> Dimension:
    """``dimension`` cut to the target's limit where its setting says a shared space narrows to each model
    (``ParamSpec.narrows_to_target``: a UNet's levels, a transformer's blocks); other dimensions as they are."""
    spec = _declared_spec(dimension.name)
    if spec is None or not spec.narrows_to_target or spec.target_limit not in target_limits:
        return dimension
    limit = target_limits[spec.target_limit]
    if isinstance(limit, tuple):  # the choices this model takes (``Target.cache_methods``)
        kept = tuple(choice for choice in dimension.choices if choice in limit)
        return replace(dimension, choices=kept) if kept else dimension
    if dimension.kind == "categorical":
        kept = tuple(choice for choice in dimension.choices if not _is_number(choice) or choice <= limit)
        return replace(dimension, choices=kept) if kept else dimension
    if dimension.low is not None and dimension.low <= limit < dimension.high:
        return replace(dimension, high=limit)
    return dimension


def _declared_spec(key: str) -> ParamSpec | None:
    """The spec a technique declares for ``key``, or None (an unknown technique or setting)."""
    prefix, _, setting = key.partition(".")
    try:
        return get_technique(prefix).param_spec(setting)
    except ConfigError:
        return None


def _check_fixed(key: str, value: Any, techniques: tuple[str, ...], source: str) -> None:
    where = f"{source}: fixed.{key}"
    spec = _setting_spec(key, techniques, where, source)
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ConfigError(f"{where}={_show(value)} is not valid; strings have at most {MAX_TEXT} characters")
    if not spec.accepts(value):
        raise ConfigError(f"{where}={_show(value)} is not valid; {key} takes {spec.describe()}")


def _check_totals(dimensions: list[Dimension], source: str) -> None:
    """Each parameter defined once (a schedule's ``gap_3`` counts), and at most MAX_TOTAL_CHOICES choices in all."""
    seen: set[str] = set()
    for dimension in dimensions:
        if dimension.name in seen:
            raise ConfigError(f"{source}: dimensions.{dimension.name} is defined twice; define each parameter once")
        seen.add(dimension.name)
    total = sum(len(dimension.choices) for dimension in dimensions)
    if total > MAX_TOTAL_CHOICES:
        raise ConfigError(
            f"{source}: dimensions: {total} categorical choices in all; a space may have at most {MAX_TOTAL_CHOICES}"
        )


def _parse_dimension(
    key: Any, spec: Any, earlier: list[Dimension], techniques: tuple[str, ...], source: str
) -> list[Dimension]:
    name = str(key)
    where = f"{source}: dimensions.{name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: must be a mapping with a 'type' ({', '.join(DIMENSION_TYPES)})")
    kind = spec["type"]
    if kind not in DIMENSION_TYPES:
        raise ConfigError(f"{where}.type={_show(kind)} is not valid; valid: {', '.join(DIMENSION_TYPES)}")
    allowed_keys = {"type", "low", "high", "log", "choices", "when", "requires", "count_from"}
    unknown = sorted(map(_show, set(spec) - allowed_keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) [{', '.join(unknown)}]; valid: {sorted(allowed_keys)}")
    if kind == "schedule":
        setting, setting_spec = _schedule_setting(name, techniques, where, source)
    else:
        setting, setting_spec = name, _plain_setting_spec(name, techniques, where, source)
    when = _parse_when(spec.get("when"), earlier, where)
    requires = spec.get("requires")
    if requires is not None and requires not in TARGET_CAPABILITIES:
        raise ConfigError(f"{where}.requires={_show(requires)} is not valid; valid: {list(TARGET_CAPABILITIES)}")
    if kind == "categorical":
        dimension = Dimension(
            name, kind, choices=_parse_choices(spec.get("choices"), where), when=when, requires=requires
        )
        _check_fits(dimension, setting_spec, where)
        return [dimension]
    low, high = spec.get("low"), spec.get("high")
    for label, bound in (("low", low), ("high", high)):
        if not _is_number(bound) or not _finite(bound):
            raise ConfigError(f"{where}.{label}={_show(bound)} is not valid; it must be a finite number")
    if low > high:
        raise ConfigError(f"{where}: low={low} is above high={high}; need low <= high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log={_show(log)} is not valid; valid: true, false")
    if log and low <= 0:
        raise ConfigError(f"{where}: log=true needs low > 0, got low={low}")
    if kind == "schedule":
        template = Dimension(name, "float", float(low), float(high), log, when=when, requires=requires)
        return _expand_schedule(template, spec.get("count_from"), earlier, setting, setting_spec, where)
    if kind == "int" and (int(low) != low or int(high) != high):
        raise ConfigError(f"{where}: an int dimension needs integer bounds, got low={low}, high={high}")
    convert = int if kind == "int" else float
    dimension = Dimension(name, kind, convert(low), convert(high), log, when=when, requires=requires)
    _check_fits(dimension, setting_spec, where)
    return [dimension]


def _parse_choices(raw: Any, where: str) -> tuple:
    """A categorical's choices: scalars only (a list or mapping could be an alias bomb), within the limits."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}.choices must be a non-empty list")
    if len(raw) > MAX_CHOICES:
        raise ConfigError(f"{where}.choices has {len(raw)} values; a categorical may have at most {MAX_CHOICES}")
    for choice in raw:
        if not isinstance(choice, SCALAR_TYPES):
            raise ConfigError(
                f"{where}.choices: {_show(choice)} is not valid; choices are strings, numbers, true/false or null"
            )
        if isinstance(choice, str) and len(choice) > MAX_TEXT:
            raise ConfigError(f"{where}.choices: {_show(choice)} is longer than {MAX_TEXT} characters")
    return tuple(raw)


def _plain_setting_spec(key: str, techniques: tuple[str, ...], where: str, source: str) -> ParamSpec:
    """The spec of a setting searched as one value; a list setting must be searched by a schedule."""
    spec = _setting_spec(key, techniques, where, source)
    if spec.item_name is not None:
        schedule = f"{key.split('.', 1)[0]}.{spec.item_name}"
        raise ConfigError(f"{where}: {key} is a list; search it with a schedule dimension named {schedule}")
    return spec


def _check_fits(dimension: Dimension, spec: ParamSpec, where: str) -> None:
    """Every value ``dimension`` can take is one its setting accepts."""
    takes = f"{dimension.name} takes {spec.describe()}"
    if dimension.kind == "categorical":
        for choice in dimension.choices:
            if not spec.accepts(choice):
                raise ConfigError(f"{where}.choices: {_show(choice)} is not valid; {takes}")
        return
    if spec.kind == "bool" or (dimension.kind == "float" and spec.kind != "float"):
        usable = "categorical" if spec.kind == "bool" else "int or categorical"
        raise ConfigError(f"{where}.type={dimension.kind} cannot search it; {takes} (use type {usable})")
    for label, bound in (("low", dimension.low), ("high", dimension.high)):
        if not spec.accepts(bound):
            raise ConfigError(f"{where}.{label}={_show(bound)} is not valid; {takes}")
    if spec.kind == "choice":  # an int range over a set of values: each int in it must be one of them
        for value in range(int(dimension.low), int(min(dimension.high, dimension.low + len(spec.choices))) + 1):
            if not spec.accepts(value):
                raise ConfigError(f"{where}: {value} (within low..high) is not valid; {takes}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
                f"{where}.when names {_show(other)}, which is not a dimension defined above it; "
                f"defined above: {sorted(earlier_names)}"
            )
        values = values if isinstance(values, list) else [values]
        if len(values) > MAX_CHOICES:
            raise ConfigError(f"{where}.when.{other} lists {len(values)} values; at most {MAX_CHOICES} are allowed")
        for value in values:
            if not earlier_names[other].contains(value):
                raise ConfigError(
                    f"{where}.when: {other}={_show(value)} can never happen; "
                    f"{other} takes {describe(earlier_names[other])}"
                )
        conditions.append((other, tuple(values)))
    return tuple(conditions)


def _schedule_setting(name: str, techniques: tuple[str, ...], where: str, source: str) -> tuple[str, ParamSpec]:
    """The list setting a schedule dimension searches (a ``gap`` dimension fills the ``gaps`` list) and its spec."""
    technique = _technique_of(name, techniques, source)
    found = technique.list_spec(name.split(".", 1)[1])
    if found is None:
        valid = [
            f"{other}.{spec.item_name}"
            for other in techniques
            for spec in get_technique(other).params.values()
            if spec.item_name
        ]
        raise ConfigError(f"{where}: {name!r} cannot be a schedule; valid schedule dimensions: {valid}")
    return f"{technique.name}.{found[0]}", found[1]


def _expand_schedule(
    template: Dimension, count_from: Any, earlier: list[Dimension], setting: str, list_spec: ParamSpec, where: str
) -> list[Dimension]:
    """``name: {type: schedule, count_from: x.steps}`` -> ``name_0 .. name_{max-2}``, one per gap between steps.

    Gap i exists when the step count is at least i + 2, so an optimizer only sees the gaps it uses. The number
    of gaps is checked against the limits before any is made.
    """
    counts = (
        {dimension.name: dimension for dimension in earlier}.get(count_from) if isinstance(count_from, str) else None
    )
    if counts is None or counts.kind != "int":
        raise ConfigError(f"{where}.count_from={_show(count_from)} must name an int dimension defined above it")
    if template.low <= 0:
        raise ConfigError(f"{where}: schedule gaps are relative step sizes and need low > 0, got low={template.low}")
    element = list_spec.item()
    for label, bound in (("low", template.low), ("high", template.high)):
        if not element.accepts(bound):
            raise ConfigError(
                f"{where}.{label}={bound} is not valid; each element of {setting} is {element.describe()}"
            )
    length = int(counts.high) - 1
    allowed = min(list_spec.max_length or MAX_DIMENSIONS, MAX_DIMENSIONS - len(earlier))
    if length > allowed:
        raise ConfigError(
            f"{where}: {count_from} up to {int(counts.high)} makes {length} schedule dimensions; "
            f"at most {allowed} are allowed here"
        )
    first = max(2, int(counts.low))
    all_counts = tuple(range(first, int(counts.high) + 1))  # each gap's condition is a slice: the ints are shared
    return [
        replace(
            template,
            name=f"{template.name}_{index}",
            when=(*template.when, (count_from, all_counts[max(index + 2, int(counts.low)) - first :])),
        )
        for index in range(length)
    ]
