"""Technique ``caching``: reuse the deep part of the denoiser's computation from the last full step.

Method ``deep``. On a UNet (DeepCache): at a full step the whole UNet runs and the output of its deepest up-path
blocks is kept; at the cached steps between, only the outer ``depth`` levels run (down blocks, then the up blocks
fed the kept features) and the deep down blocks, mid block and deep up blocks are skipped. On a transformer
(a static block cache, as FORA and Delta-DiT do): the first and last ``depth`` blocks run at every step, the
blocks between them run at full steps only, and at cached steps their residual from the last full step is added.

Which steps are full: the first ``warmup`` steps, the last ``tail`` ones, and every ``interval``-th step between;
the first step always is. Decided by call index within one sampling run (the sampling loop says when a run
starts and how many calls it makes), so a plan is deterministic and its recipe reproduces its images bit for bit.

The cached model is a shallow copy of the model (same class, weights, attributes and parameter names) whose
forward dispatches each call to one of two views sharing those weights: the full view (records what later steps
reuse) and the cached view (stubs in place of the skipped blocks). The model itself is never changed, so the
teacher other plans run stays intact. A cached call's cost in full-forward equivalents (its FLOPs over a full
call's, counted by ``torch.utils.flop_counter`` once at apply) is what the plan's NFE counts for it.

Methods ``first_block``, ``mag``, ``taylorseer`` and ``pab``: diffusers' own transformer caches, driven by the
sampling loop and with thresholds calibrated per schedule (``autoaccel.techniques.cache_hooks``). Both kinds of
controller answer the sampling loop alike: ``prepare`` (calibrate for the schedule), ``running`` (one run) and
``last_call_share`` (what the last call cost in full forwards).
"""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.techniques.base import ParamSpec, Technique, register, require_types
from autoaccel.techniques.cache_hooks import (
    HOOK_METHODS,
    THRESHOLD_METHODS,
    HookCache,
    check_hookable,
    hidden_argument,
    probe_inputs,
    returns_tuples,
)

METHODS = ("none", "deep", *HOOK_METHODS)
CACHE = "autoaccel_cache"  # the FeatureCache set on a cached model: the sampling loop finds it there
MAX_INTERVAL = 16
MAX_FULL_STEPS = 64  # warmup and tail
MAX_TAYLOR_ORDER = 3
# the settings each method reads: the others leave its computation as it is
METHOD_SETTINGS = {
    "none": (),
    "deep": ("depth", "interval", "warmup", "tail"),
    "first_block": ("strength", "threshold"),
    "mag": ("strength", "threshold", "interval", "warmup"),
    "taylorseer": ("interval", "warmup", "tail", "taylor_order"),
    "pab": ("interval", "warmup", "tail"),
}


@dataclass(frozen=True)
class CachingConfig:
    """``method``: none, deep (DeepCache / a static block cache) or one of diffusers' transformer caches
    (``autoaccel.techniques.cache_hooks``). ``depth``: outer UNet levels (or transformer blocks at each end) that run
    at every step; a full step every ``interval`` steps (MagCache: at most ``interval - 1`` cached in a row), after
    ``warmup`` full steps and before ``tail`` full steps. ``strength``: the quantile of the calibrated differences a
    threshold method's threshold is (0 caches least, 1 most); ``threshold``: a raw threshold instead (a library
    default). ``taylor_order``: TaylorSeer's expansion order. ``METHOD_SETTINGS`` says which settings each reads."""

    method: str = "none"
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
        if self.method not in METHODS:
            raise ConfigError(f"caching.method={self.method!r} is not valid; valid: {list(METHODS)}")
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
    def active(self) -> bool:
        return self.method != "none" and (self.method in THRESHOLD_METHODS or self.interval > 1)


def full_steps(calls: int, config: CachingConfig) -> list[bool]:
    """Which of a run's ``calls`` denoiser calls run the whole model (True) or reuse the cache (False): the first
    ``warmup`` (at least the first), the last ``tail``, and every ``interval``-th call counted from the last
    warm-up call."""
    warmup = max(config.warmup, 1)
    return [
        index < warmup or index >= calls - config.tail or (index - (warmup - 1)) % config.interval == 0
        for index in range(calls)
    ]


@dataclass
class _Run:
    """One sampling run's state, per thread: which calls are full, how many were made, what was kept."""

    mask: list[bool] = field(default_factory=list)
    calls: int = 0
    kept: dict[str, Any] = field(default_factory=dict)
    last_full: bool = True

    def next_is_full(self) -> bool:
        return self.calls >= len(self.mask) or self.mask[self.calls]


