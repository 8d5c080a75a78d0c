"""What is accelerated: a loaded UNet with its scheduler config, and how its quality is judged."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoaccel.sampling import SamplerPipeline


@dataclass
class QualityReference:
    """How candidates' images are scored: a feature extractor and where the reference images come from.

    ``kind`` is ``real-data`` (the training data ships with the target) or ``teacher-samples`` (the model's own
    full-step sampler on the same seeds, generated once and cached).
    """

    extractor: str
    kind: str
    description: str


@dataclass
class Target:
    """A diffusion model ready to be accelerated; techniques apply to pipelines made by ``make_pipeline``."""

    name: str
    path: Path
    unet: torch.nn.Module
    scheduler_config: dict
    scheduler_class: str
    content_hash: str
    quality: QualityReference
    num_classes: int | None = None
    null_class: int | None = None
    real_images: torch.Tensor | None = None  # uint8 (N, C, H, W) when the target ships its data
    metadata: dict = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (config.in_channels, height, width)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def capabilities(self) -> set[str]:
        return {"guidance"} if self.null_class is not None else set()

    def make_pipeline(self) -> SamplerPipeline:
        """A fresh pipeline around the target's unet (shared, not copied: sampler techniques leave it alone)."""
        import diffusers

        scheduler = getattr(diffusers, self.scheduler_class).from_config(self.scheduler_config)
        pipeline = SamplerPipeline(unet=self.unet, scheduler=scheduler)
        pipeline.plan.null_class = self.null_class
        return pipeline


def hash_weights(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names, shapes, dtypes, bytes): the identity a recipe is checked against.

    Taken from the loaded weights rather than files, so it is the same however the model was saved or loaded.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def target_from_unet(unet: torch.nn.Module, scheduler_config: dict, null_class: int | None, base_model: dict) -> Target:
    """A Target around an already loaded unet, for re-applying a recipe's model techniques outside a run."""
    from autoaccel.measure.features import GENERIC_EXTRACTOR

    num_class_embeds = unet.config.num_class_embeds
    num_classes = (num_class_embeds - (1 if null_class is not None else 0)) if num_class_embeds else None
    return Target(
        name=str(base_model.get("name", "model")),
        path=Path(str(base_model.get("path", "."))),
        unet=unet,
        scheduler_config={key: value for key, value in scheduler_config.items() if not key.startswith("_")},
        scheduler_class="DDPMScheduler",
        content_hash=str(base_model.get("content_hash", "")),
        quality=QualityReference(GENERIC_EXTRACTOR, "none", "not scored"),
        num_classes=num_classes,
        null_class=null_class,
    )
