"""The optimizer interface the search loop sees.

Every backend records into the same optuna study (the ledger). A backend either lets the study's own optuna
sampler propose (``sampler`` returns one and ``propose`` returns None), or proposes parameters itself, which
the loop enqueues into the study before asking, so the trial is recorded like any other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from autoaccel.errors import ConfigError
from autoaccel.space import SearchSpace


class OptimizerBackend(ABC):
    """Proposes candidates for a space; learns from finished trials."""

    name: str

    def __init__(self, space: SearchSpace, options: Mapping[str, Any], num_objectives: int) -> None:
        self.space = space
        self.options = dict(options)
        self.num_objectives = num_objectives

    @abstractmethod
    def sampler(self):
        """The optuna sampler the study is created with."""

    def propose(self) -> dict[str, Any] | None:
        """Parameters to evaluate next, or None to let the study's sampler suggest them."""
        return None

    def observe(self, params: Mapping[str, Any], values: list[float] | None) -> None:
        """A finished trial (``values`` None when it failed). Backends that keep their own state learn here."""
        return None


_BACKENDS: dict[str, Callable[..., OptimizerBackend]] = {}


def register_backend(name: str, factory: Callable[..., OptimizerBackend]) -> None:
    if name in _BACKENDS:
        raise ValueError(f"an optimizer backend named {name!r} is already registered")
    _BACKENDS[name] = factory


def registered_backends() -> list[str]:
    _load_builtin_backends()
    return sorted(_BACKENDS)


def make_backend(name: str, space: SearchSpace, options: Mapping[str, Any], num_objectives: int) -> OptimizerBackend:
    _load_builtin_backends()
    if name not in _BACKENDS:
        raise ConfigError(f"optimizer={name!r} is not a known backend; valid: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name](space, options, num_objectives)


def _load_builtin_backends() -> None:
    import autoaccel.optimizers.optuna_backend  # noqa: F401