class FeatureCache:
    """The controller set on a cached model: its two views, each thread's run state and a cached call's share."""

    def __init__(self, model: torch.nn.Module, config: CachingConfig) -> None:
        self.config = config
        self.local = threading.local()
        self.full_view, self.cached_view = _views(model, config.depth, self)
        self.cached_share = 1.0

    @property
    def run(self) -> _Run:
        if not hasattr(self.local, "run"):
            self.local.run = _Run()
        return self.local.run

    def prepare(self, pipeline) -> None:
        """Nothing to calibrate: which calls are full is fixed by the config."""

    @contextmanager
    def running(self, pipeline):
        """A sampling run of the pipeline's schedule: its mask, nothing kept yet."""
        self.local.run = _Run(mask=full_steps(len(pipeline.scheduler.timesteps), self.config))
        yield

    def last_call_share(self) -> float:
        """What the last call cost in full forwards: 1, or a cached call's share."""
        return 1.0 if self.run.last_full else self.cached_share

    def forward(self, *args, **keywords):
        run = self.run
        full = run.next_is_full() or not run.kept
        run.calls += 1
        run.last_full = full
        view = self.full_view if full else self.cached_view
        return view(*args, **keywords)


def _clone(module: torch.nn.Module) -> torch.nn.Module:
    """The same module (class, weights, attributes) with its own child table: children can be swapped in it
    without touching the original."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


class _Mimic(torch.nn.Module):
    """A stand-in for a block inside its parent's forward: answers the attributes the parent reads of the block
    (``resnets``, ``skip_conv``, ``has_cross_attention``) as the block does."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # not a child: its weights stay the model's alone

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "block" not in self.__dict__:
                raise
            return getattr(self.__dict__["block"], name)


class _Kept(_Mimic):
    """A stand-in that reads or writes what the current run keeps under ``name``."""

    def __init__(self, block: torch.nn.Module, cache: FeatureCache, name: str) -> None:
        super().__init__(block)
        object.__setattr__(self, "cache", cache)
        self.name = name

    @property
    def kept(self) -> dict[str, Any]:
        return self.__dict__["cache"].run.kept


class _Keep(_Kept):
    """Runs the block and keeps its input (``keep_input``) and/or output in the run's state under ``name``;
    ``tensors_only``: refuses a block whose output is not one tensor (a residual is taken of it)."""

    def __init__(
        self,
        block,
        cache: FeatureCache,
        name: str,
        keep_input: bool = False,
        keep_output: bool = True,
        tensors_only: bool = False,
    ) -> None:
        super().__init__(block, cache, name)
        self.keep_input, self.keep_output, self.tensors_only = keep_input, keep_output, tensors_only

    def forward(self, *args, **keywords):
        output = self.__dict__["block"](*args, **keywords)
        if self.tensors_only and not isinstance(output, torch.Tensor):
            raise TechniqueError(
                f"caching.method=deep on a transformer needs blocks that return the hidden states; "
                f"{type(self.__dict__['block']).__name__} returns {type(output).__name__} (joint text-image blocks "
                "are not cached)"
            )
        if self.keep_input:
            self.kept[f"{self.name}.input"] = hidden_argument(args, keywords)
        if self.keep_output:
            self.kept[f"{self.name}.output"] = output
        return output


class _Reuse(_Kept):
    """Returns what a full step kept under ``name`` (the deep up path's output) instead of running the block."""

    def forward(self, *args, **keywords):
        return self.kept[f"{self.name}.output"]


class _SkipDown(_Mimic):
    """A skipped down block: passes its input on with as many (unused) skip features as the block makes."""

    def __init__(self, block, features: int) -> None:
        super().__init__(block)
        self.features = features

    def forward(self, *args, **keywords):
        hidden = hidden_argument(args, keywords)
        if hasattr(self.__dict__["block"], "skip_conv"):
            return hidden, (hidden,) * self.features, keywords.get("skip_sample")
        return hidden, (hidden,) * self.features


class _Pass(_Mimic):
    """A skipped block whose output is its input (a mid block, or a transformer block inside the cached span)."""

    def forward(self, *args, **keywords):
        return hidden_argument(args, keywords)


