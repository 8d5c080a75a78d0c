"""Which candidates run the same plan. Different parameters can run the very same computation: a solver order that
a three-step schedule cannot use, two schedule families that round to the same integer timesteps. Such candidates
are one plan: measured once and shown once.

The sampler part of a plan is identified by running it, not by reading its parameters: the plan's own scheduler,
timesteps and guidance integrate a tiny fixed probe denoiser from fixed noise, and the result's bytes are the
identity. Two plans whose arithmetic is the same give the same bytes; any difference in the scheme (an order used,
a timestep, a guidance scale, a stochastic step) changes them. The model part (pruning, quantization) is identified
by its technique configs. The probe costs a few milliseconds: no real model runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

import torch

from autoaccel.plan.apply import build_pipeline
from autoaccel.plan.candidate import to_plain
from autoaccel.plan.steps import Plan
from autoaccel.targets.conditions import CLASS, Conditions

PROBE_SEED = 20261129
PROBE_SIZE = 2  # probe images are PROBE_SIZE x PROBE_SIZE pixels of the model's channels


class ProbeDenoiser(torch.nn.Module):
    """A fixed nonlinear function of (sample, timestep, class) with a UNet's calling convention."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(PROBE_SEED)
        self.register_buffer("mix", torch.randn(channels, channels, generator=generator) / math.sqrt(channels))
        self.register_buffer("label_shift", torch.randn(classes, channels, generator=generator))

    @property
    def device(self) -> torch.device:
        return self.mix.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mix.dtype

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None) -> SimpleNamespace:
        time = (torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1) / 1000.0).expand(len(sample))
        time = time[:, None, None, None]
        hidden = torch.einsum("nchw,dc->ndhw", sample, self.mix) + torch.sin(7.3 * time + 0.5)
        if class_labels is not None:
            hidden = hidden + self.label_shift[class_labels][..., None, None]
        return SimpleNamespace(sample=torch.sin(hidden) * (1.0 + time))  # nonlinear, never saturating


def described(steps: Plan) -> list[tuple[str, int, Any]]:
    """Each step's technique, version and config, as plain values."""
    return [(technique.name, technique.version, to_plain(asdict(config))) for technique, config in steps]


def plan_key(target, plan: Plan | Iterable[tuple[Any, Any]]) -> str:
    """A short hash that is equal for two plans exactly when they run the same computation on ``target``."""
    plan = Plan.of(plan)
    if plan.prescribing:
        # a distilled model runs its own sampler: the probe cannot see it, so every technique's config is the plan
        return hashlib.sha1(json.dumps(described(plan), sort_keys=True).encode()).hexdigest()[:12]
    model_part = described(plan.model_steps)
    pipeline = build_pipeline(target, plan.sampler_steps)
    channels = target.sample_shape[0]
    # two conditions and, where the model has one, a null condition: guidance changes the probe's result
    # exactly when it would change the model's
    conditioned = target.condition_count is not None
    null = 2 if target.conditions.guidable else None
    pipeline.conditions = Conditions(CLASS, 2, null_class=null) if conditioned else Conditions()
    pipeline.denoiser, pipeline.vae, pipeline.plan.null_class = ProbeDenoiser(channels, 3), None, None
    generator = torch.Generator().manual_seed(PROBE_SEED)
    noise = torch.randn((2, channels, PROBE_SIZE, PROBE_SIZE), generator=generator)
    labels = torch.tensor([0, 1]) if conditioned else None
    images = pipeline(noise, labels, generator=torch.Generator().manual_seed(PROBE_SEED)).images
    digest = hashlib.sha1(json.dumps([model_part, pipeline.denoiser_calls], sort_keys=True).encode())
    digest.update(images.numpy().tobytes())
    return digest.hexdigest()[:12]
