"""What a quantized model runs when deployed, and what it stores: never a fake-quant time presented as a
quantized speed-up, never a float byte count for quantized weights.

A plan with ``backend: torchao`` whose every bit width has a torchao kernel is not simulated at all: its Linear
layers are quantized by ``torchao.quantization.quantize_`` with one config per module (``REAL_KERNELS``), its
images, size and latency are those of the real kernels, on CUDA and on a CPU alike (``real_quantized_model``).
torchao 0.18 has no Conv2d kernel (those layers stay float) and no CPU int4 kernel (int4 weight-only needs the
mslk package or CUDA's tinygemm): ``reports/bench/quantization-kernels-cpu.md`` measures what runs on a CPU.

A simulated quantization plan is timed with real quantized kernels where a backend has them (torchao on CUDA:
int8 weight-only, or int8 dynamic activations with int8 weights; Linear layers, which is what torchao's CUDA
kernels cover: most of a transformer denoiser, the attention and feed-forward layers of a UNet). Elsewhere it is
timed with float kernels and its activation fake-quant switched off, and the trial records its quantized latency
as "not measured" (``autoaccel.measure.kernels`` asks the technique through ``Technique.deployment``).

A fake-quantized model holds float tensors, so ``element_size`` would report the float size; the byte count a
deployment stores is ``bits / 8`` per weight plus one 16-bit scale per output channel (``Technique.stored_bytes``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterator
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import torch

from autoaccel.errors import TechniqueError

if TYPE_CHECKING:
    from autoaccel.techniques.quantization import BitAssignment

SCALE_BYTES = 2  # one fp16/bf16 scale per output channel, as int-N weight-only kernels store them
# torch._int_mm, under torchao's int8 x int8 kernel, takes widths in multiples of 8; any other width (a pruned
# feed-forward's, say) falls back to a path hundreds of times slower than float (H200: 139 ms against 0.06 ms)
INT_MM_MULTIPLE = 8


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def torchao_configs(unet: torch.nn.Module, assignment: BitAssignment) -> OrderedDict:
    """Fully qualified Linear name -> torchao config, following the plan's bit widths.

    Plans of 5-8 weight bits map to int8 kernels (so a 6-bit plan runs int8: its size is still the plan's).
    Plans below 5 bits have no CUDA kernel here and stay float, as do Conv2d layers. Activations go int8 where
    the plan quantizes them to 8 bits and the layer's widths suit the int8 matmul; elsewhere weights alone do.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    modules = dict(unet.named_modules())
    configs: OrderedDict = OrderedDict()
    for name, bits in assignment.layer_bits.items():
        if not isinstance(modules[name], torch.nn.Linear) or bits < 5:
            continue
        if assignment.activation_bits == 8 and name in assignment.activation_ranges and _int_mm_fits(modules[name]):
            configs[name] = Int8DynamicActivationInt8WeightConfig()
        else:
            configs[name] = Int8WeightOnlyConfig()
    return configs


def _int_mm_fits(layer: torch.nn.Linear) -> bool:
    return layer.in_features % INT_MM_MULTIPLE == 0 and layer.out_features % INT_MM_MULTIPLE == 0


def real_quantized_copy(unet: torch.nn.Module, assignment: BitAssignment) -> torch.nn.Module:
    """A copy of ``unet`` with torchao's quantized kernels on the layers the plan quantizes (CUDA).

    The copy shares the original's activation fake-quant hooks (a deep copy keeps the same hook functions): the
    caller switches them off through the original plan's ``activations_enabled`` while timing.
    """
    from torchao.quantization import FqnToConfig, quantize_

    configs = torchao_configs(unet, assignment)
    deployed = copy.deepcopy(unet)
    if configs:
        quantize_(deployed, FqnToConfig(configs), filter_fn=None)
    return deployed


# (weight bits, activation bits) -> the torchao config whose kernels run it on a Linear layer, where there is one
# on every device (CPU and CUDA): int8 weights alone, or int8 weights with int8 activations quantized per token
# as each call runs (dynamic: no calibrated range). Every other pair has no kernel: such a plan stays simulated.
REAL_KERNELS = {
    (8, None): "Int8WeightOnlyConfig",
    (8, 8): "Int8DynamicActivationInt8WeightConfig",
}


def real_kernel_name(weight_bits: int, activation_bits: int | None) -> str | None:
    """The torchao config that runs ``weight_bits`` weights with ``activation_bits`` activations, or None."""
    return REAL_KERNELS.get((weight_bits, activation_bits))


def real_layer_configs(unet: torch.nn.Module, layer_bits: dict[str, int], float_inputs: set[str], activation_bits):
    """Linear name -> torchao config name, following the plan's bits per layer; layers in ``float_inputs`` (the
    time-embedding group, whose inputs stay float) run weight-only. Conv2d layers have no torchao kernel."""
    modules = dict(unet.named_modules())
    configs: OrderedDict[str, str] = OrderedDict()
    for name, bits in layer_bits.items():
        if isinstance(modules[name], torch.nn.Linear):
            configs[name] = real_kernel_name(bits, None if name in float_inputs else activation_bits)
    return configs


def real_quantized_model(unet: torch.nn.Module, configs: dict[str, str]) -> torch.nn.Module:
    """A copy of ``unet`` whose listed Linear layers run torchao's kernels: ``quantize_`` with one config per
    module, as a user would call it. A model torchao cannot quantize (a float64 one) is a TechniqueError saying
    why."""
    import torchao.quantization as torchao_quantization

    quantized = copy.deepcopy(unet).eval().requires_grad_(False)
    per_module = {name: getattr(torchao_quantization, config)() for name, config in configs.items()}
    try:
        torchao_quantization.quantize_(quantized, torchao_quantization.FqnToConfig(per_module), filter_fn=None)
    except Exception as error:  # torchao refuses this model: the trial fails with torchao's reason
        raise TechniqueError(
            f"torchao {version('torchao')} could not quantize {type(unet).__name__} ({next(unet.parameters()).dtype}):"
            f" {type(error).__name__}: {error}"
        ) from error
    return quantized


def torchao_call(configs: dict[str, str]) -> dict[str, Any]:
    """How a user reproduces the model with torchao itself, for the recipe: the call and each module's config."""
    kinds = sorted(set(configs.values()))
    return {
        "library": f"torchao {version('torchao')}",
        "call": "torchao.quantization.quantize_(denoiser, FqnToConfig({name: config() for name, config in "
        "modules.items()}), filter_fn=None)",
        "configs": kinds,
        "modules": dict(configs),
    }


class RealKernels:
    """The deployment of a plan quantized with real kernels: it already runs what a deployment runs."""

    real_kernels = True

    def __init__(self, denoiser: torch.nn.Module, assignment: BitAssignment) -> None:
        self.denoiser, self.assignment = denoiser, assignment

    @property
    def label(self) -> str:
        counts: dict[str, int] = {}
        for config in self.assignment.kernels.values():
            counts[config] = counts.get(config, 0) + 1
        kernels = ", ".join(f"{config} on {count} Linear layers" for config, count in sorted(counts.items()))
        return f"torchao {kernels}; float elsewhere"

    @property
    def key(self) -> str:
        layers = ",".join(f"{name}:{config}" for name, config in self.assignment.kernels.items())
        return f"|torchao-real|{hashlib.sha1(layers.encode()).hexdigest()[:12]}"

    @contextlib.contextmanager
    def running(self, pipeline: Any, real_kernels: bool) -> Iterator[None]:
        yield


class QuantizedDeployment:
    """What timing a quantized model runs (``autoaccel.techniques.base.Deployment``)."""

    def __init__(self, denoiser: torch.nn.Module, assignment: BitAssignment) -> None:
        self.denoiser, self.assignment = denoiser, assignment
        self.real_kernels = str(denoiser.device).startswith("cuda") and torchao_available()

    @property
    def label(self) -> str:
        if self.real_kernels:
            return (
                f"torchao int8 on {len(torchao_configs(self.denoiser, self.assignment))} Linear layers, float elsewhere"
            )
        return f"float (no quantized kernels on {self.denoiser.device})"

    @property
    def key(self) -> str:
        if not self.real_kernels:
            return ""
        configs = torchao_configs(self.denoiser, self.assignment)
        layers = ",".join(f"{name}:{type(config).__name__}" for name, config in configs.items())
        return f"|torchao|{hashlib.sha1(layers.encode()).hexdigest()[:12]}"

    @contextlib.contextmanager
    def running(self, pipeline: Any, real_kernels: bool) -> Iterator[None]:
        """The activation fake-quant is off either way (it is a simulation, not a cost), and with
        ``real_kernels`` on CUDA with torchao the denoiser is a copy running real quantized kernels."""
        self.assignment.activations_enabled = False
        if real_kernels and self.real_kernels:
            pipeline.denoiser = real_quantized_copy(self.denoiser, self.assignment)
        try:
            yield
        finally:
            pipeline.denoiser = self.denoiser
            self.assignment.activations_enabled = True


def quantized_bytes(unet: torch.nn.Module, assignment: BitAssignment) -> dict[str, int]:
    """Weight name -> the bytes a deployment stores for it, for the weights ``assignment`` quantizes."""
    parameters = dict(unet.named_parameters())
    stored = {}
    for name, bits in assignment.layer_bits.items():
        weight = parameters[f"{name}.weight"]
        stored[f"{name}.weight"] = math.ceil(weight.numel() * bits / 8) + weight.shape[0] * SCALE_BYTES
    return stored
