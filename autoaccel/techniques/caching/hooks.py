"""diffusers' own feature caches on a transformer, driven by autoaccel's sampling loop and calibrated per schedule:
what the methods ``first_block``, ``mag``, ``taylorseer`` and ``pab`` (one module each) share.

diffusers applies each as hooks on a model's blocks or
attention modules, keyed by the cache context a pipeline sets around each call; autoaccel applies them to a copy of
the model's module tree (sharing its weights, so the model other plans run stays unhooked) and sets the context
around every call of its own sampling loop.

Calibration, per model and schedule: before the first run at a schedule, the plan's own pipeline runs it once
uncached on calibration seeds (never scoring seeds) and records what the thresholds are compared with: the first
block's relative residual change per call (FirstBlockCache's test) and the magnitude ratio of the blocks' residual
per call (MagCache's ``mag_ratios``, by MagCache's formula: diffusers' calibration mode only prints them). A
threshold is the ``strength`` quantile of those values, so no candidate is inert (nothing cached) or degenerate
(everything cached); a raw ``threshold`` (a library default) is taken as given. The calibration is a function of
the model, the schedule and the calibration seeds, so every cache of the model shares it and applying a recipe
computes the same values and reproduces its images.

What a call costs (the NFE it counts as): its FLOPs over a full call's, from the units that ran (blocks, or the
attention and feed-forward modules), each unit's FLOPs counted once by ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import copy
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from autoaccel.errors import TechniqueError
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.targets.denoisers import predict
from autoaccel.targets.layouts import layout_of
from autoaccel.techniques.caching.method import CacheMethod, CachingConfig, hidden_argument, probe_inputs

CALIBRATION_SAMPLES = 8
CALIBRATION_SEED = 30_000  # apart from scoring, trajectory and noised-batch seeds
_CALIBRATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> schedule key -> Calibration


@dataclass(frozen=True)
class Calibration:
    """What one uncached run at a schedule recorded, per call (the first call has nothing to compare with)."""

    calls: int
    first_block_changes: tuple[float, ...]  # |r_t - r_{t-1}| / |r_{t-1}| of the first block's residual, t >= 1
    magnitude_ratios: tuple[float, ...]  # mean token-norm ratio of the blocks' residual to the last call's; 1.0 first

    def quantile(self, method: str, values: tuple[float, ...], strength: float, retained: int) -> float:
        """The ``strength`` quantile of ``values`` (what ``method`` compares its threshold with, past the
        ``retained`` calls that never cache)."""
        if not values:
            raise TechniqueError(
                f"caching.method={method} has no calls to cache at {self.calls} steps after {retained} kept: "
                "use more steps or fewer warm-up steps"
            )
        return float(torch.quantile(torch.tensor(values, dtype=torch.float64), strength))

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "first_block_changes": [round(value, 6) for value in self.first_block_changes],
            "magnitude_ratios": [round(value, 6) for value in self.magnitude_ratios],
        }


@dataclass
class _Recorder:
    """The calibration pass's running record."""

    head_input: torch.Tensor | None = None
    head_output: torch.Tensor | None = None
    tail_output: torch.Tensor | None = None
    head_residual: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    changes: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def end_call(self) -> None:
        head_residual = self.head_output - self.head_input
        residual = self.tail_output - self.head_input
        if self.head_residual is not None:
            change = (head_residual - self.head_residual).abs().mean() / self.head_residual.abs().mean()
            self.changes.append(float(change))
        if self.residual is None:
            self.ratios.append(1.0)
        else:
            norms = torch.linalg.norm(residual.float(), dim=-1), torch.linalg.norm(self.residual.float(), dim=-1)
            self.ratios.append(float((norms[0] / (norms[1] + 1e-8)).mean()))
        self.head_residual, self.residual = head_residual, residual


@dataclass
class _Run:
    calls: int
    done: int = 0
    spent: float = 0.0  # FLOPs of the units the current call ran
    last_share: float = 1.0


def clone_tree(module: torch.nn.Module) -> torch.nn.Module:
    """The module tree copied module by module, sharing parameters and buffers: hooks set on the copy (as
    instance attributes) leave the original as it is."""
    clone = copy.copy(module)
    clone._modules = {name: clone_tree(child) if child is not None else None for name, child in module._modules.items()}
    return clone


def block_lists(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks in run order, as diffusers' block caches find them."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return [
        block
        for name, child in model.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList)
        for block in child
    ]


def _hidden_states(block: torch.nn.Module, output):
    if not isinstance(output, tuple):
        return output
    from diffusers.hooks._helpers import TransformerBlockRegistry

    return output[TransformerBlockRegistry.get(type(block)).return_hidden_states_index]


