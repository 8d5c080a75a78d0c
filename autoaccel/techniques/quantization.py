"""Technique ``quantization``: per-group weight bit-widths (2-8) and activation bits (8, 16 or none).

Quality is scored by *simulated* quantization: weights are rounded onto their N-bit grid (symmetric, per output
channel) and activations onto a calibrated per-tensor grid, with torch's own fake-quantize ops, while the
arithmetic stays float. Every figure says so: trials, reports and recipes carry ``simulated: [quantization]``, the
model-size figure is the real byte count of the bit assignment, and latency is never a fake-quant time: real kernels run
where a backend has them (both in ``autoaccel.techniques.quantization_kernels``, which measurement asks through the
technique's ``stored_bytes`` and ``deployment``).

Timestep-aware, as in PTQ4DM and TFMQ-DM: calibration inputs are the exact calls the denoiser receives along
the teacher's own sampling trajectory, over the whole schedule (``autoaccel.reference.calibration``); the time,
label and text-projection embeddings are a group of their own with their own bit width, and their activations
stay float (they depend on t and the condition alone, so a deployment computes them once per step).

Layers are grouped by the denoiser's blocks (``DenoiserLayout.block_names``): a UNet block's
resnets, attentions and samplers each form a group (``down_blocks.0.resnets``, ``mid_block.attentions``), a
transformer block is one group (a sequence layout's blocks are grouped whole), and each top-level module is one
(``conv_in``, ``pos_embed``, ``proj_out``). A cheap sensitivity pass (the prediction error with one group at
``low_bits``) orders the groups; the assignment puts the least sensitive share ``low_fraction`` of the weights at
``low_bits`` and the rest at ``weight_bits``: a three-number search over any denoiser, instead of one dimension
per layer.

``backend: torchao`` runs the plan on real kernels where torchao has one for every bit width it sets (8-bit
weights, with activations float or 8-bit: ``quantization_kernels.REAL_KERNELS``): the layer groups' bit widths
map onto one torchao config per Linear module and ``torchao.quantization.quantize_`` applies them, Conv2d layers
stay float, and nothing is simulated (no calibration either: int8 activations are quantized per token as each call
runs). A setting without a kernel (weights below 8 bits, 16-bit activations) stays simulated, labelled so.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.reference.calibration import (
    CALIBRATION_STEPS,
    Call,
    cached,
    replay,
    trajectory_calls,
    trajectory_work,
)
from autoaccel.targets.base import hash_weights
from autoaccel.targets.layouts import layout_of
from autoaccel.techniques.base import ParamSpec, SearchWork, Technique, guided_rows, register, require_types
from autoaccel.techniques.quantization_kernels import (
    QuantizedDeployment,
    RealKernels,
    quantized_bytes,
    real_kernel_name,
    real_layer_configs,
    real_quantized_model,
    torchao_call,
)
from autoaccel.util.artifacts import Artifact

WEIGHT_BITS = range(2, 9)
ACTIVATION_BITS = (None, 8, 16)
TIME_GROUP = "time_embedding"
# Modules that embed the timestep, the class or the text once per call: any layer under one is in TIME_GROUP
# (UNets' time/class/added embeddings, SD3's time_text_embed and context_embedder, PixArt's adaln_single and
# caption_projection, the label-and-time embedding ``emb`` inside DiT's adaptive norms).
TIME_MODULES = frozenset(
    {
        "time_embedding",
        "class_embedding",
        "add_embedding",
        "encoder_hid_proj",
        "time_text_embed",
        "context_embedder",
        "adaln_single",
        "caption_projection",
        "emb",
    }
)
QUANTIZED_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)
SIMULATED = "simulated"
BACKENDS = (SIMULATED, "torchao")  # torchao: real kernels where it has them for the plan's bit widths


@dataclass(frozen=True)
class QuantizationConfig:
    """Bit widths of one plan; ``activation_bits`` None keeps activations float.

    ``low_bits`` above ``weight_bits`` means no group goes lower than ``weight_bits`` (so the two can be
    searched independently).
    """

    weight_bits: int = 8
    low_bits: int = 4
    low_fraction: float = 0.0
    time_bits: int = 8
    activation_bits: int | None = None
    calibration_samples: int = 32
    seed: int = 0
    enabled: bool = True  # False keeps the float model: lets a joint search choose not to quantize
    backend: str = SIMULATED

    def __post_init__(self) -> None:
        require_types(self, "quantization", {"enabled": bool, "low_fraction": (int, float), "seed": int})
        if self.backend not in BACKENDS:
            raise ConfigError(f"quantization.backend={self.backend!r} is not valid; valid: {', '.join(BACKENDS)}")
        for name in ("weight_bits", "low_bits", "time_bits"):
            bits = getattr(self, name)
            if isinstance(bits, bool) or bits not in WEIGHT_BITS:
                raise ConfigError(f"quantization.{name}={bits!r} is not valid; weight bits are an int in 2..8")
        if not 0.0 <= self.low_fraction <= 1.0:
            raise ConfigError(f"quantization.low_fraction={self.low_fraction} is not valid; it must be in [0, 1]")
        if isinstance(self.activation_bits, bool) or self.activation_bits not in ACTIVATION_BITS:
            raise ConfigError(
                f"quantization.activation_bits={self.activation_bits!r} is not valid; valid: null (float), 8, 16"
            )
        if isinstance(self.calibration_samples, bool) or not isinstance(self.calibration_samples, int):
            raise ConfigError(f"quantization.calibration_samples={self.calibration_samples!r} must be an int >= 4")
        if self.calibration_samples < 4:
            raise ConfigError(f"quantization.calibration_samples={self.calibration_samples} must be >= 4")

    @property
    def used_bits(self) -> set[int]:
        """The weight bit widths some group can get: the low bits only where some weights go low."""
        low = {self.low_bits} if self.low_fraction > 0.0 and self.low_bits < self.weight_bits else set()
        return {self.weight_bits, self.time_bits, *low}

    @property
    def simulated(self) -> bool:
        """Whether this plan is scored by simulation (fake quantization): quantized, without real kernels."""
        return self.enabled and not self.real

    @property
    def real(self) -> bool:
        """Whether this plan runs real kernels: its backend has a kernel for every bit width it sets."""
        return (
            self.enabled
            and self.backend != SIMULATED
            and all(real_kernel_name(bits, self.activation_bits) is not None for bits in self.used_bits)
            and real_kernel_name(self.time_bits, None) is not None
        )


_BITS = ParamSpec("int", low=min(WEIGHT_BITS), high=max(WEIGHT_BITS))
# What a space may set; every value is checked again by QuantizationConfig per candidate.
QUANTIZATION_PARAMS = {
    "weight_bits": _BITS,
    "low_bits": _BITS,
    "low_fraction": ParamSpec("float", low=0.0, high=1.0),
    "time_bits": _BITS,
    "activation_bits": ParamSpec("choice", choices=ACTIVATION_BITS),
    "calibration_samples": ParamSpec("int", low=4),
    "seed": ParamSpec("int", low=0, high=2**32 - 1),
    "enabled": ParamSpec("bool"),
    "backend": ParamSpec("choice", choices=BACKENDS),
}


@dataclass
class BitAssignment:
    """What was quantized how; attached to the denoiser as ``autoaccel_quantization`` for measurement and
    kernels."""

    layer_bits: dict[str, int]  # module name -> weight bits
    group_bits: dict[str, int]
    activation_bits: int | None
    activation_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)
    simulated: bool = True
    activations_enabled: bool = True  # off while timing float kernels: fake-quant overhead is not a cost
    kernels: dict[str, str] = field(default_factory=dict)  # real plans: module name -> the torchao config it runs

    def describe(self) -> dict:
        return {
            "simulated": self.simulated,
            **({"kernels": torchao_call(self.kernels)} if self.kernels else {}),
            "group_bits": dict(self.group_bits),
            "activation_bits": self.activation_bits,
            "sensitivity": {group: round(value, 6) for group, value in self.sensitivity.items()},
        }


def group_of(module_name: str, blocks: list[str], whole_blocks: bool) -> str:
    """The layer group of a module: TIME_GROUP under an embedding; inside one of ``blocks``, that block
    (``whole_blocks``: transformers) or its resnets/attentions/samplers (UNets); else its top-level module."""
    parts = module_name.split(".")
    if TIME_MODULES.intersection(parts):
        return TIME_GROUP
    for block in blocks:
        if module_name.startswith(block + "."):
            if whole_blocks:
                return block
            return ".".join(parts[: block.count(".") + 2])
    return parts[0]


def layer_groups(denoiser: torch.nn.Module) -> dict[str, list[str]]:
    """Group name -> names of its Conv2d/Linear layers, in module order."""
    layout = layout_of(denoiser)
    blocks = layout.block_names(denoiser)
    whole_blocks = layout.sequence
    groups: dict[str, list[str]] = OrderedDict()
    for name, module in denoiser.named_modules():
        if isinstance(module, QUANTIZED_LAYERS):
            groups.setdefault(group_of(name, blocks, whole_blocks), []).append(name)
    return groups


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel rounding onto the signed ``bits`` grid (restricted range, zero exact)."""
    levels = 2 ** (bits - 1) - 1
    flat = weight.detach().float().flatten(1)
    scale = (flat.abs().amax(dim=1) / levels).clamp_min(1e-12)
    zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
    quantized = torch.fake_quantize_per_channel_affine(flat, scale, zero, 0, -levels, levels)
    return quantized.view_as(weight).to(weight.dtype)


