"""The real storage size of a model: parameters at their dtype, except those a technique stores otherwise
(quantized weights at their planned bits: ``Technique.stored_bytes``).

A fake-quantized model holds float tensors, so ``element_size`` would report the float size, not what a
deployment stores. A model quantized with real kernels holds tensor subclasses (torchao's ``Int8Tensor``: int8
data and a scale per row) whose ``dtype`` still says float: their bytes are those of the tensors they hold.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from autoaccel.techniques.base import stored_bytes


def plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The tensors holding ``tensor``'s memory: a tensor subclass's inner tensors (quantized data, scales), else
    ``tensor`` itself (a subclass has no storage of its own to ask for its size or address)."""
    if is_traceable_wrapper_subclass(tensor) and type(tensor) is not torch.nn.Parameter:
        inner, _ = tensor.__tensor_flatten__()
        return [plain for name in inner for plain in plain_tensors(getattr(tensor, name))]
    return [tensor]


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The bytes ``tensor`` holds in memory: its inner tensors' for a subclass, else its elements at their dtype."""
    return sum(plain.numel() * plain.element_size() for plain in plain_tensors(tensor))


def model_bytes(unet: torch.nn.Module) -> int:
    stored = stored_bytes(unet)
    total = 0
    for name, parameter in unet.named_parameters():
        bytes_stored = stored.get(name)
        total += tensor_bytes(parameter) if bytes_stored is None else bytes_stored
    return total
