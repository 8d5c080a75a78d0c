"""Technique ``pruning``: a physically smaller UNet through torch-pruning (channels removed, not masked).

Structured pruning of a diffusers UNet2DModel: a global ratio scaled per stage (down, mid, up blocks), an
importance criterion (weight magnitude; Taylor, from the gradient of the denoising loss on the teacher's own
samples; random, as a control), and whole attention heads rather than head dimensions (thinner heads made CPU
attention slower). Training-free unless ``recovery_steps`` > 0: then a short distillation pulls the pruned
model's predictions towards the teacher's on noised teacher samples (no external data).

The pruned model is a copy: the target's unet is never touched. Its weights are stored as an artifact
(``autoaccel.artifacts``): a recipe rebuilds the pruned structure (only the shapes matter, so no recovery and no
teacher) and loads them, never training again. Everything is seeded, so without an artifact (a recipe written
without a store) applying the same config to the same model gives the same weights on the same machine.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.techniques.base import ParamSpec, Technique, register, require_types

IMPORTANCES = ("magnitude", "taylor", "random")
CALIBRATION_SAMPLES = 64


@dataclass(frozen=True)
class PruningConfig:
    """``ratio`` of channels removed overall; ``down``/``mid``/``up`` scale it per stage (1.0 = same ratio)."""

    ratio: float = 0.0
    down: float = 1.0
    mid: float = 1.0
    up: float = 1.0
    importance: str = "magnitude"
    prune_heads: bool = True
    recovery_steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        number = (int, float)
        types = {"ratio": number, "down": number, "mid": number, "up": number, "importance": str}
        require_types(self, "pruning", {**types, "prune_heads": bool, "recovery_steps": int, "seed": int})
        if not 0.0 <= self.ratio < 0.9:
            raise ConfigError(f"pruning.ratio={self.ratio} is not valid; it must be in [0, 0.9)")
        for stage in ("down", "mid", "up"):
            scale = getattr(self, stage)
            if not 0.0 <= scale * self.ratio < 0.95 or scale < 0:
                raise ConfigError(f"pruning.{stage}={scale} is not valid; need 0 <= {stage} * ratio < 0.95")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"pruning.importance={self.importance!r} is not valid; valid: {list(IMPORTANCES)}")
        if isinstance(self.recovery_steps, bool) or not isinstance(self.recovery_steps, int) or self.recovery_steps < 0:
            raise ConfigError(f"pruning.recovery_steps={self.recovery_steps!r} is not valid; it must be an int >= 0")


# What a space may set; ``stage * ratio < 0.95`` is checked by PruningConfig per candidate.
PRUNING_PARAMS = {
    "ratio": ParamSpec("float", low=0.0, high=0.9, high_open=True),
    "down": ParamSpec("float", low=0.0),
    "mid": ParamSpec("float", low=0.0),
    "up": ParamSpec("float", low=0.0),
    "importance": ParamSpec("choice", choices=IMPORTANCES),
    "prune_heads": ParamSpec("bool"),
    "recovery_steps": ParamSpec("int", low=0),
    "seed": ParamSpec("int", low=0, high=2**32 - 1),
}


def _example_inputs(unet, count: int, generator: torch.Generator) -> dict:
    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    inputs = {
        "sample": torch.randn(count, config.in_channels, size, size, generator=generator).to(unet.device),
        "timestep": torch.randint(0, 1000, (count,), generator=generator).to(unet.device),
    }
    if config.num_class_embeds:
        inputs["class_labels"] = torch.randint(0, config.num_class_embeds, (count,), generator=generator).to(
            unet.device
        )
    return inputs


def _teacher_batch(target, unet, count: int, generator: torch.Generator) -> dict:
    """Noised teacher samples at random timesteps: calibration and recovery data without any dataset."""
    from autoaccel.seeds import make_seed_batch
    from autoaccel.teacher import ode_reference_pipeline

    seeds = make_seed_batch(target.sample_shape, count, 10_000 + int(generator.initial_seed()), target.num_classes)
    pipeline = ode_reference_pipeline(target)
    pipeline.plan.timesteps = pipeline.plan.timesteps[:: max(1, len(pipeline.plan.timesteps) // 25)]
    clean = pipeline(seeds.noise, seeds.class_labels).images.to(unet.device)
    alphas = pipeline.scheduler.alphas_cumprod.to(unet.device)
    timesteps = torch.randint(0, len(alphas), (count,), generator=generator).to(unet.device)
    noise = torch.randn(clean.shape, generator=generator).to(unet.device)
    abar = alphas[timesteps].view(-1, 1, 1, 1)
    batch = {"sample": abar.sqrt() * clean + (1 - abar).sqrt() * noise, "timestep": timesteps, "noise": noise}
    if seeds.class_labels is not None:
        batch["class_labels"] = seeds.class_labels.to(unet.device)
    return batch


def _stage_ratios(unet, config: PruningConfig) -> dict:
    ratios = {}
    for stage, blocks in (("down", unet.down_blocks), ("mid", [unet.mid_block]), ("up", unet.up_blocks)):
        for block in blocks:
            if block is not None:
                ratios[block] = config.ratio * getattr(config, stage)
    return ratios


def _resync_diffusers_attributes(unet) -> None:
    """torch-pruning changes tensors; diffusers modules also cache channel and head counts."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    for module in unet.modules():
        if isinstance(module, Upsample2D | Downsample2D) and getattr(module, "conv", None) is not None:
            module.channels = module.conv.in_channels
            module.out_channels = module.conv.out_channels
        if isinstance(module, Attention):
            head_dim = module.to_q.out_features // module.heads if module.heads else module.to_q.out_features
            module.inner_dim = module.to_q.out_features
            module.heads = max(1, module.to_q.out_features // max(1, head_dim))
            if getattr(module, "group_norm", None) is not None:
                module.group_norm.num_channels = module.to_q.in_features


def prune_unet(unet, config: PruningConfig, target=None):
    """A pruned copy of ``unet``; the original is left as it was."""
    import torch_pruning as tp
    from diffusers.models.attention_processor import Attention

    from autoaccel.techniques.quantization import quantization_plan

    if quantization_plan(unet) is not None:
        raise TechniqueError(
            "pruning must apply before quantization (quantization is calibrated on the pruned model); "
            "this unet is already quantized"
        )
    pruned = copy.deepcopy(unet).float()
    if config.ratio == 0.0:
        return pruned
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    example = _example_inputs(pruned, 2, generator)
    importance = {
        "magnitude": tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": tp.importance.GroupTaylorImportance(),
        "random": tp.importance.RandomImportance(),
    }[config.importance]
    attention = {module.to_q: module.heads for module in pruned.modules() if isinstance(module, Attention)}
    attention.update({module.to_k: module.heads for module in pruned.modules() if isinstance(module, Attention)})
    attention.update({module.to_v: module.heads for module in pruned.modules() if isinstance(module, Attention)})
    with torch.enable_grad():
        pruned.requires_grad_(True)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example_inputs=example,
            importance=importance,
            pruning_ratio=config.ratio,
            pruning_ratio_dict=_stage_ratios(pruned, config),
            ignored_layers=[pruned.conv_out],
            num_heads=attention,
            prune_num_heads=config.prune_heads,
            prune_head_dims=not config.prune_heads,
            head_pruning_ratio=config.ratio if config.prune_heads else 0.0,
        )
        if config.importance == "taylor":
            if target is None:
                raise TechniqueError("pruning.importance=taylor needs the target's teacher for calibration")
            batch = _teacher_batch(target, pruned, CALIBRATION_SAMPLES, generator)
            prediction = pruned(batch["sample"], batch["timestep"], class_labels=batch.get("class_labels")).sample
            F.mse_loss(prediction, batch["noise"]).backward()
        try:
            pruner.step()
        except (RuntimeError, ValueError, AssertionError) as error:
            raise TechniqueError(f"torch-pruning could not prune this unet at ratio {config.ratio}: {error}") from error
    pruned.zero_grad(set_to_none=True)
    _resync_diffusers_attributes(pruned)
    if config.recovery_steps:
        _recover(pruned, unet, target, config, generator)
    return pruned.eval().requires_grad_(False)


