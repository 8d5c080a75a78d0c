"""Technique ``decoder``: how a latent model's samples become images, part of every image and of every call's cost.

- ``kind``: ``vae``, the model's own VAE as it is; ``tiny``, a tiny autoencoder decoder (diffusers'
  ``AutoencoderTiny``, the TAESD design: plain 3x3 convolutions, no normalisation or attention) sized for the
  model's latents (its latent and image channels, and one upsampling per factor of two of the VAE's scale) and
  trained by decoder distillation: latents the model samples (its ODE reference, ``clean_samples``, from seeds of
  their own), slightly jittered, decoded by the model's VAE are the targets, the loss is pixel MSE plus
  ``l1_weight`` x L1. Its input is the VAE decode's own input (``decode`` divides the model's latents by the VAE's
  ``scaling_factor`` and adds its ``shift_factor``, and the tiny decoder carries the same two), so one ``decode``
  serves both. Only the decoder half is built: the encoder is replaced by a module that refuses to run.
- ``tiling`` / ``slicing``: diffusers' ``enable_tiling()`` / ``enable_slicing()`` on the decoder (a shallow copy:
  the model's own VAE is never touched), refused with the reason where the class has no such mode or its tiled
  decode does not fit the decoder (``AutoencoderTiny`` tiles only 3-channel images upsampled by 2**3).

The decoder travels with the denoiser (``carry_decoder``: a shallow copy of the model that carries it), as a
distilled model's sampler does, so a model reused from the evaluator's cache or rebuilt from its artifact decodes
as it was built. Training is seeded (the same seed gives the same weights on the same machine), its minutes are
recorded as the trial's search cost, and the weights are stored as an artifact: a recipe applies it without
training. Pixel-space models have no VAE: every setting but the default is refused there, with the reason.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

from autoaccel.distill.students import kept_student
from autoaccel.distill.training import Clock
from autoaccel.errors import ConfigError, RecipeError, TechniqueError
from autoaccel.pipeline.prescribed import carried_decoder, carry_decoder
from autoaccel.reference.calibration import clean_sample_work, clean_samples
from autoaccel.techniques.base import TRAIN_MINUTES, ParamSpec, SearchWork, Technique, register, require_types
from autoaccel.util.artifacts import Artifact
from autoaccel.util.interrupts import pause_point
from autoaccel.util.training import clipped_step

KINDS = ("vae", "tiny")
MAX_ITERATIONS = 100_000
DATA_SEED_OFFSET = 30_000  # the training latents' seeds: apart from the scoring seeds and the other calibrations'
HELD_OUT_SEED_OFFSET = 40_000  # latents for the held-out error of a trained decoder
JITTER = 0.2  # the largest jitter added to a training latent, in standard deviations of the latents
MODE_WORDS = {"tiling": "tiled decode", "slicing": "sliced decode"}
ARCHITECTURE = "tiny_decoder"  # the artifact metadata key: the AutoencoderTiny config it was built with


@dataclass(frozen=True)
class DecoderConfig:
    """``kind`` of decoder, ``tiling``/``slicing`` of its decode; the rest are the tiny decoder's width and training
    settings (ignored for ``vae``)."""

    kind: str = "vae"
    tiling: bool = False
    slicing: bool = False
    width: int = 16
    blocks: int = 1
    iterations: int = 1000
    learning_rate: float = 2e-3
    batch_size: int = 64
    data_samples: int = 512
    l1_weight: float = 0.0
    seed: int = 0
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        number = (int, float)
        types = {"kind": str, "tiling": bool, "slicing": bool, "width": int, "blocks": int, "iterations": int}
        types.update(learning_rate=number, batch_size=int, data_samples=int, l1_weight=number, seed=int)
        require_types(self, "decoder", types)
        if self.kind not in KINDS:
            raise ConfigError(f"decoder.kind={self.kind!r} is not valid; valid: {list(KINDS)}")
        for name in ("width", "blocks", "iterations", "learning_rate", "batch_size", "data_samples", "l1_weight"):
            spec = DECODER_PARAMS[name]
            if not spec.accepts(getattr(self, name)):  # a recipe trains again without an artifact: bounded too
                raise ConfigError(f"decoder.{name}={getattr(self, name)} is not valid; it must be {spec.describe()}")
        cap = self.max_minutes
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or not cap > 0):
            raise ConfigError(f"decoder.max_minutes={self.max_minutes!r} is not valid; it must be > 0 or null")

    @property
    def changes_decode(self) -> bool:
        return self.kind != "vae" or self.tiling or self.slicing


DECODER_PARAMS = {
    "kind": ParamSpec("choice", choices=KINDS, target_limit="decoder_kinds", narrows_to_target=True),
    "tiling": ParamSpec("bool"),
    "slicing": ParamSpec("bool"),
    "width": ParamSpec("int", low=4, high=512),
    "blocks": ParamSpec("int", low=1, high=8),
    "iterations": ParamSpec("int", low=0, high=MAX_ITERATIONS),
    "learning_rate": ParamSpec("float", low=0.0, low_open=True, high=1.0),
    "batch_size": ParamSpec("int", low=1, high=4096),
    "data_samples": ParamSpec("int", low=1, high=100_000),
    "l1_weight": ParamSpec("float", low=0.0, high=100.0),
    "seed": ParamSpec("int", low=0, high=2**32 - 1),
    "max_minutes": ParamSpec("float", low=0.0, low_open=True),
}


# ----------------------------------------------------------------------------------------------- the tiny decoder


class NoEncoder(torch.nn.Module):
    """Stands where ``AutoencoderTiny``'s encoder would be: the tiny decoder is distilled for decoding only."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise TechniqueError("this tiny decoder was distilled for decoding only; encode with the model's own VAE")