class _AddResidual(_Kept):
    """The first block of the cached span: its input plus the span's residual from the last full step."""

    def forward(self, *args, **keywords):
        return hidden_argument(args, keywords) + (self.kept[f"{self.name}.output"] - self.kept[f"{self.name}.input"])


def _down_features(block: torch.nn.Module) -> int:
    """How many skip features a diffusers down block hands to the up path: one per resnet and per downsampler."""
    return len(block.resnets) + len(getattr(block, "downsamplers", None) or ())


def _views(model: torch.nn.Module, depth: int, cache: FeatureCache) -> tuple[torch.nn.Module, torch.nn.Module]:
    from autoaccel.targets.denoisers import denoiser_kind

    if denoiser_kind(model).transformer:
        return _transformer_views(model, depth, cache)
    if not hasattr(model, "down_blocks") or not hasattr(model, "up_blocks"):
        raise TechniqueError(
            f"caching.method=deep needs a diffusers UNet or transformer denoiser; {type(model).__name__} is neither"
        )
    return _unet_views(model, depth, cache)


def unet_depths(model: torch.nn.Module) -> range:
    """The depths a UNet can cache at: at least one level runs at every step and at least one is cached."""
    return range(1, len(model.down_blocks))


def _unet_views(model, depth: int, cache: FeatureCache):
    levels = len(model.down_blocks)
    if depth not in unet_depths(model) or len(model.up_blocks) != levels:
        raise TechniqueError(
            f"caching.depth={depth} is not valid for this {levels}-level UNet; valid: "
            f"{list(unet_depths(model)) or 'none (a one-level UNet has nothing to cache)'}"
        )
    last_deep = levels - depth - 1  # the up block whose output the outer levels take in
    full = _clone(model)
    full.up_blocks = torch.nn.ModuleList(
        _Keep(block, cache, "deep") if index == last_deep else block for index, block in enumerate(model.up_blocks)
    )
    cached = _clone(model)
    cached.down_blocks = torch.nn.ModuleList(
        _SkipDown(block, _down_features(block)) if index >= depth else block
        for index, block in enumerate(model.down_blocks)
    )
    if model.mid_block is not None:
        cached.mid_block = _Pass(model.mid_block)
    cached.up_blocks = torch.nn.ModuleList(
        _Reuse(block, cache, "deep") if index <= last_deep else block for index, block in enumerate(model.up_blocks)
    )
    return full, cached


def depth_limit(model: torch.nn.Module) -> int:
    """The deepest ``caching.depth`` ``model`` takes; -1 where it takes none."""
    from autoaccel.targets.denoisers import denoiser_kind

    if denoiser_kind(model).transformer and hasattr(model, "transformer_blocks"):
        depths = transformer_depths(model)
    elif hasattr(model, "down_blocks") and hasattr(model, "up_blocks"):
        depths = unet_depths(model)
    else:
        return -1
    return max(depths, default=-1)


def cache_methods(model: torch.nn.Module) -> tuple[str, ...]:
    """The methods ``model`` can be cached with: deep where it has levels or blocks to skip, diffusers' hook
    caches where its blocks are ones they know."""
    blocks = getattr(model, "transformer_blocks", None) or ()
    deep = depth_limit(model) >= 0 and not any(returns_tuples(block) for block in blocks)
    methods = ["none"] + (["deep"] if deep else [])
    for method in HOOK_METHODS:
        try:
            check_hookable(model, method)
        except TechniqueError:
            continue
        methods.append(method)
    return tuple(methods)


