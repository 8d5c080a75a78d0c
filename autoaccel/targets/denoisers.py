"""How a diffusers denoiser is called, what shape it samples, how its latents decode and which time variable its
scheduler uses: the facts about a model that the sampling loop, the measurements and the techniques share.

Every supported denoiser takes the noisy sample first and ``timestep`` as a keyword (one value per sample);
conditioning comes as the keyword arguments ``autoaccel.targets.conditions`` builds. A denoiser that predicts
its variance too (DiT and PixArt with ``out_channels = 2 * in_channels``) has that half dropped, as its
pipeline does. What differs between classes lives in their layouts (``autoaccel.targets.layouts``).
"""

from __future__ import annotations

from typing import Any

import torch

from autoaccel.targets.layouts import layout_of, schedule_family_of


def predict(denoiser: torch.nn.Module, sample: torch.Tensor, timestep, keywords: dict[str, Any]) -> torch.Tensor:
    """One denoiser call on a batch: the model output in its scheduler's convention (noise, v or velocity).

    ``keywords`` named ``outer.inner`` are passed nested (``added_cond_kwargs={"text_embeds": ...}`` for SDXL), so
    conditioning stays a flat mapping of per-sample tensors that can be indexed, joined and cast."""
    layout = layout_of(denoiser)
    timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
    if len(timesteps) == 1:
        timesteps = timesteps.expand(len(sample))
    if layout.timestep_divisor != 1.0:
        timesteps = timesteps / layout.timestep_divisor
    arguments = {**layout.call_arguments(denoiser, sample), **nested(keywords)}
    output = denoiser(layout.pack(sample), timestep=timesteps, **arguments)
    output = layout.unpack(output.sample if hasattr(output, "sample") else output[0], sample)
    channels = sample.shape[1]
    if output.shape[1] == 2 * channels:  # a learned variance: its pipeline keeps only the mean prediction
        output = output[:, :channels]
    return output


def nested(keywords: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": x, "c": y}`` -> ``{"a": {"b": x}, "c": y}``: the form a denoiser's ``forward`` takes."""
    result: dict[str, Any] = {}
    for key, value in keywords.items():
        outer, dot, inner = key.partition(".")
        if dot:
            result.setdefault(outer, {})[inner] = value
        else:
            result[key] = value
    return result


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: the device of an offload hook (accelerate's, as diffusers' offloading installs
    on the module or, sequential, on its layers), else where its weights are."""
    for part in module.modules():
        device = getattr(getattr(part, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return next((parameter.device for parameter in module.parameters()), torch.device("cpu"))


def offloaded(module: torch.nn.Module) -> bool:
    """Whether ``module`` runs under offload hooks (its weights move to the device on each call)."""
    return any(hasattr(part, "_hf_hook") for part in module.modules())


SAMPLE_SIZE = "autoaccel_sample_size"  # (height, width) of the latents a loader set on a denoiser: its call's size


def sample_shape(denoiser: torch.nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of one sample the denoiser works on (pixels, or latents under a VAE): the size
    its pipeline's default call makes (set by the loader where the config has none, as for Flux, or where
    ``autoaccel.json`` names another), else the config's ``sample_size``; channels before any packing."""
    config = denoiser.config
    size = getattr(denoiser, SAMPLE_SIZE, None) or config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (int(config.in_channels) // layout_of(denoiser).packing ** 2, int(height), int(width))


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
    """``flow`` for flow-matching models (sigmas in (0, 1], velocity prediction), else ``ddpm``: the name of
    ``autoaccel.targets.layouts.schedule_family_of``, as ledgers and recipes record it."""
    return schedule_family_of(scheduler_config).name
