"""The optimizer interface the search loop sees.

Every backend records into the same optuna study (the ledger). A backend either lets the study's own optuna
sampler propose (``sampler`` returns one and ``propose`` returns None), or proposes parameters itself, which
the loop enqueues into the study before asking, so the trial is recorded like any other.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from autoaccel.errors import ConfigError
from autoaccel.space.spaces import Dimension, SearchSpace, active_params

DIRECTIONS = ("minimize", "maximize")
FAILURE_LOSS = 1e6  # a failed trial's loss on every objective (or 10x the worst seen, if larger)

History = list[tuple[dict[str, Any], list[float] | None]]


class OptimizerBackend(ABC):
    """Proposes candidates for a space; learns from finished trials.

    ``options["directions"]`` (one ``minimize``/``maximize`` per objective, default all ``minimize``) says how to
    read the values the loop passes to ``observe``: they are the study's, and ``losses`` turns them into what a
    backend minimises.
    """

    name: str

    def __init__(self, space: SearchSpace, options: Mapping[str, Any], num_objectives: int) -> None:
        self.space = space
        self.options = dict(options)
        self.num_objectives = num_objectives
        self.directions = list(self.options.get("directions") or ["minimize"] * num_objectives)
        if len(self.directions) != num_objectives or not set(self.directions) <= set(DIRECTIONS):
            raise ConfigError(
                f"optimizer directions={self.directions} is not valid; give one of {DIRECTIONS} per objective "
                f"({num_objectives})"
            )

    @abstractmethod
    def sampler(self):
        """The optuna sampler the study is created with."""

    def propose(self) -> dict[str, Any] | None:
        """Parameters to evaluate next, or None to let the study's sampler suggest them."""
        return None

    def observe(self, params: Mapping[str, Any], values: list[float] | None) -> None:
        """A finished trial (``values`` None when it failed). Backends that keep their own state learn here."""
        return None

    def rebuild(self, history: History) -> None:
        """Catches a fresh backend up with the trials a resumed study already holds, oldest first."""
        for params, values in history:
            self.observe(params, values)

    def losses(self, values: list[float] | None) -> list[float] | None:
        """The study's values as losses to minimise (maximised objectives negated); None for a failed trial."""
        if values is None:
            return None
        return [
            -float(value) if direction == "maximize" else float(value)
            for value, direction in zip(values, self.directions)
        ]


class ProposingBackend(OptimizerBackend):
    """A library that proposes whole points itself (nevergrad, pymoo).

    Its proposals are enqueued, but the study may ask an earlier queued trial first (warm starts, a resumed
    run's leftovers), so ``observe`` matches a trial to its proposal by parameters, not by order; an unmatched
    trial is a foreign point the library learns from too. Categoricals travel as choice indices so that bools
    and strings come back exactly. The study's own sampler (seeded random) only fills in when nothing is pending.
    """

    def __init__(self, space: SearchSpace, options: Mapping[str, Any], num_objectives: int) -> None:
        super().__init__(space, options, num_objectives)
        self.seed: int | None = None if self.options.get("seed") is None else int(self.options["seed"])
        self._pending: dict[tuple, list[Any]] = {}
        self.worst: list[float] = [-math.inf] * num_objectives

    def sampler(self):
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)

    def hand_out(self, raw: Mapping[str, Any], token: Any) -> dict[str, Any]:
        """The active part of a library point (decoded), remembering ``token`` to tell its result to."""
        searched = active_params(self.space, lambda dimension: decode(dimension, raw[dimension.name]))
        self._pending.setdefault(_key(searched), []).append(token)
        return searched

    def claim(self, params: Mapping[str, Any]) -> Any | None:
        """The token of the oldest pending proposal with these parameters; None for a foreign point."""
        tokens = self._pending.get(_key(params))
        return tokens.pop(0) if tokens else None

    def encoded(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A full library point for ``params``; inactive dimensions (absent) take their default."""
        return {dimension.name: encode(dimension, params.get(dimension.name)) for dimension in self.space.dimensions}

    def losses_or_penalty(self, values: list[float] | None) -> list[float]:
        """``losses``, or for a failed trial a penalty worse than anything seen, so the library moves away."""
        losses = self.losses(values)
        if losses is None:
            return [
                max(FAILURE_LOSS, 10 * abs(worst)) if math.isfinite(worst) else FAILURE_LOSS for worst in self.worst
            ]
        self.worst = [max(worst, loss) for worst, loss in zip(self.worst, losses)]
        return losses


def decode(dimension: Dimension, raw: Any) -> Any:
    """A library value as a plain python value inside the dimension (index -> choice; clamped; ints rounded)."""
    if dimension.kind == "categorical":
        return dimension.choices[int(raw)]
    value = min(max(float(raw), dimension.low), dimension.high)
    return int(round(value)) if dimension.kind == "int" else value


def encode(dimension: Dimension, value: Any) -> Any:
    """The inverse of ``decode``; ``None`` (an inactive dimension) becomes the middle of its range / first choice."""
    if dimension.kind == "categorical":
        matches = [
            index for index, choice in enumerate(dimension.choices) if type(choice) is type(value) and choice == value
        ]
        return matches[0] if matches else 0
    if value is None:
        middle = math.sqrt(dimension.low * dimension.high) if dimension.log else (dimension.low + dimension.high) / 2
        return int(round(middle)) if dimension.kind == "int" else middle
    return int(value) if dimension.kind == "int" else float(value)


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((name, (type(value).__name__, value)) for name, value in params.items()))


_BACKENDS: dict[str, Callable[..., OptimizerBackend]] = {}
_BUILTIN_MODULES = {
    "autoaccel.optimizers.optuna_backend": "optuna",
    "autoaccel.optimizers.nevergrad_backend": "nevergrad",
    "autoaccel.optimizers.pymoo_backend": "pymoo",
}
_MISSING: dict[str, str] = {}  # backend module -> why it could not be imported


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
        missing = "".join(f"; {why}" for why in _MISSING.values())
        raise ConfigError(f"optimizer={name!r} is not a known backend; valid: {', '.join(sorted(_BACKENDS))}{missing}")
    return _BACKENDS[name](space, options, num_objectives)


def _load_builtin_backends() -> None:
    """Imports each bundled backend module once; one whose library is not installed is skipped and named."""
    import importlib

    for module, library in _BUILTIN_MODULES.items():
        if module in _MISSING:
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            _MISSING[module] = f"the {library} backends need {library} installed (pip install {library}): {error}"
