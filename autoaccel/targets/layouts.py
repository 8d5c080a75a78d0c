"""What autoaccel knows about a denoiser class and a scheduler's time variable: the only way in to a model.

A ``DenoiserLayout`` per denoiser class (one registry, the pattern of diffusers' ``TransformerBlockRegistry``)
says how the class is called (the keyword its class labels take, arguments its pipeline always passes), which
block groups it repeats with their stage and stream tags, and which of its modules are attention and
feed-forward layers: what pruning removes, quantization groups and caching skips. Techniques ask the layout and
never name a class, so supporting another denoiser is one ``register_layout`` call (and a test).

A ``ScheduleFamily`` per time variable (DDPM-family timesteps, flow-matching sigmas) says what differs between
them: the solver users run by default, the space that suits it, whether distillation applies and how a schedule
is placed. Code asks the family object instead of comparing its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

LEVELS, SEQUENCE = "levels", "sequence"  # a UNet's down/mid/up levels; a transformer's sequence of blocks
STAGES = ("down", "mid", "up")
QKV = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")


@dataclass(frozen=True)
class BlockGroup:
    """One attribute of the denoiser holding repeated blocks (a ModuleList or one block): its ``stage``
    (down/mid/up; None: by position, thirds of a sequence) and ``stream`` (joint: text and image streams,
    single: one stream; None where a class has no such split)."""

    attribute: str
    stage: str | None = None
    stream: str | None = None


UNET_GROUPS = (BlockGroup("down_blocks", "down"), BlockGroup("mid_block", "mid"), BlockGroup("up_blocks", "up"))


@dataclass(frozen=True)
class DenoiserLayout:
    """One denoiser class: how it is called and where its blocks, attention and feed-forward layers are.

    ``structure``: ``levels`` (a UNet: down blocks hand skip features to up blocks around a mid block) or
    ``sequence`` (a transformer: residual blocks in a row, the residual width fixed by the patch embedding).
    ``label_keyword``: the argument its class labels take; ``fixed``: arguments its pipeline always passes;
    ``per_batch``: (denoiser, sample) -> arguments that depend on the batch (PixArt-alpha 1024's size
    conditioning, Flux's image position ids). ``packing``: a class that takes its latents packed into tokens of
    ``packing`` x ``packing`` patches (Flux: 2) gets them packed on each call and returns them unpacked, so the
    sampling loop, the scheduler and every technique see the (channels, height, width) latents the VAE decodes.
    ``timestep_divisor``: what its pipeline divides the scheduler's timestep by (Flux: 1000, it takes sigmas).
    ``native_sigmas``: the sigmas its pipeline hands ``set_timesteps`` for n steps (None: the count alone).
    ``guidance_keyword``: the argument a guidance-distilled model takes its guidance scale in, where its config
    has ``guidance_embeds`` (FLUX.1-dev).
    ``block_outputs``: where a block's return value holds its hidden states (and its text stream's, or None), for a
    block class diffusers' ``TransformerBlockRegistry`` does not know (its FirstBlockCache and MagCache hooks need
    it); ``fuses_qkv``: whether the class's ``fuse_qkv_projections()`` switches its attention to processors that
    read the fused projections.
    """

    class_name: str
    groups: tuple[BlockGroup, ...] = UNET_GROUPS
    structure: str = LEVELS
    label_keyword: str = "class_labels"
    fixed: dict[str, Any] = field(default_factory=dict)
    per_batch: Callable[[torch.nn.Module, torch.Tensor], dict[str, Any]] | None = None
    block_outputs: tuple[int, int | None] | None = None
    fuses_qkv: bool = True
    packing: int = 1
    timestep_divisor: float = 1.0
    native_sigmas: Callable[[int], np.ndarray] | None = None
    guidance_keyword: str | None = None
    rotary_heads: bool = False  # its rotary position embedding fixes each head's width (heads go whole or not)

    def embedded_guidance(self, denoiser: torch.nn.Module) -> str | None:
        """The argument ``denoiser`` takes a guidance scale in (None: it takes none, guidance is a second branch)."""
        return self.guidance_keyword if getattr(denoiser.config, "guidance_embeds", False) else None

    def pack(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents as the denoiser takes them: unchanged, or packed into (B, H*W/p^2, C*p^2) tokens."""
        if self.packing == 1:
            return sample
        from diffusers import FluxPipeline  # the one packing diffusers' pipelines use

        batch, channels, height, width = sample.shape
        return FluxPipeline._pack_latents(sample, batch, channels, height, width)

    def unpack(self, output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The denoiser's output in the shape of ``sample`` (its packed tokens unpacked)."""
        if self.packing == 1:
            return output
        from diffusers import FluxPipeline

        return FluxPipeline._unpack_latents(output, sample.shape[-2], sample.shape[-1], 1)

    @property
    def sequence(self) -> bool:
        """Whether the blocks run in one row (so whole blocks can be removed, grouped or skipped as a span)."""
        return self.structure == SEQUENCE

    def call_arguments(self, denoiser: torch.nn.Module, sample: torch.Tensor) -> dict[str, Any]:
        """The arguments every call passes besides the sample, timestep and conditioning."""
        return {**self.fixed, **self.per_batch(denoiser, sample)} if self.per_batch is not None else self.fixed

    def block_names(self, denoiser: torch.nn.Module) -> list[str]:
        """The repeated blocks in order: ``down_blocks.0`` ... ``up_blocks.2``, or ``transformer_blocks.0`` ...;
        what per-block pruning, quantization groups and caching address."""
        names = []
        for group in self.groups:
            module = getattr(denoiser, group.attribute, None)
            if isinstance(module, torch.nn.ModuleList):
                names.extend(f"{group.attribute}.{index}" for index in range(len(module)))
            elif module is not None:
                names.append(group.attribute)
        return names

    def stages(self, denoiser: torch.nn.Module) -> dict[str, str]:
        """Block name -> its stage (down/mid/up): its group's tag, or for an untagged group its third of the
        blocks (block ``i`` of ``n`` is in third ``int(3 * (i + 0.5) / n)``)."""
        names = self.block_names(denoiser)
        tagged = {group.attribute: group.stage for group in self.groups}
        return {
            name: tagged.get(name.split(".")[0]) or STAGES[min(2, int(3 * (index + 0.5) / len(names)))]
            for index, name in enumerate(names)
        }

    def blocks(self, denoiser: torch.nn.Module) -> list[torch.nn.Module]:
        """The blocks of every group in run order."""
        return [denoiser.get_submodule(name) for name in self.block_names(denoiser)]

    def sequence_blocks(self, denoiser: torch.nn.Module) -> torch.nn.ModuleList:
        """The main row of blocks (the first group) of a sequence layout: what block removal and the static
        block cache work on."""
        return getattr(denoiser, self.groups[0].attribute)

    def set_sequence_blocks(self, denoiser: torch.nn.Module, blocks: torch.nn.ModuleList) -> None:
        setattr(denoiser, self.groups[0].attribute, blocks)

    def levels(self, denoiser: torch.nn.Module) -> tuple[str, str | None, str] | None:
        """The attributes of a levels layout's down, mid and up groups (the mid one None where the model has
        none), or None where the model lacks down or up blocks (a sequence layout, an unknown class)."""
        if self.sequence:
            return None
        down, mid, up = (next((g.attribute for g in self.groups if g.stage == stage), None) for stage in STAGES)
        if down is None or up is None or not hasattr(denoiser, down) or not hasattr(denoiser, up):
            return None
        return down, mid if mid is not None and getattr(denoiser, mid, None) is not None else None, up

    def describe_blocks_to_diffusers(self, denoiser: torch.nn.Module) -> None:
        """Registers ``block_outputs`` with diffusers' ``TransformerBlockRegistry`` for the block classes of
        ``denoiser`` it does not know, so that diffusers' block caches can read their outputs."""
        if self.block_outputs is None:
            return
        from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

        hidden, encoder = self.block_outputs
        for block_class in {type(block) for block in self.blocks(denoiser)}:
            try:
                TransformerBlockRegistry.get(block_class)
            except ValueError:  # unknown to diffusers
                TransformerBlockRegistry.register(block_class, TransformerBlockMetadata(hidden, encoder))

    def attentions(self, denoiser: torch.nn.Module) -> list[torch.nn.Module]:
        """Attention modules (anything with query/key/value projections and a head count): what head pruning
        removes heads from."""
        projected = (module for module in denoiser.modules() if hasattr(module, "heads"))
        return [
            module
            for module in projected
            if all(isinstance(getattr(module, name, None), torch.nn.Linear) for name in QKV[:3])
        ]

    @staticmethod
    def projections(attention: torch.nn.Module) -> list[torch.nn.Linear]:
        """The query, key and value projections of both streams (a joint attention's context stream too)."""
        return [getattr(attention, name) for name in QKV if isinstance(getattr(attention, name, None), torch.nn.Linear)]

    def feed_forwards(self, denoiser: torch.nn.Module) -> list[torch.nn.Module]:
        """diffusers FeedForward modules (``net.0.proj`` sets the hidden width, ``net.2`` projects back)."""
        from diffusers.models.attention import FeedForward

        return [module for module in denoiser.modules() if isinstance(module, FeedForward)]

    def conv_feed_forwards(self, denoiser: torch.nn.Module) -> list[torch.nn.Module]:
        """Gated convolutional feed-forwards (Sana's GLUMBConv: ``conv_inverted`` makes values and their gates, a
        depthwise ``conv_depth`` mixes neighbours, ``conv_point`` projects the gated values back)."""
        from diffusers.models.transformers.sana_transformer import GLUMBConv

        return [module for module in denoiser.modules() if isinstance(module, GLUMBConv)]


VAE_SCALE = "autoaccel_vae_scale"  # set on a PixArt denoiser by the loader: its pipeline's vae_scale_factor


def pixart_size_conditioning(denoiser: torch.nn.Module, sample: torch.Tensor) -> dict[str, Any]:
    """PixArt-alpha at 1024 px (``sample_size`` 128) is conditioned on the image size and aspect ratio, as
    PixArtAlphaPipeline passes them; the smaller models take none."""
    if not getattr(denoiser, "use_additional_conditions", False):
        return {}
    scale = getattr(denoiser, VAE_SCALE, 8)  # 8: the VAE PixArt ships with
    height, width = sample.shape[-2] * scale, sample.shape[-1] * scale
    rows = len(sample)
    resolution = torch.tensor([height, width], dtype=sample.dtype, device=sample.device).repeat(rows, 1)
    aspect_ratio = torch.tensor([height / width], dtype=sample.dtype, device=sample.device).repeat(rows, 1)
    return {"added_cond_kwargs": {"resolution": resolution, "aspect_ratio": aspect_ratio}}


def flux_image_ids(denoiser: torch.nn.Module, sample: torch.Tensor) -> dict[str, Any]:
    """Flux's rotary position ids of the packed latent tokens, as FluxPipeline makes them."""
    from diffusers import FluxPipeline

    height, width = sample.shape[-2] // 2, sample.shape[-1] // 2
    return {"img_ids": FluxPipeline._prepare_latent_image_ids(len(sample), height, width, sample.device, sample.dtype)}


def flux_sigmas(steps: int) -> np.ndarray:
    """The sigmas FluxPipeline runs for ``steps`` steps (shifted by the scheduler afterwards)."""
    return np.linspace(1.0, 1 / steps, steps)


TRANSFORMER_GROUPS = (BlockGroup("transformer_blocks"),)
LAYOUTS: dict[str, DenoiserLayout] = {}


def register_layout(layout: DenoiserLayout) -> DenoiserLayout:
    """Adds (or replaces) the layout of ``layout.class_name``: all autoaccel needs to accelerate that class."""
    LAYOUTS[layout.class_name] = layout
    return layout


for _layout in (
    DenoiserLayout("UNet2DModel"),
    DenoiserLayout("UNet2DConditionModel"),
    DenoiserLayout("DiTTransformer2DModel", TRANSFORMER_GROUPS, SEQUENCE),
    DenoiserLayout("Transformer2DModel", TRANSFORMER_GROUPS, SEQUENCE),
    DenoiserLayout(
        "PixArtTransformer2DModel",
        TRANSFORMER_GROUPS,
        SEQUENCE,
        fixed={"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}},
        per_batch=pixart_size_conditioning,
    ),
    DenoiserLayout("SD3Transformer2DModel", (BlockGroup("transformer_blocks", stream="joint"),), SEQUENCE),
    DenoiserLayout(
        "FluxTransformer2DModel",
        (BlockGroup("transformer_blocks", stream="joint"), BlockGroup("single_transformer_blocks", stream="single")),
        SEQUENCE,
        fixed={"joint_attention_kwargs": None},
        per_batch=flux_image_ids,
        packing=2,
        timestep_divisor=1000.0,
        native_sigmas=flux_sigmas,
        guidance_keyword="guidance",
        rotary_heads=True,
    ),
    # Sana: linear self-attention and cross-attention per block, GLUMBConv (convolutional) feed-forwards; a block
    # returns its hidden states alone; its processors read the separate query, key and value projections
    DenoiserLayout("SanaTransformer2DModel", TRANSFORMER_GROUPS, SEQUENCE, block_outputs=(0, None), fuses_qkv=False),
):
    register_layout(_layout)


def layout_of(denoiser: torch.nn.Module) -> DenoiserLayout:
    """The layout of ``denoiser``'s class; an unknown class gets the UNet calling convention (as tests' probes
    use)."""
    return LAYOUTS.get(type(denoiser).__name__) or DenoiserLayout(type(denoiser).__name__)


def pipeline_denoiser(pipeline) -> torch.nn.Module:
    """The network a diffusers pipeline's steps call: its ``transformer``, else its ``unet``."""
    return getattr(pipeline, "transformer", None) or pipeline.unet


def has_denoiser(pipeline) -> bool:
    return getattr(pipeline, "transformer", None) is not None or getattr(pipeline, "unet", None) is not None


# ------------------------------------------------------------------------------------------------ schedule families
@dataclass(frozen=True)
class ScheduleFamily:
    """One time variable. ``baseline_solver``: what the model's own pipelines run (the first standard
    configuration); ``default_space``: the space that suits it (``guided_space`` for a model whose default call
    uses guidance, where that differs); ``distillable``: whether the distillation objectives apply (they need
    ``alphas_cumprod``); ``places_sigmas``: a schedule is placed as sigmas in (0, 1] (flow matching) rather than
    as integer training timesteps."""

    name: str
    words: str
    baseline_solver: str
    default_space: str
    guided_space: str
    distillable: bool
    places_sigmas: bool

    @property
    def suggested_spaces(self) -> str:
        """The spaces to name in a message (``sampler (or guided_sampler)``)."""
        if self.guided_space == self.default_space:
            return self.default_space
        return f"{self.default_space} (or {self.guided_space})"


DDPM = ScheduleFamily(
    "ddpm", "a DDPM-family model", "ddim", "sampler", "guided_sampler", distillable=True, places_sigmas=False
)
FLOW = ScheduleFamily(
    "flow", "a flow-matching model", "flow_euler", "flow_sampler", "flow_sampler", distillable=False, places_sigmas=True
)
SCHEDULE_FAMILIES = {family.name: family for family in (DDPM, FLOW)}


def schedule_family_of(scheduler_config: dict) -> ScheduleFamily:
    """FLOW for flow-matching models (sigmas in (0, 1], velocity prediction), else DDPM."""
    name = str(scheduler_config.get("_class_name", ""))
    flow = name.startswith("FlowMatch") or scheduler_config.get("prediction_type") == "flow_prediction"
    return FLOW if flow or scheduler_config.get("use_flow_sigmas") else DDPM


def family_named(name: str) -> ScheduleFamily:
    """The family called ``name`` (``ddpm`` or ``flow``), as ledgers and recipes record it."""
    return SCHEDULE_FAMILIES[name]
