"""``target.dtype``: a target loaded in another precision, for a model that only fits (or only ships) that way.

Its denoiser, VAE and text encoders are cast as ``from_pretrained(torch_dtype=...)`` casts them (modules a class
keeps in float32 stay so), and prompt embeddings are encoded again by the cast text encoders. The weights hash is
of the cast weights: a recipe measured on the target names that model, and its ``base_model.dtype`` says how to
load it. The reference is the model's default call in that precision, and a plan whose runtime precision is left free
runs the model as loaded; the sampling loop keeps latents and the scheduler's arithmetic in float32 either way.
"""

from __future__ import annotations

from dataclasses import replace

from autoaccel.targets.base import Target
from autoaccel.targets.conditions import Conditions
from autoaccel.targets.loader import modules_hash
from autoaccel.util.precision import cast_module, dtype_name, dtype_named, module_dtype


def load_in_dtype(target: Target, name: str) -> Target:
    """``target`` (just loaded: its modules are its own) cast in place to the dtype ``name`` names; a ConfigError
    names the valid ones."""
    dtype = dtype_named(name, "target.dtype")
    if target_dtype(target) == name:
        return target
    cast_module(target.denoiser, dtype)
    for module in {
        id(module): module for module in [target.vae, *target.modules.values()] if module is not None
    }.values():
        cast_module(module, dtype)
    if target.conditions.encoder is not None and target.conditions.names:
        target.conditions = encoded_again(target.conditions, target.conditions.encoder)
    target.content_hash = modules_hash(target.denoiser, target.modules)
    return target


def encoded_again(conditions: Conditions, encoder) -> Conditions:
    """``conditions`` with their prompts encoded again by ``encoder`` (text encoders in another precision), which
    encodes them from then on, as a deployment does on every call."""
    encoded = encoder(conditions.names)
    return replace(conditions, embeds=encoded.embeds, null=encoded.null, fixed=encoded.fixed, encoder=encoder)


def target_dtype(target: Target) -> str:
    """The precision the target's denoiser holds its weights in, by name (``bfloat16``)."""
    return dtype_name(module_dtype(target.denoiser))