def _recover(pruned, teacher_unet, target, config: PruningConfig, generator: torch.Generator) -> None:
    """A few hundred steps of output distillation towards the teacher on noised teacher samples."""
    if target is None:
        raise TechniqueError("pruning.recovery_steps > 0 needs the target's teacher")
    optimizer = torch.optim.AdamW(pruned.parameters(), lr=2e-4)
    pruned.train().requires_grad_(True)
    pool = _teacher_batch(target, pruned, 256, generator)
    with torch.enable_grad():
        for _ in range(config.recovery_steps):
            index = torch.randint(0, len(pool["sample"]), (64,), generator=generator)
            labels = pool["class_labels"][index] if "class_labels" in pool else None
            with torch.no_grad():
                wanted = teacher_unet(pool["sample"][index], pool["timestep"][index], class_labels=labels).sample
            got = pruned(pool["sample"][index], pool["timestep"][index], class_labels=labels).sample
            loss = F.mse_loss(got, wanted)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def apply_pruning(pipeline, config: PruningConfig, target) -> None:
    pipeline.unet = prune_unet(pipeline.unet, config, target)


def pruned_weights(unet, config: PruningConfig):
    """The pruned (and recovered) unet's weights; nothing at ratio 0, where the model is the base model."""
    from autoaccel.artifacts import Artifact

    if config.ratio == 0.0:
        return None
    return Artifact(dict(unet.state_dict()), {"technique": "pruning", "config": repr(config)})


def pruning_from_artifact(pipeline, config: PruningConfig, target, artifact) -> None:
    """The pruned structure (magnitude importance, no recovery: which channels go does not change how many)
    with the artifact's weights loaded strictly: a shape or name that differs is an error, not a guess."""
    structure = prune_unet(pipeline.unet, replace(config, importance="magnitude", recovery_steps=0), target)
    structure.load_state_dict(artifact.tensors, strict=True)
    pipeline.unet = structure.eval().requires_grad_(False)


def pruning_recompute(config: PruningConfig) -> str | None:
    if config.ratio == 0.0:
        return None
    if config.recovery_steps:
        return f"pruning and its recovery distillation ({config.recovery_steps} steps) from the base model"
    return "pruning from the base model"


def pruning_cost(config: PruningConfig) -> dict:
    """The ratios and whether whole heads go: they fix how many channels and heads are left in each layer.

    Which channels go (importance, seed) and the recovery distillation change the weights, not their shapes:
    plans differing only there share one timing. Ratio 0 leaves the model as it is and adds nothing.
    """
    if config.ratio == 0.0:
        return {}
    ratios = {name: float(getattr(config, name)) for name in ("ratio", "down", "mid", "up")}
    return {**ratios, "prune_heads": config.prune_heads}


PRUNING = register(
    Technique(
        name="pruning",
        order=5,
        config_cls=PruningConfig,
        apply=apply_pruning,
        modifies_model=True,
        unchanged_params={
            "ratio": 0.0,
            "down": 1.0,
            "mid": 1.0,
            "up": 1.0,
            "importance": "magnitude",
            "recovery_steps": 0,
        },
        params=PRUNING_PARAMS,
        cost_key=pruning_cost,
        artifact_state=pruned_weights,
        from_artifact=pruning_from_artifact,
        recompute=pruning_recompute,
    )
)
