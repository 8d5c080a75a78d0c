"""A model that must be sampled its own way: a distilled student runs the scheduler, timesteps and guidance it was
trained for, whatever solver and timesteps the rest of a plan names.

A model technique attaches a ``PrescribedSampler`` to the denoiser it produces (``prescribe``); ``apply_plan``
and the evaluator call ``apply_prescribed`` after every sampler technique, so the prescription always wins. The
prescription travels with the denoiser object, so a model reused from the evaluator's cache or rebuilt from an
artifact brings it along, and applying a recipe derives the scheduler and timesteps from it again.

A model may carry its own decoder the same way (``carry_decoder``: a tiny autoencoder distilled from the model's
VAE): ``apply_prescribed`` makes it the pipeline's ``vae``, so a model reused or restored decodes as it was built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from autoaccel.errors import RecipeError
from autoaccel.schedules.schedulers import (
    MAX_INFERENCE_STEPS,
    check_scheduler_settings,
    is_timestep_schedule,
    sampler_schedulers,
    scheduler_class,
    scheduler_from_settings,
)
from autoaccel.schedules.solvers import check_guidance_scale

PRESCRIBED = "prescribed_sampler"  # the attribute a prescribing denoiser carries
DECODER = "carried_decoder"  # the attribute of a denoiser that brings its own decoder (not a submodule)


@dataclass(frozen=True)
class PrescribedSampler:
    """The scheduler class with its settings over the model's saved config, the exact timesteps, and the guidance
    scale (1.0 for a student with guidance trained in)."""

    scheduler_class: str
    timesteps: tuple[int, ...]
    guidance_scale: float = 1.0
    settings: dict = field(default_factory=dict)


def read_prescription(stored: Any, num_train_timesteps: int, source: str) -> PrescribedSampler:
    """The prescription an artifact's metadata holds (``source`` names it), checked before anything is built from
    it: a scheduler a plan may run (``autoaccel.schedules.schedulers``) with bounded settings, strictly decreasing
    timesteps within the model's trained range, and a guidance scale in range; else a RecipeError naming the bad
    value."""
    keys = ("scheduler_class", "timesteps", "guidance_scale", "settings")
    if not isinstance(stored, dict) or any(key not in stored for key in keys):
        raise RecipeError(f"{source} must be a mapping with {', '.join(keys)}")
    scheduler_class(stored["scheduler_class"], f"{source}.scheduler_class", sampler_schedulers(), RecipeError)
    check_scheduler_settings(stored["settings"], f"{source}.settings", RecipeError)
    timesteps = stored["timesteps"]
    if not is_timestep_schedule(timesteps, num_train_timesteps):
        shown = repr(timesteps) if len(repr(timesteps)) <= 80 else repr(timesteps)[:77] + "..."
        raise RecipeError(
            f"{source}.timesteps={shown} must be 1 to {MAX_INFERENCE_STEPS} strictly decreasing ints in "
            f"[0, {num_train_timesteps - 1}]"
        )
    guidance = check_guidance_scale(stored["guidance_scale"], f"{source}.guidance_scale", RecipeError)
    return PrescribedSampler(stored["scheduler_class"], tuple(timesteps), guidance, dict(stored["settings"]))


def prescribe(denoiser: torch.nn.Module, sampler: PrescribedSampler, share: bool = False) -> torch.nn.Module:
    """``denoiser`` carrying ``sampler``. ``share``: the denoiser is the target's own (a learned schedule changes
    no weight), so a shallow copy carries it and the target's module stays untouched."""
    carrier = copy.copy(denoiser) if share else denoiser
    object.__setattr__(carrier, PRESCRIBED, sampler)
    return carrier


def prescription(denoiser) -> PrescribedSampler | None:
    return getattr(denoiser, PRESCRIBED, None)


def carry_decoder(denoiser: torch.nn.Module, decoder: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``denoiser`` (its weights shared, the module itself untouched) carrying ``decoder``."""
    carrier = copy.copy(denoiser)
    object.__setattr__(carrier, DECODER, decoder)
    return carrier


def carried_decoder(denoiser) -> torch.nn.Module | None:
    return getattr(denoiser, DECODER, None)


def replace_carried_decoder(denoiser: torch.nn.Module, decoder: torch.nn.Module) -> None:
    """Makes ``denoiser`` (a copy its caller owns, e.g. the runtime's cast model) carry ``decoder`` instead, where
    it carries one: what ``apply_prescribed`` then decodes with."""
    if carried_decoder(denoiser) is not None:
        object.__setattr__(denoiser, DECODER, decoder)


def apply_prescribed(pipeline, target) -> None:
    """Sets the pipeline's decoder to the one its denoiser carries, and its scheduler, timesteps and guidance to
    its denoiser's prescription, where it has them."""
    decoder = carried_decoder(pipeline.denoiser)
    if decoder is not None:
        pipeline.vae = decoder
    sampler = prescription(pipeline.denoiser)
    if sampler is None:
        return
    base = {key: value for key, value in target.scheduler_config.items() if not key.startswith("_")}
    pipeline.scheduler = scheduler_from_settings(sampler.scheduler_class, base, dict(sampler.settings), "student")
    pipeline.plan.timesteps = [int(step) for step in sampler.timesteps]
    pipeline.plan.sigmas = []
    pipeline.plan.native_steps = None
    pipeline.plan.guidance_scale = float(sampler.guidance_scale)
    pipeline.plan.null_class = target.null_class
