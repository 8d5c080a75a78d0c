"""Whether a space's settings apply to the model it is about to search: a space written for DDPM-family models
lists solvers and schedule families a flow-matching model cannot run, and the other way round. Found when the run
starts, in one line naming the key, what does not apply, and what to use, instead of every trial failing."""

from __future__ import annotations

from autoaccel.errors import ConfigError
from autoaccel.space.spaces import SearchSpace
from autoaccel.techniques.base import family_choices


def check_space_fits(space: SearchSpace, target) -> None:
    """Raises ConfigError when a solver or schedule family the space names cannot run on ``target`` (each
    technique says which of its values a schedule family takes: ``Technique.family_choices``)."""
    family = target.schedule
    for key, allowed in family_choices(family.name).items():
        named = _values(space, key)
        wrong = [value for value in named if value not in allowed]
        if wrong:
            raise ConfigError(
                f"{space.source}: {key} {', '.join(map(str, wrong))} cannot run on {target.name}, "
                f"{family.words}; valid: {', '.join(allowed)} (e.g. space={family.suggested_spaces}, "
                "or space=auto)"
            )


def _values(space: SearchSpace, key: str) -> list:
    if key in space.fixed:
        return [space.fixed[key]]
    for dimension in space.dimensions:
        if dimension.name == key:
            return list(dimension.choices)
    return []