class HookMethod(CacheMethod):
    """A method applied as diffusers hooks on a copy of the model's module tree, calibrated per schedule."""

    calibrates = True
    thresholded = False  # compares a calibrated threshold (``threshold`` and ``strength`` apply)

    def units(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The modules the method may skip, whose runs a call's cost is counted from."""
        raise NotImplementedError

    def check(self, model: torch.nn.Module) -> None:
        if not layout_of(model).sequence:
            raise TechniqueError(
                f"caching.method={self.name} is one of diffusers' transformer caches; {type(model).__name__} is not "
                "a transformer (use caching.method deep on a UNet)"
            )
        if any(hasattr(module, "_diffusers_hook") for module in model.modules()):
            raise TechniqueError(f"caching.method={self.name} needs a model without diffusers hooks of its own")
        self.check_blocks(model, block_lists(model))
        if not self.units(model):
            raise TechniqueError(f"caching.method={self.name} finds nothing to cache in {type(model).__name__}")

    def check_blocks(self, model: torch.nn.Module, blocks: list[torch.nn.Module]) -> None:
        """Refuses blocks the method's hooks cannot run on (nothing to refuse by default)."""

    def install(self, model: torch.nn.Module, config: CachingConfig, target) -> HookCache:
        return HookCache(model, config, target, self)

    def hook(self, model: torch.nn.Module, config: CachingConfig, cache: HookCache) -> Settings:
        """Applies diffusers' hooks to ``model`` (the hooked copy); what a run's schedule sets on them."""
        raise NotImplementedError

    def threshold(self, config: CachingConfig, calibration: Calibration) -> float:
        """The raw threshold given, else the ``strength`` quantile of the calibration."""
        raise TechniqueError(f"caching.method={self.name} compares no threshold")


class ThresholdMethod(HookMethod):
    """A hook method that caches a call when a calibrated difference is under a threshold."""

    thresholded = True

    def units(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return block_lists(model)

    def check_blocks(self, model: torch.nn.Module, blocks: list[torch.nn.Module]) -> None:
        from diffusers.hooks._helpers import TransformerBlockRegistry

        layout_of(model).describe_blocks_to_diffusers(model)
        if len(blocks) < 2:
            raise TechniqueError(
                f"caching.method={self.name} needs at least two transformer blocks; found {len(blocks)}"
            )
        for block in {type(block) for block in blocks}:
            try:
                TransformerBlockRegistry.get(block)
            except ValueError:
                raise TechniqueError(
                    f"caching.method={self.name}: diffusers does not know the outputs of {block.__name__} blocks"
                ) from None

    def calibrated_values(self, calibration: Calibration, retained: int) -> tuple[float, ...]:
        """What the threshold is compared with, per call past the ``retained`` ones that never cache."""
        raise NotImplementedError

    def retained(self, config: CachingConfig) -> int:
        """The calls at a run's start that never cache."""
        return 0

    def threshold(self, config: CachingConfig, calibration: Calibration) -> float:
        if config.threshold is not None:
            return float(config.threshold)
        retained = self.retained(config)
        values = self.calibrated_values(calibration, retained)
        return calibration.quantile(self.name, values, config.strength, retained)


class HookCache:
    """The controller set on a model cached with diffusers' hooks: the hooked and plain views, each schedule's
    calibration, and what the last call cost. One sampling run at a time (diffusers' hook state is the model's)."""

    def __init__(self, model: torch.nn.Module, config: CachingConfig, target, method: HookMethod) -> None:
        method.check(model)
        self.config, self.target, self.method = config, target, method
        self.lock = threading.RLock()
        self.plain = clone_tree(model)  # uncached: calibration runs and calls outside a sampling run
        self.hooked = clone_tree(model)
        self.run: _Run | None = None
        self.recorder: _Recorder | None = None
        # shared by every cache of this model: a calibration depends on the model and the schedule alone
        self.calibrations: dict[tuple, Calibration] = _CALIBRATIONS.setdefault(model, {})
        self.probe: object | None = None  # the flop counter while unit costs are counted
        plain_units, hooked_units = method.units(self.plain), method.units(self.hooked)
        self.unit_flops = [0.0] * len(plain_units)
        for index, (plain, hooked) in enumerate(zip(plain_units, hooked_units, strict=True)):
            plain.forward = self._measured(plain.forward, index)
            hooked.forward = self._counted(hooked.forward, index)
        blocks = block_lists(self.plain)
        if blocks:
            blocks[0].forward = self._recorded(blocks[0], blocks[0].forward, head=True)
            blocks[-1].forward = self._recorded(blocks[-1], blocks[-1].forward, head=False)
        self.total_flops = self._count_flops()
        self.settings = method.hook(self.hooked, config, self)

    # -------------------------------------------------------------------------------------------- unit wrappers
    def _measured(self, forward, index: int):
        def measured(*args, **keywords):
            if self.probe is None:
                return forward(*args, **keywords)
            before = self.probe.get_total_flops()
            output = forward(*args, **keywords)
            self.unit_flops[index] += self.probe.get_total_flops() - before
            return output

        return measured

    def _counted(self, forward, index: int):
        def counted(*args, **keywords):
            if self.run is not None:
                self.run.spent += self.unit_flops[index]
            return forward(*args, **keywords)

        return counted

    def _recorded(self, block, forward, head: bool):
        def recorded(*args, **keywords):
            output = forward(*args, **keywords)
            recorder = self.recorder
            if recorder is not None:
                hidden = _hidden_states(block, output)
                if head:
                    recorder.head_input = hidden_argument(args, keywords)
                    recorder.head_output = hidden
                else:
                    recorder.tail_output = hidden
            return output

        return recorded

    def _count_flops(self) -> float:
        """A full call's FLOPs on one probe sample, and each unit's share of them (``unit_flops``)."""
        from torch.utils.flop_counter import FlopCounterMode

        sample, timestep, keywords = probe_inputs(self.plain, self.target)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.probe = counter
            try:
                predict(self.plain, sample, timestep, keywords)
            finally:
                self.probe = None
        total = float(counter.get_total_flops())
        if not total or not sum(self.unit_flops):
            raise TechniqueError(f"caching.method={self.config.method} finds no FLOPs to save on this model")
        self.fixed_flops = total - sum(self.unit_flops)  # what runs at every call, whatever the hooks skip
        return total

    # --------------------------------------------------------------------------------------------- sampling runs
    def prepare(self, pipeline) -> None:
        """Calibrates for the pipeline's current schedule unless done (a calibration pass steps the scheduler
        through: the caller sets the schedule again)."""
        with self.lock:
            if self.recorder is None and _schedule_key(pipeline) not in self.calibrations:
                self.calibrations[_schedule_key(pipeline)] = self._calibrate(pipeline)

    def _calibrate(self, pipeline) -> Calibration:

        target = self.target
        seeds = make_seed_batch(target.sample_shape, CALIBRATION_SAMPLES, CALIBRATION_SEED, target.condition_count)
        self.recorder = _Recorder()
        try:
            pipeline(seeds.noise, seeds.class_labels, generator=torch.Generator().manual_seed(CALIBRATION_SEED))
            recorder = self.recorder
        finally:
            self.recorder = None
        return Calibration(len(recorder.ratios), tuple(recorder.changes), tuple(recorder.ratios))

    def calibration(self, pipeline) -> Calibration | None:
        return self.calibrations.get(_schedule_key(pipeline))

    def describe(self, pipeline) -> dict:
        """The calibration at the pipeline's schedule, the calibration seeds and the threshold it gives."""
        calibration, config = self.calibration(pipeline), self.config
        described = {"seed": CALIBRATION_SEED, "samples": CALIBRATION_SAMPLES, **calibration.as_dict()}
        if self.method.thresholded:
            described["threshold"] = self.method.threshold(config, calibration)
        return described

    @contextmanager
    def running(self, pipeline):
        """One sampling run: the hooks set for its schedule's calibration, their state fresh, the lock held."""
        with self.lock:
            if self.recorder is not None:  # the calibration pass itself: every call runs the whole model
                yield
                return
            calibration = self.calibrations[_schedule_key(pipeline)]
            calls = len(pipeline.scheduler.timesteps)
            self.settings.configure(calibration, calls)
            _reset_hooks(self.hooked)
            self.run = _Run(calls)
            try:
                yield
            finally:
                self.run = None
                _reset_hooks(self.hooked)

    def last_call_share(self) -> float:
        """What the last call cost in full forwards."""
        return self.run.last_share if self.run is not None else 1.0

    def in_window(self) -> bool:
        """Whether the current call may reuse (past the warm-up calls, before the tail ones)."""
        run, config = self.run, self.config
        return run is not None and config.warmup <= run.done < run.calls - config.tail

    def forward(self, *args, **keywords):
        with self.lock:  # re-entrant: the thread that holds a run or a calibration pass goes on
            run = self.run
            if run is None:  # a calibration pass, or a call outside a sampling run: the whole model
                output = self.plain(*args, **keywords)
                if self.recorder is not None:
                    self.recorder.end_call()
                return output
            run.spent = 0.0
            with _cache_context(self.hooked, run):
                output = self.hooked(*args, **keywords)
            run.last_share = (self.fixed_flops + run.spent) / self.total_flops
            run.done += 1
            return output


def _reset_hooks(model: torch.nn.Module) -> None:
    """Every hook's state back to a run's start (what ``CacheMixin._reset_stateful_cache`` does, for any model)."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks(recurse=True)


@contextmanager
def _cache_context(model: torch.nn.Module, run: _Run):
    """The context diffusers' pipelines set around a call (``CacheMixin.cache_context``), for any model."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(model, CacheContext("denoise", step_index=run.done, num_inference_steps=run.calls))
    try:
        yield
    finally:
        _set_cache_context(model, None)


def _schedule_key(pipeline) -> tuple:
    """What a calibration is valid for: the model's trajectory is fixed by the schedule, solver and guidance."""
    scheduler = pipeline.scheduler
    return (
        type(scheduler).__name__,
        tuple(float(step) for step in scheduler.timesteps),
        tuple(sorted((key, repr(value)) for key, value in dict(scheduler.config).items())),
        float(pipeline.plan.guidance_scale),
        pipeline.plan.null_class,
    )


# ------------------------------------------------------------------------------------------------ diffusers' hooks
class Settings:
    """What a run's schedule sets on the installed hooks (nothing, by default)."""

    def configure(self, calibration: Calibration, calls: int) -> None:
        pass
