"""The protocol every cache method implements, the settings they share, and the registry of methods.

A method (``CacheMethod``) says which ``caching.*`` settings it reads (``settings``: the others leave its
computation as it is, and its cost key and the spaces' ``when:`` lists follow from them), whether a denoiser can
take it (``refusal``: the reason when not), how it installs (``install``: the per-call controller set on the
cached model), whether it calibrates per schedule (``calibrates``), and the benchmark's grid and published
defaults for it (``bench_grid``, ``published_defaults``). Adding a method is one module defining a subclass and
calling ``register_method``, imported by ``autoaccel.techniques.caching``; its ``order`` places it in
``caching.method``'s choices.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.call_control import CallController
from autoaccel.techniques.base import require_types

NONE = "none"
MAX_INTERVAL = 16
MAX_FULL_STEPS = 64  # warmup and tail
MAX_TAYLOR_ORDER = 3


class CacheMethod:
    """One way to cache a denoiser's computation across the calls of a sampling run."""

    name: str = ""
    order: int = 0  # where ``caching.method`` lists it
    settings: tuple[str, ...] = ()  # the CachingConfig fields it reads
    calibrates: bool = False  # runs an uncached calibration pass per schedule (recipes record its values)

    def active(self, config: CachingConfig) -> bool:
        """Whether ``config`` changes anything (a cache with a full step at every call does not)."""
        return config.interval > 1

    def check(self, model: torch.nn.Module) -> None:
        """Raises TechniqueError naming why ``model`` cannot take this method (its layout, its blocks)."""

    def refusal(self, model: torch.nn.Module) -> str | None:
        """Why ``model`` cannot take this method, or None where it can."""
        try:
            self.check(model)
        except TechniqueError as error:
            return str(error)
        return None

    def install(self, model: torch.nn.Module, config: CachingConfig, target) -> CallController:
        """The controller whose ``forward`` runs each call of the cached copy of ``model``."""
        raise NotImplementedError

    def measure(self, cached: torch.nn.Module, target) -> None:
        """Anything the controller counts on the cached model once installed (nothing by default)."""

    def cost_key(self, config: CachingConfig) -> dict[str, Any]:
        """The settings a call's cost depends on: the method and the settings it reads."""
        return {"method": self.name, **{name: getattr(config, name) for name in self.settings}}

    def bench_grid(self, knobs: Mapping[str, Sequence], depth_limit: int) -> list[dict[str, Any]]:
        """The ``caching.*`` settings the caching benchmark tries for this method, from its knob lists
        (``intervals``, ``depths``, ``warmups``, ``strengths``, ``taylor_orders``); depths cut to
        ``depth_limit``."""
        raise NotImplementedError

    def published_defaults(self, timesteps: Sequence[float], depth_limit: int) -> tuple[str, dict[str, Any]]:
        """The method's published defaults on this schedule: a row label and ``caching.*`` settings."""
        raise NotImplementedError

    def settings_row(self, **settings: Any) -> dict[str, Any]:
        """``caching.method`` and ``caching.<setting>`` parameters of one plan."""
        return {"caching.method": self.name, **{f"caching.{name}": value for name, value in settings.items()}}


CACHE_METHODS: dict[str, CacheMethod] = {}


