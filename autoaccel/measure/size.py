"""The real storage size of a model: parameters at their dtype, quantized weights at their planned bits.

A fake-quantized model holds float tensors, so ``element_size`` would report the float size; the byte count a
deployment stores is ``bits / 8`` per weight plus one 16-bit scale per output channel.
"""

from __future__ import annotations

import math

import torch

from autoaccel.techniques.quantization import quantization_plan

SCALE_BYTES = 2  # one fp16/bf16 scale per output channel, as int-N weight-only kernels store them


def model_bytes(unet: torch.nn.Module) -> int:
    plan = quantization_plan(unet)
    layer_bits = plan.layer_bits if plan is not None else {}
    quantized = {f"{name}.weight": bits for name, bits in layer_bits.items()}
    total = 0
    for name, parameter in unet.named_parameters():
        bits = quantized.get(name)
        if bits is None:
            total += parameter.numel() * parameter.element_size()
        else:
            total += math.ceil(parameter.numel() * bits / 8) + parameter.shape[0] * SCALE_BYTES
    return total