def _activation_grid(low: float, high: float, bits: int) -> tuple[float, int, int]:
    """Asymmetric per-tensor grid covering [low, high] (and zero): scale, zero point, top level."""
    top = 2**bits - 1
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / top, 1e-12)
    zero_point = int(min(max(round(-low / scale), 0), top))
    return scale, zero_point, top


def _activation_hook(assignment: BitAssignment, low: float, high: float, bits: int):
    scale, zero_point, top = _activation_grid(low, high, bits)

    def hook(module, args):
        if not assignment.activations_enabled:
            return None
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero_point, 0, top), *args[1:])

    return hook


# ---------------------------------------------------------------- calibration on the teacher's own trajectory

_SENSITIVITY_CACHE: OrderedDict[tuple, dict[str, float]] = OrderedDict()


def trajectory_inputs(target, samples: int, seed: int) -> list[Call]:
    """The calibration calls: the denoiser's exact calls along the teacher's ODE trajectory, every step kept."""
    return trajectory_calls(target, samples, seed, CALIBRATION_STEPS)


def _relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    return float((output - reference).pow(2).mean() / reference.pow(2).mean().clamp_min(1e-12))


def group_sensitivity(denoiser, calls: list[Call], bits: int, cache_key=None) -> dict[str, float]:
    """Relative prediction error on the calibration calls with only one group's weights at ``bits``.

    Measured, not guessed: a replay per group of calls drawn from every part of the schedule.
    """
    if cache_key is None:
        return _sensitivity(denoiser, calls, bits)
    return cached(_SENSITIVITY_CACHE, cache_key, lambda: _sensitivity(denoiser, calls, bits))


