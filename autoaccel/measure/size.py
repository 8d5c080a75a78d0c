"""The real storage size of a model: parameters at their dtype, except those a technique stores otherwise
(quantized weights at their planned bits: ``Technique.stored_bytes``).

A fake-quantized model holds float tensors, so ``element_size`` would report the float size, not what a
deployment stores.
"""

from __future__ import annotations

import torch

from autoaccel.techniques.base import stored_bytes


def model_bytes(unet: torch.nn.Module) -> int:
    stored = stored_bytes(unet)
    total = 0
    for name, parameter in unet.named_parameters():
        bytes_stored = stored.get(name)
        total += parameter.numel() * parameter.element_size() if bytes_stored is None else bytes_stored
    return total
