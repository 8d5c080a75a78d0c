"""A module cast to a lower precision the way diffusers and transformers load one in it."""

from __future__ import annotations

import torch

from autoaccel.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # by their names


def dtype_named(name: str, setting: str) -> torch.dtype:
    """The dtype ``name`` names; a ConfigError naming ``setting`` and the valid names otherwise."""
    if name not in DTYPES:
        raise ConfigError(f"{setting}={name!r} is not valid; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The precision of ``module``'s first floating-point parameter (float32 for a module without one)."""
    return next((parameter.dtype for parameter in module.parameters() if parameter.is_floating_point()), torch.float32)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` (in place) with its floating-point weights in ``dtype``, except the submodules its class keeps
    in float32 (``_keep_in_fp32_modules``: T5's feed-forward output in float16, some transformers' norms), as
    ``from_pretrained(torch_dtype=...)`` leaves them. Returns ``module``."""
    torch.nn.Module.to(module, dtype)  # diffusers' own ``to`` warns on every cast, even where it keeps nothing
    kept = getattr(module, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and kept:
        for name, child in module.named_modules():
            if any(part in kept for part in name.split(".")):
                torch.nn.Module.to(child, torch.float32)
    return module