def _sensitivity(denoiser, calls: list[Call], bits: int) -> dict[str, float]:
    modules = dict(denoiser.named_modules())
    reference = replay(denoiser, calls)
    sensitivity = {}
    for group, names in layer_groups(denoiser).items():
        if group == TIME_GROUP:
            continue
        originals = {name: modules[name].weight.data.clone() for name in names}
        try:
            for name in names:
                modules[name].weight.data = fake_quantize_weight(originals[name], bits)
            sensitivity[group] = _relative_error(reference, replay(denoiser, calls))
        finally:
            for name in names:
                modules[name].weight.data = originals[name]
    return sensitivity


def assign_group_bits(
    groups: dict[str, list[str]], sizes: dict[str, int], sensitivity: dict[str, float], config: QuantizationConfig
) -> dict[str, int]:
    """Least sensitive groups (per weight) first at ``low_bits`` until ``low_fraction`` of the weights is reached."""
    bits = {group: config.weight_bits for group in groups}
    if TIME_GROUP in bits:
        bits[TIME_GROUP] = config.time_bits
    if config.low_bits >= config.weight_bits:
        return bits
    ranked = sorted(sensitivity, key=lambda group: (sensitivity[group] / max(sizes[group], 1), group))
    total = sum(sizes[group] for group in ranked)
    taken = 0
    for group in ranked:
        if total == 0 or (taken + sizes[group]) / total > config.low_fraction + 1e-9:
            break
        bits[group] = config.low_bits
        taken += sizes[group]
    return bits