def _latent_model(target, what: str):
    """The model's VAE, or a TechniqueError saying why ``what`` cannot apply to a pixel-space model."""
    if target.vae is None:
        raise TechniqueError(
            f"{what} needs a latent model: {target.name} samples pixels (it has no VAE), so there is nothing to decode"
        )
    return target.vae


def tiny_decoder_config(vae, config: DecoderConfig) -> dict[str, Any]:
    """The ``AutoencoderTiny`` config of a tiny decoder for ``vae``: its latent and image channels, one upsampling
    per factor of two of its scale (``2 ** (len(block_out_channels) - 1)``, as diffusers' pipelines reckon it), and
    its scaling and shift, so the tiny decoder takes what the VAE's decode takes. A deep-compression autoencoder
    (Sana's AutoencoderDC) names its image channels ``in_channels`` and its levels ``decoder_block_out_channels``."""
    vae_config = vae.config
    sizes = {
        "latent_channels": vae_config.get("latent_channels"),
        "out_channels": vae_config.get("out_channels", vae_config.get("in_channels")),
        "block_out_channels": vae_config.get("block_out_channels", vae_config.get("decoder_block_out_channels")),
    }
    missing = [key for key, value in sizes.items() if value is None]
    if missing:
        raise TechniqueError(
            f"decoder.kind='tiny' cannot size a decoder for {type(vae).__name__}: "
            f"its config has no {', '.join(missing)}"
        )
    stages = len(sizes["block_out_channels"])
    return {
        "in_channels": int(sizes["out_channels"]),
        "out_channels": int(sizes["out_channels"]),
        "encoder_block_out_channels": (1,),
        "decoder_block_out_channels": (config.width,) * stages,
        "latent_channels": int(sizes["latent_channels"]),
        "num_encoder_blocks": (1,),
        "num_decoder_blocks": (config.blocks,) * (stages - 1) + (1,),
        "scaling_factor": float(vae_config.scaling_factor),
        "shift_factor": float(getattr(vae_config, "shift_factor", None) or 0.0),
    }


def build_tiny_decoder(architecture: Mapping[str, Any], seed: int, like: torch.nn.Module) -> AutoencoderTiny:
    """An ``AutoencoderTiny`` of ``architecture`` initialised from ``seed`` (the global generator is left as it
    was), with its encoder removed, on the device of ``like``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tiny = AutoencoderTiny(**architecture)
    tiny.encoder = NoEncoder()
    return tiny.to(next(like.parameters()).device).float()


def vae_input(vae, latents: torch.Tensor) -> torch.Tensor:
    """What ``autoaccel.targets.denoisers.decode`` passes to ``vae.decode`` for the model's ``latents``."""
    shift = getattr(vae.config, "shift_factor", None)
    return latents / vae.config.scaling_factor + (shift or 0.0)


def train_tiny_decoder(target, config: DecoderConfig, log=None) -> AutoencoderTiny:
    """A tiny decoder distilled from the model's VAE on latents the model samples (see the module docstring)."""
    vae = _latent_model(target, "decoder.kind='tiny'")
    tiny = build_tiny_decoder(tiny_decoder_config(vae, config), config.seed, vae)
    latents, _ = clean_samples(target, config.data_samples, DATA_SEED_OFFSET + config.seed)
    inputs = vae_input(vae, latents.to(device=next(tiny.parameters()).device, dtype=torch.float32))
    spread = float(inputs.std())
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(tiny.decoder.parameters(), lr=float(config.learning_rate), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, config.iterations)))
    )
    clock = Clock(config.max_minutes, "tiny decoder training", total=config.iterations)
    tiny.train()
    for iteration in range(config.iterations):
        pause_point()
        clock.check(iteration)
        index = torch.randint(0, len(inputs), (config.batch_size,), generator=generator)
        scale = torch.rand(config.batch_size, 1, 1, 1, generator=generator) * JITTER * spread
        jitter = torch.randn((config.batch_size, *inputs.shape[1:]), generator=generator) * scale
        batch = inputs[index] + jitter.to(inputs.device)
        with torch.no_grad():
            wanted = vae.decode(batch.to(vae.dtype)).sample.float()
        decoded = tiny.decode(batch).sample
        loss = F.mse_loss(decoded, wanted)
        if config.l1_weight:
            loss = loss + config.l1_weight * F.l1_loss(decoded, wanted)
        clipped_step(optimizer, loss, tiny.decoder)
        schedule.step()
    tiny = tiny.eval().requires_grad_(False)
    if log is not None:
        log(f"tiny decoder: held-out MSE {held_out_error(target, tiny, config.seed):.5f} against the VAE's images")
    return _as_dtype(tiny, vae.dtype)


