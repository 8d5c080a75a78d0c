"""Technique ``caching``: reuse computation across a sampling run's denoiser calls, by one of the registered
methods (``autoaccel.techniques.caching.method``).

The cached model is a shallow copy of the model whose forward is its method's per-call controller
(``autoaccel.pipeline.call_control``): the sampling loop asks it to ``prepare`` for a schedule (calibrate), to mark each
``running`` sampling run, and what the ``last_call_share`` of a full forward was. The model itself is never
changed, so other plans and the reference run it intact.
"""

from __future__ import annotations

import torch

from autoaccel.errors import TechniqueError
from autoaccel.pipeline.call_control import attach_controller, call_controller
from autoaccel.targets.denoisers import execution_device
from autoaccel.techniques.base import ParamSpec, SearchWork, Technique, register
from autoaccel.techniques.caching.deep import depth_limit
from autoaccel.techniques.caching.hooks import CALIBRATION_SAMPLES, HookCache
from autoaccel.techniques.caching.method import (
    MAX_FULL_STEPS,
    MAX_INTERVAL,
    MAX_TAYLOR_ORDER,
    CacheMethod,
    CachingConfig,
    clone,
    method_names,
    ordered_methods,
)


def caching_methods() -> tuple[CacheMethod, ...]:
    """Every registered cache method, in order (``caching.method`` takes their names and none)."""
    return ordered_methods()


def cache_methods(model: torch.nn.Module) -> tuple[str, ...]:
    """The ``caching.method`` values ``model`` takes: none and every method that does not refuse it."""
    return ("none", *(method.name for method in caching_methods() if method.refusal(model) is None))


def apply_caching(pipeline, config: CachingConfig, target) -> None:
    if not config.active:
        return
    model = pipeline.denoiser
    if call_controller(model) is not None:
        raise TechniqueError("caching applies once per plan")
    if getattr(model, "student", None) is not None:
        raise TechniqueError(
            "caching does not apply to a plan that hands steps between two models (assignment.teacher_steps > 0); "
            "use assignment.teacher_steps 0 with caching"
        )
    pipeline.denoiser = cached_model(model, config, target)


def cached_model(model: torch.nn.Module, config: CachingConfig, target) -> torch.nn.Module:
    """A shallow copy of ``model`` whose forward is its cache method's controller; ``model`` stays as it was."""
    method = config.cache_method
    controller = method.install(model, config, target)
    cached = clone(model)
    cached.forward = controller.forward
    attach_controller(cached, controller, rebuild=lambda change: cached_model(change(model), config, target))
    method.measure(cached, target)
    return cached


def caching_cost(config: CachingConfig) -> dict:
    """The cache structure decides what a call costs and which calls are cheap: the settings its method reads."""
    if not config.active:
        return {}
    return config.cache_method.cost_key(config)


def caching_recompute(config: CachingConfig) -> str | None:
    """What applying a calibrated cache runs again (its recipe holds no artifact: the values are recomputed)."""
    if not config.active or not config.cache_method.calibrates:
        return None
    return "the cache calibration (one uncached run of its calibration seeds at the plan's schedule)"


def caching_work(config: CachingConfig, target, calls_per_image: float) -> SearchWork:
    """A calibrated cache's uncached run of its calibration seeds at the plan's schedule, per trial (``SearchWork``)."""
    if not config.active or not config.cache_method.calibrates:
        return SearchWork()
    return SearchWork(calibration=CALIBRATION_SAMPLES * calls_per_image)


def caching_record(pipeline, config: CachingConfig) -> dict | None:
    """A calibrated cache's calibration at the pipeline's schedule (computed now if no run has yet), and the
    thresholds it gave: what a recipe records beside the config."""
    cache = call_controller(pipeline.denoiser)
    if not isinstance(cache, HookCache):
        return None
    pipeline.set_schedule(execution_device(pipeline.denoiser))
    cache.prepare(pipeline)
    pipeline.set_schedule(execution_device(pipeline.denoiser))
    return {"calibration": cache.describe(pipeline)}


def caching_limits(target) -> dict[str, int | tuple]:
    """What the denoiser's layout allows: the deepest ``caching.depth`` and the methods it takes."""
    return {"cache_depth_limit": depth_limit(target.denoiser), "cache_methods": cache_methods(target.denoiser)}


CACHING_PARAMS = {
    "method": ParamSpec("choice", choices=method_names(), target_limit="cache_methods", narrows_to_target=True),
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
        target_limits=caching_limits,
        search_work=caching_work,
    )
)
