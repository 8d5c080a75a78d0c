"""A module cast to a lower precision the way diffusers and transformers load one in it."""

from __future__ import annotations

import torch


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