def _calibrate_activations(denoiser, calls: list[Call], names: list[str]) -> dict[str, tuple[float, float]]:
    """Min/max of every quantized layer's input over the whole trajectory."""
    modules = dict(denoiser.named_modules())
    ranges: dict[str, list[float]] = {}

    def observer(name):
        def hook(module, args):
            value = args[0].detach()
            low, high = float(value.min()), float(value.max())
            seen = ranges.setdefault(name, [low, high])
            seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

        return hook

    handles = [modules[name].register_forward_pre_hook(observer(name)) for name in names]
    try:
        replay(denoiser, calls)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (low, high) for name, (low, high) in ranges.items()}


def _assign_bits(model, config: QuantizationConfig, target) -> BitAssignment:
    """The plan's bits per group and per layer of ``model``, the least sensitive groups low (the sensitivity
    pass runs on the target's trajectory only where some weights go low)."""
    groups = layer_groups(model)
    if not groups:
        raise TechniqueError(f"quantization found no Conv2d or Linear layer in {type(model).__name__}")
    modules = dict(model.named_modules())
    sizes = {group: sum(modules[name].weight.numel() for name in names) for group, names in groups.items()}
    sensitivity: dict[str, float] = {}
    if config.low_fraction > 0.0 and config.low_bits < config.weight_bits:
        if target is None:
            raise TechniqueError("quantization needs the target's teacher trajectory for its sensitivity pass")
        calls = trajectory_inputs(target, config.calibration_samples, config.seed)
        key = (hash_weights(model), config.low_bits, config.calibration_samples, config.seed)
        sensitivity = group_sensitivity(model, calls, config.low_bits, key)
    group_bits = assign_group_bits(groups, sizes, sensitivity, config)
    layer_bits = {name: group_bits[group] for group, names in groups.items() for name in names}
    return BitAssignment(layer_bits, group_bits, config.activation_bits, sensitivity=sensitivity)


def quantize_real(unet, config: QuantizationConfig, target) -> torch.nn.Module:
    """A copy of ``unet`` whose Linear layers run torchao's kernels for the plan's bits (one config per module),
    Conv2d layers float: the model a deployment runs, with nothing simulated."""
    assignment = _assign_bits(unet, config, target)
    float_inputs = set(layer_groups(unet).get(TIME_GROUP, []))
    assignment.kernels = real_layer_configs(unet, assignment.layer_bits, float_inputs, config.activation_bits)
    assignment.layer_bits = {name: assignment.layer_bits[name] for name in assignment.kernels}
    assignment.simulated = False
    quantized = real_quantized_model(unet, assignment.kernels)
    quantized.autoaccel_quantization = assignment
    return quantized