def transformer_depths(model: torch.nn.Module) -> range:
    """The depths a transformer can cache at: at least one block is cached between the kept ends."""
    return range(0, (len(model.transformer_blocks) + 1) // 2)


def _transformer_views(model, depth: int, cache: FeatureCache):
    blocks = list(model.transformer_blocks)
    if depth not in transformer_depths(model):
        raise TechniqueError(
            f"caching.depth={depth} is not valid for this {len(blocks)}-block transformer; valid: "
            f"{list(transformer_depths(model))}"
        )
    first, last = depth, len(blocks) - depth - 1  # the cached span, inclusive
    full = _clone(model)
    kept = []
    for index, block in enumerate(blocks):
        if index in (first, last):
            block = _Keep(block, cache, "span", keep_input=index == first, keep_output=index == last, tensors_only=True)
        kept.append(block)
    full.transformer_blocks = torch.nn.ModuleList(kept)
    cached = _clone(model)
    cached.transformer_blocks = torch.nn.ModuleList(
        _AddResidual(block, cache, "span") if index == first else _Pass(block) if first < index <= last else block
        for index, block in enumerate(blocks)
    )
    return full, cached


def feature_cache(denoiser) -> FeatureCache | HookCache | None:
    """The cache a model runs with, or None."""
    return getattr(denoiser, CACHE, None)


def apply_caching(pipeline, config: CachingConfig, target) -> None:
    if not config.active:
        return
    model = pipeline.denoiser
    if feature_cache(model) is not None:
        raise TechniqueError("caching applies once per plan")
    if getattr(model, "student", None) is not None:
        raise TechniqueError(
            "caching does not apply to a plan that hands steps between two models (assignment.teacher_steps > 0); "
            "use assignment.teacher_steps 0 with caching"
        )
    cache = HookCache(model, config, target) if config.method in HOOK_METHODS else FeatureCache(model, config)
    cached = _clone(model)
    cached.forward = cache.forward
    object.__setattr__(cached, CACHE, cache)
    if isinstance(cache, FeatureCache):
        cache.cached_share = _cached_share(cached, target)
    pipeline.denoiser = cached


def _cached_share(cached, target) -> float:
    """A cached call's FLOPs over a full call's, on one probe sample (matmuls, convolutions and attention: what
    torch's flop counter counts). Refuses a structure that saves nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    from autoaccel.targets.denoisers import predict

    cache = feature_cache(cached)
    sample, timestep, keywords = probe_inputs(cached, target)
    flops = []
    cache.local.run = _Run(mask=[True, False])
    try:
        with torch.no_grad():
            for _ in range(2):
                with FlopCounterMode(display=False) as counter:
                    predict(cached, sample, timestep, keywords)
                flops.append(counter.get_total_flops())
    finally:
        cache.local.run = _Run()
    if not flops[0] or flops[1] >= flops[0]:
        raise TechniqueError(
            f"caching.depth={cache.config.depth} saves nothing on this model ({flops[1]} of {flops[0]} FLOPs per "
            "cached call); use caching.method none"
        )
    return flops[1] / flops[0]


def caching_cost(config: CachingConfig) -> dict:
    """The cache structure decides what a call costs and which calls are cheap: the settings its method reads."""
    if not config.active:
        return {}
    return {"method": config.method, **{name: getattr(config, name) for name in METHOD_SETTINGS[config.method]}}


def caching_recompute(config: CachingConfig) -> str | None:
    """What applying a calibrated cache runs again (its recipe holds no artifact: the values are recomputed)."""
    if not config.active or config.method not in HOOK_METHODS:
        return None
    return "the cache calibration (one uncached run of its calibration seeds at the plan's schedule)"


def caching_record(pipeline, config: CachingConfig) -> dict | None:
    """A calibrated cache's calibration at the pipeline's schedule (computed now if no run has yet), and the
    thresholds it gave: what a recipe records beside the config."""
    cache = feature_cache(pipeline.denoiser)
    if not isinstance(cache, HookCache):
        return None
    pipeline.set_schedule(pipeline.denoiser.device)
    cache.prepare(pipeline)
    pipeline.set_schedule(pipeline.denoiser.device)
    return {"calibration": cache.describe(pipeline)}


CACHING_PARAMS = {
    "method": ParamSpec("choice", choices=METHODS, target_limit="cache_methods", narrows_to_target=True),
    "depth": ParamSpec("int", low=0, high=64, target_limit="cache_depth_limit", narrows_to_target=True),
    "interval": ParamSpec("int", low=1, high=MAX_INTERVAL),
    "warmup": ParamSpec("int", low=0, high=MAX_FULL_STEPS),
    "tail": ParamSpec("int", low=0, high=MAX_FULL_STEPS),
    "strength": ParamSpec("float", low=0.0, high=1.0),
    "threshold": ParamSpec("float", low=0.0),
    "taylor_order": ParamSpec("int", low=1, high=MAX_TAYLOR_ORDER),
}

CACHING = register(
    Technique(
        name="caching",
        order=9,  # on the model the others produced (distilled, pruned, quantized); before the sampler
        config_cls=CachingConfig,
        apply=apply_caching,
        # not weights, but the denoiser's computation: plan identity and the model cache must see it
        modifies_model=True,
        unchanged_params={"method": "none"},
        params=CACHING_PARAMS,
        cost_key=caching_cost,
        recompute=caching_recompute,
        recipe_record=caching_record,
    )
)
