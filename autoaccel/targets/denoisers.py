"""How a diffusers denoiser is called, what shape it samples, how its latents decode and which time variable its
scheduler uses: the facts about a model that the sampling loop, the measurements and the techniques share.

Every supported denoiser takes the noisy sample first and ``timestep`` as a keyword (one value per sample);
conditioning comes as the keyword arguments ``autoaccel.targets.conditions`` builds. A denoiser that predicts
its variance too (DiT and PixArt with ``out_channels = 2 * in_channels``) has that half dropped, as its
pipeline does. Adding an architecture is one entry in ``DENOISERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

DDPM_FAMILY, FLOW_FAMILY = "ddpm", "flow"


@dataclass(frozen=True)
class DenoiserKind:
    """One architecture: the keyword its class labels take, arguments its pipeline always passes, and the
    prefix of its repeated blocks (the layout pruning, quantization and caching work on)."""

    class_name: str
    label_keyword: str = "class_labels"
    fixed: dict[str, Any] = field(default_factory=dict)
    block_prefixes: tuple[str, ...] = ("down_blocks", "mid_block", "up_blocks")
    transformer: bool = False
    # (denoiser, sample) -> arguments that depend on the batch (PixArt-alpha 1024's size conditioning)
    per_batch: Callable[[torch.nn.Module, torch.Tensor], dict[str, Any]] | None = None


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


DENOISERS: dict[str, DenoiserKind] = {
    kind.class_name: kind
    for kind in (
        DenoiserKind("UNet2DModel"),
        DenoiserKind("UNet2DConditionModel"),
        DenoiserKind("DiTTransformer2DModel", block_prefixes=("transformer_blocks",), transformer=True),
        DenoiserKind("Transformer2DModel", block_prefixes=("transformer_blocks",), transformer=True),
        DenoiserKind(
            "PixArtTransformer2DModel",
            fixed={"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}},
            block_prefixes=("transformer_blocks",),
            transformer=True,
            per_batch=pixart_size_conditioning,
        ),
        DenoiserKind("SD3Transformer2DModel", block_prefixes=("transformer_blocks",), transformer=True),
    )
}


def denoiser_kind(denoiser: torch.nn.Module) -> DenoiserKind:
    """The kind of ``denoiser``; an unknown class gets the UNet calling convention (as tests' probes use)."""
    return DENOISERS.get(type(denoiser).__name__, DenoiserKind(type(denoiser).__name__))


def predict(denoiser: torch.nn.Module, sample: torch.Tensor, timestep, keywords: dict[str, Any]) -> torch.Tensor:
    """One denoiser call on a batch: the model output in its scheduler's convention (noise, v or velocity)."""
    kind = denoiser_kind(denoiser)
    timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
    if len(timesteps) == 1:
        timesteps = timesteps.expand(len(sample))
    fixed = {**kind.fixed, **kind.per_batch(denoiser, sample)} if kind.per_batch is not None else kind.fixed
    output = denoiser(sample, timestep=timesteps, **fixed, **keywords)
    output = output.sample if hasattr(output, "sample") else output[0]
    channels = sample.shape[1]
    if output.shape[1] == 2 * channels:  # a learned variance: its pipeline keeps only the mean prediction
        output = output[:, :channels]
    return output


def sample_shape(denoiser: torch.nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of one sample the denoiser works on (pixels, or latents under a VAE)."""
    config = denoiser.config
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (int(config.in_channels), int(height), int(width))


def decode(vae: torch.nn.Module | None, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from the denoiser's output: a VAE decode under the VAE's own scaling (and shift, as in
    SD3), or the samples themselves for a pixel-space model."""
    if vae is None:
        return latents
    config = vae.config
    latents = latents.to(vae.dtype) / config.scaling_factor
    shift = getattr(config, "shift_factor", None)
    if shift:
        latents = latents + shift
    return vae.decode(latents).sample


def schedule_family(scheduler_config: dict) -> str:
    """``flow`` for flow-matching models (sigmas in (0, 1], velocity prediction), else ``ddpm``."""
    name = str(scheduler_config.get("_class_name", ""))
    flow = name.startswith("FlowMatch") or scheduler_config.get("prediction_type") == "flow_prediction"
    return FLOW_FAMILY if flow or scheduler_config.get("use_flow_sigmas") else DDPM_FAMILY


def block_names(denoiser: torch.nn.Module) -> list[str]:
    """The repeated blocks of the layout, in order: ``down_blocks.0`` ... ``up_blocks.2``, or
    ``transformer_blocks.0`` ...; what per-block pruning, quantization groups and caching address."""
    kind = denoiser_kind(denoiser)
    names = []
    for prefix in kind.block_prefixes:
        module = getattr(denoiser, prefix, None)
        if isinstance(module, torch.nn.ModuleList):
            names.extend(f"{prefix}.{index}" for index in range(len(module)))
        elif module is not None:
            names.append(prefix)
    return names