def quantize_unet(unet, config: QuantizationConfig, target) -> torch.nn.Module:
    """A copy of ``unet`` (any supported denoiser) with the plan's weights on their grids and activation
    fake-quant hooks attached."""
    if target is None:
        raise TechniqueError("quantization needs the target's teacher trajectory for calibration")
    quantized = copy.deepcopy(unet).float().eval().requires_grad_(False)
    assignment = _assign_bits(quantized, config, target)
    groups, modules, layer_bits = layer_groups(quantized), dict(quantized.named_modules()), assignment.layer_bits
    if config.activation_bits is not None:
        calls = trajectory_inputs(target, config.calibration_samples, config.seed)
        quantized_inputs = [name for group, names in groups.items() if group != TIME_GROUP for name in names]
        assignment.activation_ranges = _calibrate_activations(quantized, calls, quantized_inputs)
    for name, bits in layer_bits.items():
        modules[name].weight.data = fake_quantize_weight(modules[name].weight.data, bits)
    for name, (low, high) in assignment.activation_ranges.items():
        modules[name].register_forward_pre_hook(_activation_hook(assignment, low, high, config.activation_bits))
    quantized.autoaccel_quantization = assignment
    return quantized


def apply_quantization(pipeline, config: QuantizationConfig, target) -> None:
    if config.real:
        pipeline.denoiser = quantize_real(pipeline.denoiser, config, target)
    elif config.enabled:
        pipeline.denoiser = quantize_unet(pipeline.denoiser, config, target)


def quantized_weights(unet, config: QuantizationConfig):
    """The calibrated model: its weights on their grids, and its plan (bits, activation ranges) as metadata."""
    assignment = getattr(unet, "autoaccel_quantization", None)
    if not config.enabled or assignment is None or not assignment.simulated:
        return None  # a real-kernel plan is rebuilt from the base weights by torchao in a moment: nothing to store
    stored = {
        "layer_bits": assignment.layer_bits,
        "group_bits": assignment.group_bits,
        "activation_bits": assignment.activation_bits,
        "activation_ranges": {name: list(bounds) for name, bounds in assignment.activation_ranges.items()},
        "sensitivity": assignment.sensitivity,
    }
    return Artifact(dict(unet.state_dict()), {"technique": "quantization", "plan": json.dumps(stored)})


def quantization_from_artifact(pipeline, config: QuantizationConfig, target, artifact) -> None:
    """The calibrated model without calibrating again: stored weights loaded strictly, hooks from stored ranges."""
    if not config.enabled:
        raise ValueError("quantization.enabled is false, so there is nothing to load")
    stored = json.loads(artifact.metadata["plan"])
    if stored["activation_bits"] != config.activation_bits:
        raise ValueError(f"it was calibrated for activation_bits={stored['activation_bits']!r}")
    quantized = copy.deepcopy(pipeline.denoiser).float().eval().requires_grad_(False)
    quantized.load_state_dict(artifact.tensors, strict=True)
    ranges = {name: (float(low), float(high)) for name, (low, high) in stored["activation_ranges"].items()}
    assignment = BitAssignment(
        stored["layer_bits"], stored["group_bits"], stored["activation_bits"], ranges, stored["sensitivity"]
    )
    modules = dict(quantized.named_modules())
    for name, (low, high) in ranges.items():
        modules[name].register_forward_pre_hook(_activation_hook(assignment, low, high, config.activation_bits))
    quantized.autoaccel_quantization = assignment
    pipeline.denoiser = quantized


def quantization_recompute(config: QuantizationConfig) -> str | None:
    return f"quantization calibration ({config.calibration_samples} samples)" if config.simulated else None


def quantization_record(pipeline, config: QuantizationConfig) -> dict | None:
    """A real-kernel plan's torchao call and each module's config, beside its settings in the recipe."""
    assignment = bit_assignment(pipeline.denoiser)
    return {"kernels": torchao_call(assignment.kernels)} if assignment is not None and assignment.kernels else None


