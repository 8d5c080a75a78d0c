"""Which kernels a latency measurement runs: never a fake-quant time presented as a quantized speed-up.

A simulated quantization plan is timed with real quantized kernels where a backend has them (torchao on CUDA:
int8 weight-only, or int8 dynamic activations with int8 weights; Linear layers, which is what torchao's CUDA
kernels cover: most of a transformer denoiser, the attention and feed-forward layers of a UNet). Elsewhere it is
timed with float kernels and its activation fake-quant switched off, and the trial records its quantized latency
as "not measured".
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from autoaccel.techniques.quantization import quantization_plan

FLOAT = "float"
NOT_MEASURED = "not measured"
NOT_APPLICABLE = "n/a"  # a plan without quantization: there is no quantized latency to measure
# torch._int_mm, under torchao's int8 x int8 kernel, takes widths in multiples of 8; any other width (a pruned
# feed-forward's, say) falls back to a path hundreds of times slower than float (H200: 139 ms against 0.06 ms)
INT_MM_MULTIPLE = 8


@dataclass(frozen=True)
class KernelChoice:
    """What the timed model runs: ``label`` goes into the trial's details."""

    label: str
    quantized_latency: str  # "measured", "not measured", or "n/a" for a plan without quantization


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def torchao_configs(unet: torch.nn.Module) -> OrderedDict:
    """Fully qualified Linear name -> torchao config, following the plan's bit widths.

    Plans of 5-8 weight bits map to int8 kernels (so a 6-bit plan runs int8: its size is still the plan's).
    Plans below 5 bits have no CUDA kernel here and stay float, as do Conv2d layers. Activations go int8 where
    the plan quantizes them to 8 bits and the layer's widths suit the int8 matmul; elsewhere weights alone do.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    plan = quantization_plan(unet)
    modules = dict(unet.named_modules())
    configs: OrderedDict = OrderedDict()
    for name, bits in plan.layer_bits.items():
        if not isinstance(modules[name], torch.nn.Linear) or bits < 5:
            continue
        if plan.activation_bits == 8 and name in plan.activation_ranges and _int_mm_fits(modules[name]):
            configs[name] = Int8DynamicActivationInt8WeightConfig()
        else:
            configs[name] = Int8WeightOnlyConfig()
    return configs


def _int_mm_fits(layer: torch.nn.Linear) -> bool:
    return layer.in_features % INT_MM_MULTIPLE == 0 and layer.out_features % INT_MM_MULTIPLE == 0


def real_quantized_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``unet`` with torchao's quantized kernels on the layers the plan quantizes (CUDA).

    The copy shares the original's activation fake-quant hooks (a deep copy keeps the same hook functions): the
    caller switches them off through the original plan's ``activations_enabled`` while timing.
    """
    from torchao.quantization import FqnToConfig, quantize_

    configs = torchao_configs(unet)
    deployed = copy.deepcopy(unet)
    if configs:
        quantize_(deployed, FqnToConfig(configs), filter_fn=None)
    return deployed


def _uses_real_kernels(unet: torch.nn.Module) -> bool:
    return quantization_plan(unet) is not None and str(unet.device).startswith("cuda") and torchao_available()


def kernel_key(unet: torch.nn.Module) -> str:
    """The part of a cost-cache key that the kernels decide: empty where a plan runs float kernels."""
    if not _uses_real_kernels(unet):
        return ""
    layers = ",".join(f"{name}:{type(config).__name__}" for name, config in torchao_configs(unet).items())
    return f"|torchao|{hashlib.sha1(layers.encode()).hexdigest()[:12]}"


def kernel_choice(unet: torch.nn.Module) -> KernelChoice:
    """What a timing of ``unet`` runs, without timing it: the label every trial records."""
    plan = quantization_plan(unet)
    if plan is None:
        return KernelChoice(FLOAT, NOT_APPLICABLE)
    if _uses_real_kernels(unet):
        layers = len(torchao_configs(unet))
        return KernelChoice(f"torchao int8 on {layers} Linear layers, float elsewhere", "measured")
    return KernelChoice(f"{FLOAT} (no quantized kernels on {unet.device})", NOT_MEASURED)


@contextlib.contextmanager
def deployment_kernels(pipeline, real_kernels: bool = True) -> Iterator[KernelChoice]:
    """Swaps the pipeline's unet for what a deployment of its plan would run, for the duration of a timing:
    the activation fake-quant is off either way (it is a simulation, not a cost), and on CUDA with torchao the
    unet is a copy running real quantized kernels (unless ``real_kernels`` is False: the plan on float
    kernels, which ``bench kernels`` times beside it)."""
    unet = pipeline.denoiser
    plan = quantization_plan(unet)
    choice = kernel_choice(unet) if real_kernels else KernelChoice(f"{FLOAT} kernels", NOT_MEASURED)
    if plan is None:
        yield choice
        return
    plan.activations_enabled = False
    if real_kernels and _uses_real_kernels(unet):
        pipeline.denoiser = real_quantized_copy(unet)
    try:
        yield choice
    finally:
        pipeline.denoiser = unet
        plan.activations_enabled = True