def register_method(method: CacheMethod) -> CacheMethod:
    if method.name in CACHE_METHODS or method.name == NONE:
        raise ValueError(f"a cache method named {method.name!r} is already registered")
    CACHE_METHODS[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """Every ``caching.method`` value: none, then the registered methods in their order."""
    return (NONE, *(method.name for method in ordered_methods()))


def ordered_methods() -> tuple[CacheMethod, ...]:
    return tuple(sorted(CACHE_METHODS.values(), key=lambda method: method.order))


@dataclass(frozen=True)
class CachingConfig:
    """``method``: none or a registered method (``caching_methods()``). ``depth``: outer UNet levels (or
    transformer blocks at each end) that run at every step; a full step every ``interval`` steps (MagCache: at most
    ``interval - 1`` cached in a row), after ``warmup`` full steps and before ``tail`` full steps. ``strength``:
    the quantile of the calibrated differences a threshold method's threshold is (0 caches least, 1 most);
    ``threshold``: a raw threshold instead (a library default). ``taylor_order``: TaylorSeer's expansion order.
    Each method's ``settings`` say which it reads."""

    method: str = NONE
    depth: int = 1
    interval: int = 2
    warmup: int = 0
    tail: int = 0
    strength: float = 0.5
    threshold: float | None = None
    taylor_order: int = 1

    def __post_init__(self) -> None:
        require_types(
            self,
            "caching",
            {
                "method": str,
                "depth": int,
                "interval": int,
                "warmup": int,
                "tail": int,
                "strength": (int, float),
                "threshold": (int, float, type(None)),
                "taylor_order": int,
            },
        )
        if not 0.0 <= self.strength <= 1.0:
            raise ConfigError(f"caching.strength={self.strength} is not valid; it must be in [0, 1]")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not self.threshold >= 0.0):
            raise ConfigError(f"caching.threshold={self.threshold} is not valid; it must be a finite number >= 0")
        if not 1 <= self.taylor_order <= MAX_TAYLOR_ORDER:
            raise ConfigError(
                f"caching.taylor_order={self.taylor_order} is not valid; it must be in [1, {MAX_TAYLOR_ORDER}]"
            )
        if self.method not in method_names():
            raise ConfigError(f"caching.method={self.method!r} is not valid; valid: {list(method_names())}")
        if self.depth < 0:
            raise ConfigError(f"caching.depth={self.depth} is not valid; it must be an int >= 0")
        if not 1 <= self.interval <= MAX_INTERVAL:
            raise ConfigError(f"caching.interval={self.interval} is not valid; it must be in [1, {MAX_INTERVAL}]")
        for name in ("warmup", "tail"):
            if not 0 <= getattr(self, name) <= MAX_FULL_STEPS:
                raise ConfigError(
                    f"caching.{name}={getattr(self, name)} is not valid; it must be in [0, {MAX_FULL_STEPS}]"
                )

    @property
    def cache_method(self) -> CacheMethod | None:
        return CACHE_METHODS.get(self.method)

    @property
    def active(self) -> bool:
        method = self.cache_method
        return method is not None and method.active(self)


# ---------------------------------------------------------------------------------- what the methods share
def clone(module: torch.nn.Module) -> torch.nn.Module:
    """The same module (class, weights, attributes) with its own child table: children can be swapped in it
    without touching the original."""
    cloned = copy.copy(module)
    cloned._modules = dict(module._modules)
    return cloned


def hidden_argument(args: tuple, keywords: dict):
    """The hidden states a diffusers block is called with: its first argument, positional or by name."""
    return args[0] if args else keywords["hidden_states"]


def probe_inputs(model: torch.nn.Module, target) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One probe call's (sample, timestep, keywords) for ``model`` on ``target``: what FLOPs are counted on."""
    parameter = next(model.parameters())
    sample = torch.zeros((1, *target.sample_shape), device=parameter.device, dtype=parameter.dtype)
    labels = torch.zeros(1, dtype=torch.long) if target.condition_count is not None else None
    keywords = {  # prompt embeddings in the model's precision, as the sampling loop passes them
        key: value.to(parameter.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for key, value in target.conditions.keywords(labels, False, parameter.device).items()
    }
    timestep = torch.tensor([target.num_train_timesteps // 2], device=parameter.device)
    return sample, timestep, keywords


def returns_tuples(block: torch.nn.Module) -> bool:
    """Whether a block returns a tuple (joint text-image blocks), as diffusers' block registry says."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        return TransformerBlockRegistry.get(type(block)).return_encoder_hidden_states_index is not None
    except ValueError:
        return False