def quantization_cost(config: QuantizationConfig) -> dict:
    """The bit widths a deployment's kernels run: weight, low-group and time-embedding bits, and activation bits.

    Calibration (samples, seed) only moves the grids; a assignment that is off, or whose low bits are never used,
    says so rather than listing settings that change nothing. Which layers end up on which quantized kernel
    is part of the measured structure (``QuantizedDeployment.key``).
    """
    if not config.enabled:
        return {}
    cost = {"weight_bits": config.weight_bits, "time_bits": config.time_bits, "activation_bits": config.activation_bits}
    if config.real:
        cost["backend"] = config.backend
    if config.low_bits < config.weight_bits and config.low_fraction > 0.0:
        cost.update(low_bits=config.low_bits, low_fraction=float(config.low_fraction))
    return cost


def bit_assignment(unet: torch.nn.Module) -> BitAssignment | None:
    """The plan this technique attached to ``unet``, or None for a float model: what size, kernels and pruning
    read to know a model is quantized."""
    return getattr(unet, "autoaccel_quantization", None)


def _with_assignment(unet: torch.nn.Module, use):
    """``use(assignment)`` for a quantized model; None for a float one."""
    assignment = bit_assignment(unet)
    return use(assignment) if assignment is not None else None


def _simulation(assignment: BitAssignment) -> dict | None:
    return assignment.describe() if assignment.simulated else None


def _stored_bytes(unet, assignment: BitAssignment) -> dict[str, int]:
    """A simulated plan's planned bytes; a real one holds its quantized tensors, counted as they are."""
    return quantized_bytes(unet, assignment) if assignment.simulated else {}


def _deployment(unet, assignment: BitAssignment):
    return QuantizedDeployment(unet, assignment) if assignment.simulated else RealKernels(unet, assignment)


def quantization_work(config: QuantizationConfig, target, calls_per_image: float) -> SearchWork:
    """What quantization calibrates, in denoiser rows (``SearchWork``): the teacher's trajectory, a replay of it
    per layer group for the sensitivity pass where some weights go low (kept per model and low bit width: counted
    once for the target's own model), and one replay for the activation ranges."""
    if not config.enabled:
        return SearchWork()
    trajectory = config.calibration_samples * CALIBRATION_STEPS * guided_rows(target)
    work = SearchWork()
    if config.low_fraction > 0.0 and config.low_bits < config.weight_bits:
        groups = len([group for group in layer_groups(target.denoiser) if group != TIME_GROUP])
        sensitivity = f"quantization sensitivity ({config.low_bits} bits, seed {config.seed})"
        work = work + SearchWork(shared={sensitivity: SearchWork(calibration=(groups + 1) * trajectory)})
    if config.simulated and config.activation_bits is not None:
        work = work + SearchWork(calibration=trajectory)
    if work == SearchWork():
        return work
    return work + trajectory_work(target, config.calibration_samples, config.seed)


QUANTIZATION = register(
    Technique(
        name="quantization",
        order=7,
        config_cls=QuantizationConfig,
        apply=apply_quantization,
        modifies_model=True,
        simulated=True,
        simulates=lambda config: config.simulated,
        unchanged_params={"enabled": False},
        params=QUANTIZATION_PARAMS,
        cost_key=quantization_cost,
        artifact_state=quantized_weights,
        from_artifact=quantization_from_artifact,
        recompute=quantization_recompute,
        float32_copy=True,  # trained or calibrated on a float32 copy
        recipe_record=quantization_record,
        simulation=lambda unet: _with_assignment(unet, _simulation),
        stored_bytes=lambda unet: _with_assignment(unet, lambda assignment: _stored_bytes(unet, assignment)) or {},
        deployment=lambda unet: _with_assignment(unet, lambda assignment: _deployment(unet, assignment)),
        search_work=quantization_work,
    )
)
