"""Whether the settings a space can propose together make a valid config for each of its techniques.

Each value of a space is checked alone when it loads (``Technique.params``), but a technique's config also has rules
across its settings (progressive distillation halves ``start_steps`` down to ``steps``; consistency sampling needs
``steps <= original_steps``). A space that can propose a combination its config refuses would see every such trial
fail, so each technique's combinations are built when the space loads: every choice of a categorical, every int
of a short range (the ends and middle of a long one), the ends of a float range, and a schedule's elements at its
low end. A condition on another technique's dimension, or a capability the target may lack, is taken both ways.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from autoaccel.errors import ConfigError
from autoaccel.techniques.base import get_technique

if TYPE_CHECKING:
    from autoaccel.space.spaces import Dimension

MAX_COMBINATIONS = 20_000  # per technique; beyond it the first ones are checked (the bundled spaces have < 1500)
SHORT_INT_RANGE = 32  # an int range with at most this many values is tried whole

_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother = 60, 60


def check_combinations(
    techniques: tuple[str, ...], dimensions: tuple[Dimension, ...], fixed: Mapping[str, Any], source: str
) -> None:
    """Raises ConfigError naming the first combination of a technique's settings its config refuses."""
    for name in techniques:
        technique = get_technique(name)
        prefix = f"{name}."
        own_fixed = {key: value for key, value in fixed.items() if key.startswith(prefix)}
        own = [dimension for dimension in dimensions if dimension.name.startswith(prefix)]
        for count, searched in enumerate(_combinations(own, fixed, dimensions, technique)):
            if count >= MAX_COMBINATIONS:
                break
            try:
                technique.config_from_params({**own_fixed, **searched})
            except ConfigError as error:
                shown = (
                    ", ".join(f"{key}={_SHOWN.repr(value)}" for key, value in searched.items()) or "its fixed values"
                )
                raise ConfigError(
                    f"{source}: the space can propose {shown}, which {name} cannot run: {error}; "
                    "narrow the dimensions (or add a 'when' condition) so every combination is valid"
                ) from None


def _combinations(
    own: list[Dimension], fixed: Mapping[str, Any], everything: tuple[Dimension, ...], technique
) -> Iterator[dict[str, Any]]:
    """Every combination of ``own`` dimensions' tried values, each dimension present only where active."""
    others = {dimension.name for dimension in everything} - {dimension.name for dimension in own}

    def extend(index: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if index == len(own):
            yield dict(chosen)
            return
        dimension = own[index]
        activity = _activity(dimension, {**fixed, **chosen}, others)
        if activity is not True:  # inactive, or inactive under some values of another technique's dimension
            yield from extend(index + 1, chosen)
        if activity is not False:
            for value in _tried_values(dimension, technique):
                chosen[dimension.name] = value
                yield from extend(index + 1, chosen)
            del chosen[dimension.name]

    yield from extend(0, {})


def _activity(dimension: Dimension, known: Mapping[str, Any], others: set[str]) -> bool | None:
    """Whether ``dimension`` is active given ``known`` values; None when that depends on another technique's."""
    undecided = dimension.requires is not None  # dropped for a target without the capability
    for other, allowed in dimension.when:
        if other in others:
            undecided = True
        elif known.get(other) not in allowed:
            return False
    return None if undecided else True


def _tried_values(dimension: Dimension, technique) -> list[Any]:
    if dimension.kind == "categorical":
        return list(dimension.choices)
    setting = dimension.name.split(".", 1)[1]
    if setting not in technique.params:  # one element of a list setting (a schedule's gap): only its count matters
        return [dimension.low]
    if dimension.kind == "int":
        low, high = int(dimension.low), int(dimension.high)
        if high - low < SHORT_INT_RANGE:
            return list(range(low, high + 1))
        return sorted({low, (low + high) // 2, high})
    return sorted({dimension.low, dimension.high})