def _as_dtype(decoder: AutoencoderTiny, dtype: torch.dtype) -> AutoencoderTiny:
    """The decoder at the VAE's dtype (trained in float32; diffusers warns about casting even to the same dtype)."""
    return decoder if decoder.dtype == dtype else decoder.to(dtype=dtype)


@torch.no_grad()
def held_out_error(target, decoder, seed: int = 0, count: int = 64) -> float:
    """Mean squared error of ``decoder``'s images against the VAE's on latents the model samples from seeds the
    training never drew."""
    vae = target.vae
    latents, _ = clean_samples(target, count, HELD_OUT_SEED_OFFSET + seed)
    inputs = vae_input(vae, latents.to(vae.dtype))
    return float(F.mse_loss(decoder.decode(inputs.to(decoder.dtype)).sample.float(), vae.decode(inputs).sample.float()))


# ------------------------------------------------------------------------------------------------ tiling, slicing


def _with_modes(decoder: torch.nn.Module, config: DecoderConfig) -> torch.nn.Module:
    """A shallow copy of ``decoder`` (weights shared) with tiled and/or sliced decoding on, or ``decoder`` itself
    where neither is asked; a TechniqueError with the reason where the class cannot."""
    if not (config.tiling or config.slicing):
        return decoder
    name = type(decoder).__name__
    for mode, wanted in (("tiling", config.tiling), ("slicing", config.slicing)):
        if wanted and not hasattr(decoder, f"use_{mode}"):
            raise TechniqueError(f"decoder.{mode}=true: {name} has no {mode} mode (diffusers' enable_{mode})")
    if config.tiling and isinstance(decoder, AutoencoderTiny):
        upsampling = 2 ** (len(decoder.config.decoder_block_out_channels) - 1)
        channels = decoder.config.out_channels
        if channels != 3 or upsampling != decoder.spatial_scale_factor:
            raise TechniqueError(
                f"decoder.tiling=true: diffusers' AutoencoderTiny tiles 3-channel images upsampled by "
                f"2**out_channels={decoder.spatial_scale_factor}; this decoder makes {channels}-channel images "
                f"upsampled by {upsampling}, which its tiled decode would get wrong"
            )
    configured = copy.copy(decoder)  # its own mode flags; the same weights
    if config.tiling:
        configured.enable_tiling()
    if config.slicing:
        configured.enable_slicing()
    return configured


# ---------------------------------------------------------------------------------------------- the technique


def _kept_tiny_decoder(target, config: DecoderConfig) -> tuple[AutoencoderTiny, float]:
    """The tiny decoder ``config`` trains for ``target`` and its training minutes, trained once per process for
    every plan that asks for it (it depends on the model's VAE and samples, not on what else a plan changes)."""
    training = {key: value for key, value in asdict(config).items() if key not in ("tiling", "slicing", "max_minutes")}
    key = ("tiny_decoder", target.content_hash, tuple(sorted(training.items())))
    return kept_student(key, lambda: train_tiny_decoder(target, config))


def apply_decoder(pipeline, config: DecoderConfig, target) -> None:
    if not config.changes_decode:
        return
    vae = _latent_model(target, _setting_words(config))
    minutes = 0.0
    if config.kind == "tiny":
        decoder, minutes = _kept_tiny_decoder(target, config)
    else:
        decoder = vae
    _carry(pipeline, _with_modes(decoder, config), minutes)


def _carry(pipeline, decoder: torch.nn.Module, minutes: float) -> None:
    """The pipeline's denoiser replaced by a carrier of ``decoder`` (its decode from now on), with the training
    minutes added to what producing the model cost."""
    earlier = getattr(pipeline.denoiser, TRAIN_MINUTES, None)
    carrier = carry_decoder(pipeline.denoiser, decoder)
    if minutes or earlier is not None:
        object.__setattr__(carrier, TRAIN_MINUTES, float(earlier or 0.0) + minutes)
    pipeline.denoiser = carrier
    pipeline.vae = decoder


