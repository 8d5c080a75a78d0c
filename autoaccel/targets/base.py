"""What is accelerated: a loaded denoiser with its conditioning, decoder and scheduler, and how its quality is
judged."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoaccel.targets.conditions import CLASS, NONE, Conditions
from autoaccel.targets.denoisers import sample_shape
from autoaccel.targets.layouts import ScheduleFamily, schedule_family_of

# A denoiser of more parameters than this trains its students and recovery as LoRA adapters where the setting is
# ``auto`` (``autoaccel.distill.adapters``): below it a float32 copy is under 800 MB (the embedded models), above it
# (an SD 1.x UNet has 860M, SDXL's 2.6B, Flux's transformer 12B) every student would be gigabytes
LORA_PARAMETERS = 200_000_000


@dataclass
class QualityReference:
    """How candidates' images are scored: a feature extractor and where the reference images come from.

    ``kind`` is ``real-data`` (the training data ships with the target) or ``reference-samples`` (the reference
    call's own samples on the same seeds, generated once and cached).
    """

    extractor: str
    kind: str
    description: str


@dataclass
class DefaultCall:
    """What the pipeline runs when a user calls it with no options: its saved scheduler at this step count and
    guidance scale (diffusers' defaults for the pipeline class, or the folder's ``autoaccel.json``)."""

    steps: int
    guidance_scale: float = 1.0

    def describe(self) -> str:
        guidance = f", guidance {self.guidance_scale:g}" if self.guidance_scale != 1.0 else ""
        return f"{self.steps} steps{guidance}"


@dataclass
class Target:
    """A diffusion model ready to be accelerated; techniques apply to the pipelines
    ``autoaccel.pipeline.sampling.sampler_pipeline`` makes around it.

    ``denoiser`` is the network every step calls (a UNet or a transformer), ``vae`` decodes its latents (None
    for a pixel-space model), ``conditions`` what each image is conditioned on, ``schedule_family`` the time
    variable of its scheduler (``ddpm`` or ``flow``; ``schedule`` is its ``ScheduleFamily``).
    """

    name: str
    path: Path
    denoiser: torch.nn.Module
    scheduler_config: dict
    scheduler_class: str
    content_hash: str
    quality: QualityReference
    conditions: Conditions = field(default_factory=Conditions)
    vae: torch.nn.Module | None = None
    default_call: DefaultCall | None = None
    pipeline_class: str = "DDPMPipeline"
    reference: str = "default"  # target.reference: the call plans are compared with (autoaccel.reference.sampling)
    ode_steps: int = 200  # quality.ode_steps: the deterministic solution paired measures compare with
    real_images: torch.Tensor | None = None  # uint8 (N, C, H, W) when the target ships its data
    real_labels: torch.Tensor | None = None  # the class of each real image, where known
    # the pipeline's other modules (VAE, text encoders), by name: they shape the images, so the hash covers them
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    offload: str = "none"  # target.offload: its modules live in CPU memory and run on the GPU (loader.OFFLOADS)

    @property
    def num_classes(self) -> int | None:
        """Class-conditional models: the number of classes (without the null class)."""
        return self.conditions.count if self.conditions.kind == CLASS else None

    @property
    def null_class(self) -> int | None:
        return self.conditions.null_class if self.conditions.kind == CLASS else None

    @property
    def condition_count(self) -> int | None:
        """How many distinct conditions a seed batch balances over: classes or prompts (None: unconditional)."""
        return self.conditions.count if self.conditions.kind != NONE else None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape of one initial noise: the denoiser's sample (latents under a VAE)."""
        return sample_shape(self.denoiser)

    @property
    def schedule(self) -> ScheduleFamily:
        """The time variable of the model's scheduler, and what follows from it."""
        return schedule_family_of({"_class_name": self.scheduler_class, **self.scheduler_config})

    @property
    def schedule_family(self) -> str:
        return self.schedule.name

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def limits(self) -> dict[str, int | tuple]:
        """What the model itself bounds in a space (``ParamSpec.target_limit`` names them); techniques add the
        limits they read off the denoiser's layout (``autoaccel.techniques.base.target_limits``)."""
        return {"num_train_timesteps": self.num_train_timesteps}

    @property
    def capabilities(self) -> set[str]:
        """What dimensions may ``require``: ``guidance`` (a null condition), ``distillation`` (DDPM family),
        ``lora`` (a denoiser of more than ``LORA_PARAMETERS``: its students train LoRA adapters by default)."""
        found = {"guidance"} if self.conditions.guidable else set()
        found |= {"lora"} if sum(p.numel() for p in self.denoiser.parameters()) > LORA_PARAMETERS else set()
        return found | ({"distillation"} if self.schedule.distillable else set())

    @property
    def reference_call(self) -> DefaultCall:
        """The default call, or for a model without one the full trained schedule of its own scheduler."""
        return self.default_call or DefaultCall(self.num_train_timesteps, 1.0)

    @property
    def reference_guidance(self) -> float:
        """The guidance scale the reference call (and a teacher) runs at: the default call's, 1.0 for a model that
        takes no guidance."""
        return float(self.reference_call.guidance_scale) if self.conditions.guidable else 1.0


def hash_weights(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names, shapes, dtypes, bytes): the identity a recipe is checked against.

    Taken from the loaded weights rather than files, so it is the same however the model was saved or loaded.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
