"""Cache method ``deep``: reuse the deep part of the denoiser's computation from the last full step.

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
reuse) and the cached view (stubs in place of the skipped blocks). The model itself is never changed, so other
plans and the reference run it intact. A cached call's cost in full-forward equivalents (its FLOPs over a full
call's, counted by ``torch.utils.flop_counter`` once at apply) is what the plan's NFE counts for it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from autoaccel.errors import TechniqueError
from autoaccel.pipeline.call_control import call_controller
from autoaccel.targets.denoisers import predict
from autoaccel.targets.layouts import layout_of
from autoaccel.techniques.caching.method import (
    CacheMethod,
    CachingConfig,
    clone,
    hidden_argument,
    probe_inputs,
    register_method,
    returns_tuples,
)


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
    if layout_of(model).sequence:
        return _transformer_views(model, depth, cache)
    if layout_of(model).levels(model) is None:
        raise TechniqueError(
            f"caching.method=deep needs a diffusers UNet or transformer denoiser; {type(model).__name__} is neither"
        )
    return _unet_views(model, depth, cache)


def unet_depths(model: torch.nn.Module) -> range:
    """The depths a UNet can cache at: at least one level runs at every step and at least one is cached."""
    down, _, _ = layout_of(model).levels(model)
    return range(1, len(getattr(model, down)))


def _unet_views(model, depth: int, cache: FeatureCache):
    down, mid, up = layout_of(model).levels(model)
    down_blocks, up_blocks = getattr(model, down), getattr(model, up)
    levels = len(down_blocks)
    if depth not in unet_depths(model) or len(up_blocks) != levels:
        raise TechniqueError(
            f"caching.depth={depth} is not valid for this {levels}-level UNet; valid: "
            f"{list(unet_depths(model)) or 'none (a one-level UNet has nothing to cache)'}"
        )
    last_deep = levels - depth - 1  # the up block whose output the outer levels take in
    full = clone(model)
    kept = [_Keep(block, cache, "deep") if index == last_deep else block for index, block in enumerate(up_blocks)]
    setattr(full, up, torch.nn.ModuleList(kept))
    cached = clone(model)
    skipped = [
        _SkipDown(block, _down_features(block)) if index >= depth else block for index, block in enumerate(down_blocks)
    ]
    setattr(cached, down, torch.nn.ModuleList(skipped))
    if mid is not None:
        setattr(cached, mid, _Pass(getattr(model, mid)))
    reused = [_Reuse(block, cache, "deep") if index <= last_deep else block for index, block in enumerate(up_blocks)]
    setattr(cached, up, torch.nn.ModuleList(reused))
    return full, cached


def depth_limit(model: torch.nn.Module) -> int:
    """The deepest ``caching.depth`` ``model`` takes; -1 where it takes none."""
    if layout_of(model).sequence:
        depths = transformer_depths(model)
    elif layout_of(model).levels(model) is not None:
        depths = unet_depths(model)
    else:
        return -1
    return max(depths, default=-1)


def transformer_depths(model: torch.nn.Module) -> range:
    """The depths a transformer can cache at: at least one block is cached between the kept ends."""
    return range(0, (len(layout_of(model).sequence_blocks(model)) + 1) // 2)


def _transformer_views(model, depth: int, cache: FeatureCache):
    layout = layout_of(model)
    blocks = list(layout.sequence_blocks(model))
    if depth not in transformer_depths(model):
        raise TechniqueError(
            f"caching.depth={depth} is not valid for this {len(blocks)}-block transformer; valid: "
            f"{list(transformer_depths(model))}"
        )
    first, last = depth, len(blocks) - depth - 1  # the cached span, inclusive
    full = clone(model)
    kept = []
    for index, block in enumerate(blocks):
        if index in (first, last):
            block = _Keep(block, cache, "span", keep_input=index == first, keep_output=index == last, tensors_only=True)
        kept.append(block)
    layout.set_sequence_blocks(full, torch.nn.ModuleList(kept))
    cached = clone(model)
    layout.set_sequence_blocks(
        cached,
        torch.nn.ModuleList(
            _AddResidual(block, cache, "span") if index == first else _Pass(block) if first < index <= last else block
            for index, block in enumerate(blocks)
        ),
    )
    return full, cached


def _cached_share(cached, target) -> float:
    """A cached call's FLOPs over a full call's, on one probe sample (matmuls, convolutions and attention: what
    torch's flop counter counts). Refuses a structure that saves nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    cache = call_controller(cached)
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


class DeepCache(CacheMethod):
    """DeepCache on a UNet's levels, a static block cache on a transformer's blocks."""

    name = "deep"
    order = 1
    settings = ("depth", "interval", "warmup", "tail")

    def check(self, model: torch.nn.Module) -> None:
        layout = layout_of(model)
        if depth_limit(model) < 0:
            raise TechniqueError(
                f"caching.method=deep needs a diffusers UNet or transformer denoiser; {type(model).__name__} is neither"
            )
        if layout.sequence and any(returns_tuples(block) for block in layout.sequence_blocks(model)):
            raise TechniqueError(
                "caching.method=deep on a transformer needs blocks that return the hidden states (joint text-image "
                "blocks are not cached)"
            )

    def install(self, model: torch.nn.Module, config: CachingConfig, target) -> FeatureCache:
        return FeatureCache(model, config)

    def measure(self, cached: torch.nn.Module, target) -> None:
        """A cached call's share of a full one, counted on the cached model (``_cached_share``)."""
        call_controller(cached).cached_share = _cached_share(cached, target)

    def bench_grid(self, knobs, depth_limit: int) -> list[dict]:
        depths = sorted({min(int(depth), depth_limit) for depth in knobs["depths"] if depth_limit >= 0})
        return [
            self.settings_row(depth=depth, interval=int(interval), warmup=int(warmup))
            for depth in depths
            for interval in knobs["intervals"]
            for warmup in knobs["warmups"]
        ]

    def published_defaults(self, timesteps, depth_limit: int) -> tuple[str, dict]:
        depth = min(1, depth_limit)
        return f"default knobs (interval 3, depth {depth})", self.settings_row(depth=depth, interval=3, warmup=0)


DEEP = register_method(DeepCache())
