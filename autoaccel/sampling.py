"""The sampling loop every candidate runs: a diffusers pipeline whose schedule, solver and guidance are a plan.

diffusers' DDPMPipeline/DDIMPipeline take only a step count and no class labels, so a plan's exact timesteps
and classifier-free guidance need a loop of their own. It is deliberately plain: scheduler.set (exact
timesteps) -> for each t: unet (once, or on a doubled batch under guidance) -> scheduler.step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from autoaccel.errors import TechniqueError


def set_exact_timesteps(scheduler, timesteps: list[int], device: torch.device | str = "cpu") -> None:
    """Makes ``scheduler`` run exactly ``timesteps`` (strictly decreasing ints), whatever its API allows.

    Schedulers whose ``set_timesteps`` takes ``timesteps=`` get them directly. Sigma-based multistep schedulers
    that only take a count (UniPC, DEIS) are set for that count, then their ``timesteps`` and ``sigmas`` are
    replaced by the values at the requested steps, keeping the scheduler's own final sigma. Tests check this
    against each scheduler's native output on its own uniform schedule.
    """
    config_before = dict(scheduler.config)
    accepted = inspect.signature(scheduler.set_timesteps).parameters
    if "timesteps" in accepted:
        scheduler.set_timesteps(timesteps=list(timesteps), device=device)
    else:
        _set_sigma_timesteps(scheduler, timesteps, device)
    # Some schedulers rewrite a setting they cannot honour for this schedule (DPM-Solver singlestep forces
    # lower_order_final=True); the plan would then not be what was recorded.
    changed = {
        key: (value, scheduler.config.get(key))
        for key, value in config_before.items()
        if scheduler.config.get(key) != value
    }
    if changed:
        details = ", ".join(f"{key}={wanted!r} (it switched to {used!r})" for key, (wanted, used) in changed.items())
        raise TechniqueError(f"{type(scheduler).__name__} does not support {details} with {len(timesteps)} steps")


def _set_sigma_timesteps(scheduler, timesteps: list[int], device) -> None:
    scheduler.set_timesteps(len(timesteps), device=device)
    if not isinstance(getattr(scheduler, "sigmas", None), torch.Tensor):
        raise TechniqueError(f"{type(scheduler).__name__} cannot run a custom timestep schedule")
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    index = torch.tensor(timesteps, dtype=torch.long)
    sigmas = ((1 - alphas_cumprod[index]) / alphas_cumprod[index]).sqrt().to(torch.float32)
    final_sigma = scheduler.sigmas[-1:].to("cpu", torch.float32)
    # where the scheduler keeps them (UniPC and DEIS keep sigmas on the CPU; DEIS's higher orders need that)
    scheduler.sigmas = torch.cat([sigmas, final_sigma]).to(scheduler.sigmas.device)
    scheduler.timesteps = index.to(device=device, dtype=scheduler.timesteps.dtype)


@dataclass
class SamplingPlan:
    """What the sampling loop needs beyond the unet and the scheduler."""

    timesteps: list[int]
    guidance_scale: float = 1.0
    null_class: int | None = None
    # (technique, config) pairs applied to this pipeline, in order: what its latency is cached by
    techniques: list[tuple[Any, Any]] = field(default_factory=list)
    # technique name -> sha256 of the artifact its model was stored as (in the run's artifacts/), if any
    artifacts: dict[str, str] = field(default_factory=dict)


class SamplerPipeline(DiffusionPipeline):
    """A UNet2DModel + any scheduler, run on an exact timestep list with optional classifier-free guidance.

    ``autoaccel.apply_recipe`` returns one of these around a loaded pipeline's unet. Calling it with the same
    noise seed and class labels reproduces the images a recipe was scored on.
    """

    def __init__(self, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.plan = SamplingPlan(timesteps=[])
        self.unet_calls = 0

    @property
    def guided(self) -> bool:
        return self.plan.guidance_scale != 1.0 and self.plan.null_class is not None

    def _predict(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None):
        if not self.guided or class_labels is None:
            self.unet_calls += 1
            return self.unet(sample, timestep, class_labels=class_labels).sample
        null = torch.full_like(class_labels, self.plan.null_class)
        both = self.unet(torch.cat([sample, sample]), timestep, class_labels=torch.cat([class_labels, null])).sample
        self.unet_calls += 2
        conditional, unconditional = both.chunk(2)
        return unconditional + self.plan.guidance_scale * (conditional - unconditional)

    @torch.no_grad()
    def __call__(
        self,
        noise: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pt",
    ):
        """Denoises ``noise`` (N, C, H, W) along the plan; returns images in [-1, 1] (``pt``) or PIL images."""
        if not self.plan.timesteps:
            raise TechniqueError("the pipeline has no timesteps: apply a plan or recipe first")
        device = self.unet.device
        set_exact_timesteps(self.scheduler, self.plan.timesteps, device=device)
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        sample = noise.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        labels = class_labels.to(device) if class_labels is not None else None
        self.unet_calls = 0
        for timestep in self.scheduler.timesteps:
            model_input = self.scheduler.scale_model_input(sample, timestep)
            prediction = self._predict(model_input, timestep, labels)
            extra = {"generator": generator} if takes_generator else {}
            sample = self.scheduler.step(prediction, timestep, sample, **extra).prev_sample
        images = sample.float().cpu()
        if output_type == "pt":
            return ImagePipelineOutput(images=images)
        from autoaccel.imaging import to_pil_images

        return ImagePipelineOutput(images=to_pil_images(images))