def _setting_words(config: DecoderConfig) -> str:
    changed = [f"decoder.kind={config.kind!r}"] if config.kind != "vae" else []
    changed += [f"decoder.{mode}=true" for mode in ("tiling", "slicing") if getattr(config, mode)]
    return ", ".join(changed)


def decoder_weights(denoiser, config: DecoderConfig) -> Artifact | None:
    """The artifact of a tiny decoder: its weights and the ``AutoencoderTiny`` config it was built with."""
    decoder = carried_decoder(denoiser)
    if config.kind != "tiny" or decoder is None:
        return None
    architecture = {key: value for key, value in decoder.config.items() if not key.startswith("_")}
    return Artifact(dict(decoder.state_dict()), {ARCHITECTURE: json.dumps(architecture, sort_keys=True)})


def decoder_from_artifact(pipeline, config: DecoderConfig, target, artifact: Artifact) -> None:
    """The tiny decoder rebuilt from its artifact (architecture checked against the model's VAE, weights loaded
    strictly), never trained again."""
    if config.kind != "tiny":
        apply_decoder(pipeline, config, target)
        return
    vae = _latent_model(target, _setting_words(config))
    architecture = tiny_decoder_config(vae, config)
    stored = json.loads(artifact.metadata.get(ARCHITECTURE, "{}"))
    expected = json.loads(json.dumps(architecture))
    differing = sorted(key for key in expected if stored.get(key) != expected[key])
    if differing:
        raise RecipeError(
            f"its tiny decoder was built for another VAE or width ({', '.join(differing)} differ from this model's)"
        )
    decoder = build_tiny_decoder(architecture, config.seed, vae)
    decoder.load_state_dict(artifact.tensors, strict=True)
    _carry(pipeline, _with_modes(_as_dtype(decoder.eval().requires_grad_(False), vae.dtype), config), 0.0)


def decoder_cost(config: DecoderConfig) -> dict:
    """Which decoder runs, its width, and how it splits the batch and the image."""
    cost: dict[str, Any] = {"kind": config.kind} if config.changes_decode else {}
    if config.kind == "tiny":
        cost.update(width=config.width, blocks=config.blocks)
    cost.update({mode: True for mode in ("tiling", "slicing") if getattr(config, mode)})
    return cost


def recompute(config: DecoderConfig) -> str | None:
    return f"tiny decoder training ({config.iterations} iterations)" if config.kind == "tiny" else None


def decoder_work(config: DecoderConfig, target, calls_per_image: float) -> SearchWork:
    """A tiny decoder's training, made once per model and training settings (``SearchWork.shared``): a batch of
    the VAE's decodes per iteration (the tiny decoder's own step is small beside it), on the teacher's samples."""
    if config.kind != "tiny" or target.vae is None:
        return SearchWork()
    training = {key: value for key, value in asdict(config).items() if key not in ("tiling", "slicing", "max_minutes")}
    name = f"tiny decoder ({', '.join(f'{key} {value}' for key, value in sorted(training.items()))})"
    data = clean_sample_work(target, config.data_samples, DATA_SEED_OFFSET + config.seed)
    return data + SearchWork(shared={name: SearchWork(decoded=config.iterations * config.batch_size)})


def decoder_label(candidate: Mapping[str, Any]) -> str | None:
    """The decode's words ("tiny decoder", "tiled decode"); None for the model's own VAE as it is."""
    words = ["tiny decoder"] if candidate.get("decoder.kind", "vae") == "tiny" else []
    words += [named for setting, named in MODE_WORDS.items() if candidate.get(f"decoder.{setting}", False)]
    return ", ".join(words) or None


def decoder_limits(target) -> dict[str, tuple]:
    """The decoders a model takes: a pixel-space model has no VAE, so only its own (identity) decode."""
    return {"decoder_kinds": KINDS if target.vae is not None else ("vae",)}


DECODER = register(
    Technique(
        name="decoder",
        # after every other model technique (distillation needs the target's own denoiser; caching and assignment
        # wrap theirs): the decoder is carried by the finished model
        order=25,  # before runtime, which casts and compiles what the plan deploys, the decoder included
        config_cls=DecoderConfig,
        apply=apply_decoder,
        modifies_model=True,
        unchanged_params={"kind": "vae", "tiling": False, "slicing": False},
        params=DECODER_PARAMS,
        cost_key=decoder_cost,
        artifact_state=decoder_weights,
        from_artifact=decoder_from_artifact,
        recompute=recompute,
        float32_copy=True,  # trained or calibrated on a float32 copy
        label=decoder_label,
        max_minutes_param="max_minutes",
        search_work=decoder_work,
        target_limits=decoder_limits,
    )
)
