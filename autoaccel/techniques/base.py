"""The one interface every technique implements, and the registry that orders and stacks them.

A technique is a config dataclass, a way to build it from a candidate's parameters (its own namespace of the
space, e.g. ``solver.*``), and ``apply(pipeline, config, target)``. Adding a technique is one new module that
calls ``register``; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from autoaccel.errors import ConfigError


@dataclass(frozen=True)
class Technique:
    """A named way to change a pipeline; ``order`` fixes where it applies when several are stacked."""

    name: str
    order: int
    config_cls: type
    apply: Callable[..., None]
    version: int = 1
    modifies_model: bool = False  # replaces the pipeline's unet: a recipe must re-apply it to reproduce images
    simulated: bool = False  # scored by simulation (fake quantization): trials, reports and recipes say so
    group_params: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # settings (without the ``name.`` prefix) that leave the model unchanged: what baselines use in a joint space
    unchanged_params: Mapping[str, Any] = field(default_factory=dict)

    def config_from_params(self, params: Mapping[str, Any]):
        """Builds this technique's config from the ``name.*`` entries of a candidate's parameters.

        ``group_params`` lets a technique fold flat dimensions (``gap_0``, ``gap_1``, ...) into one field.
        """
        prefix = f"{self.name}."
        own = {key[len(prefix) :]: value for key, value in params.items() if key.startswith(prefix)}
        if self.group_params is not None:
            own = self.group_params(own)
        known = {field.name for field in fields(self.config_cls)}
        unknown = sorted(set(own) - known)
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(prefix + key for key in unknown)}; "
                f"{self.name} takes: {', '.join(sorted(prefix + key for key in known))}"
            )
        return self.config_cls(**own)


def require_types(config: Any, prefix: str, types: Mapping[str, type | tuple[type, ...]]) -> None:
    """Raises ConfigError naming ``prefix.field`` if a field is not of its type (bool never counts as a number,
    NaN and infinity never as a float): configs come from recipes users may edit."""
    import math

    for name, kind in types.items():
        value = getattr(config, name)
        numeric = kind in (int, float) or kind == (int, float)
        if (numeric and isinstance(value, bool)) or not isinstance(value, kind):
            wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(f"{prefix}.{name}={value!r} is not valid; it must be a {wanted}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}.{name}={value!r} is not valid; it must be finite")


_REGISTRY: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    if technique.name in _REGISTRY:
        raise ValueError(f"a technique named {technique.name!r} is already registered")
    _REGISTRY[technique.name] = technique
    return technique


def get_technique(name: str) -> Technique:
    _load_builtin_techniques()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown technique {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_techniques() -> list[Technique]:
    """All techniques, in the order they apply."""
    _load_builtin_techniques()
    return sorted(_REGISTRY.values(), key=lambda technique: technique.order)


def unchanged_model_params() -> dict[str, Any]:
    """Settings of every registered technique that leave the model as it is (no pruning, no quantization)."""
    return {
        f"{technique.name}.{key}": value
        for technique in registered_techniques()
        for key, value in technique.unchanged_params.items()
    }


def _load_builtin_techniques() -> None:
    import autoaccel.techniques.pruning  # noqa: F401
    import autoaccel.techniques.quantization  # noqa: F401
    import autoaccel.techniques.solver  # noqa: F401
    import autoaccel.techniques.timesteps  # noqa: F401
