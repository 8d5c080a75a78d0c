"""LoRA adapters (through ``peft``): a student or a recovered pruned model trained as a low-rank update of the
denoiser's linear layers instead of as a whole float32 copy.

The base weights stay frozen in the precision the model was loaded in and are shared by every copy training makes
(the student, its EMA, a consistency target network), so training a student costs the adapter and the activations,
not another model. The adapter trains in float32 under bfloat16/float16 autocast where the base is in that
precision, with gradient checkpointing where the model supports it. Which layers it adapts comes from the model's
layout (``layout_of(denoiser)``): ``attention`` (the query, key, value and output projections of every attention)
or ``attention_mlp`` (and both linears of every feed-forward).

Trained, the adapter is merged into a copy of the weights (``merged_model``; peft's own merge, which diffusers'
``fuse_lora`` runs too), so what is measured and deployed runs at the base model's cost; the model carries its
adapter (``LORA_ADAPTERS``, by the technique that trained it) for its artifact, which holds the adapter weights
alone, in diffusers' LoRA format.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import accelerate
import diffusers
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from autoaccel.targets import base as target_base
from autoaccel.targets.layouts import DenoiserLayout, layout_of

ADAPTERS = ("full", "lora", "auto")  # what a training produces: whole weights, a LoRA adapter, or by model size
LORA_MODULES = ("attention", "attention_mlp")
MAX_RANK = 1024
# the attribute a merged model carries: technique name -> the adapter it merged, for that technique's artifact (a
# pruned copy of a LoRA student inherits the student's, which stays the distillation's, never the pruning's)
LORA_ADAPTERS = "lora_adapters"
ADAPTER_METADATA = "autoaccel_lora"  # the artifact's metadata key: rank and modules, as JSON
ADAPTER_NAME = "default"
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class AdapterSettings:
    """A LoRA adapter of ``rank`` on the layers ``modules`` names (``LORA_MODULES``); its scale is 1
    (``lora_alpha`` = rank), which is what diffusers' ``load_lora_weights`` assumes of a file without alphas."""

    rank: int = 16
    modules: str = "attention_mlp"


@dataclass(frozen=True)
class TrainedAdapter:
    """What a merged model carries: the settings and the adapter weights (peft's names, without the adapter's)."""

    settings: AdapterSettings
    weights: dict[str, torch.Tensor]


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def resolved_adapter(choice: str, rank: int, modules: str, denoiser: torch.nn.Module) -> AdapterSettings | None:
    """The adapter a setting ``choice`` (``ADAPTERS``) trains on ``denoiser``: None for whole weights. ``auto``
    trains an adapter on a denoiser of more than ``LORA_PARAMETERS`` (200M, ``autoaccel.targets.base``), whole
    weights below (the target capability ``lora`` says the same to a space)."""
    if choice == "full" or (choice == "auto" and parameter_count(denoiser) <= target_base.LORA_PARAMETERS):
        return None
    return AdapterSettings(rank, modules)


def adapted_layers(denoiser: torch.nn.Module, modules: str) -> list[str]:
    """The names of the linear layers an adapter of ``modules`` adapts, found through the model's layout."""
    layout = layout_of(denoiser)
    chosen: list[torch.nn.Module] = []
    for attention in layout.attentions(denoiser):
        chosen.extend(DenoiserLayout.projections(attention))
        outputs = getattr(attention, "to_out", None)
        if isinstance(outputs, torch.nn.ModuleList) and len(outputs) and isinstance(outputs[0], torch.nn.Linear):
            chosen.append(outputs[0])
        if isinstance(getattr(attention, "to_add_out", None), torch.nn.Linear):
            chosen.append(attention.to_add_out)
    if modules == "attention_mlp":
        for feed_forward in layout.feed_forwards(denoiser):
            projection = getattr(feed_forward.net[0], "proj", feed_forward.net[0])
            chosen.extend(layer for layer in (projection, feed_forward.net[2]) if isinstance(layer, torch.nn.Linear))
    names = {id(module): name for name, module in denoiser.named_modules()}
    return sorted({names[id(layer)] for layer in chosen if id(layer) in names})


def lora_config(denoiser: torch.nn.Module, settings: AdapterSettings) -> LoraConfig:
    layers = adapted_layers(denoiser, settings.modules)
    if not layers:
        raise ValueError(f"this {type(denoiser).__name__} has no {settings.modules} layers for a LoRA adapter")
    return LoraConfig(r=settings.rank, lora_alpha=settings.rank, target_modules=layers, lora_dropout=0.0)


def is_adapted(module: torch.nn.Module) -> bool:
    return any(isinstance(layer, BaseTunerLayer) for layer in module.modules())


def adapter_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The adapter's own parameters (peft's ``lora_`` weights), by name."""
    return {name: parameter for name, parameter in module.named_parameters() if ".lora_" in name}


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What an optimizer steps: the adapter of an adapted model, every parameter of another."""
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def inject(denoiser: torch.nn.Module, settings: AdapterSettings) -> torch.nn.Module:
    """Adds a freshly initialised adapter to ``denoiser`` in place (A random, B zero: the model computes what it
    did), in float32 and trainable; every other parameter is frozen; gradient checkpointing is on where the model
    supports it (merging turns it off)."""
    inject_adapter_in_model(lora_config(denoiser, settings), denoiser, adapter_name=ADAPTER_NAME)
    denoiser.requires_grad_(False)
    for parameter in adapter_parameters(denoiser).values():
        parameter.data = parameter.data.float()
        parameter.requires_grad_(True)
    if getattr(denoiser, "_supports_gradient_checkpointing", False):
        denoiser.enable_gradient_checkpointing()  # activations recomputed in the backward pass: memory for time
    return denoiser


def adapted_copy(denoiser: torch.nn.Module, settings: AdapterSettings) -> torch.nn.Module:
    """A trainable copy whose base weights are ``denoiser``'s own tensors (never written) and whose adapter is
    its own: a copy of ``denoiser``'s adapter where it has one (a progressive round continuing the last), else a
    new one (``inject``)."""
    shared = {id(parameter): parameter for name, parameter in denoiser.named_parameters() if ".lora_" not in name}
    student = copy.deepcopy(denoiser, shared)
    if is_adapted(student):
        for parameter in adapter_parameters(student).values():
            parameter.requires_grad_(True)
    else:
        inject(student, settings)
    return student.train()


def training_precision(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """bfloat16/float16 autocast where the model's base weights are in that precision (the adapter is float32
    and the inputs float32); nothing otherwise, so a float32 model trains exactly as before."""
    base = next((p for name, p in module.named_parameters() if ".lora_" not in name), None)
    if base is None or base.dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    return torch.autocast(base.device.type, dtype=base.dtype)


class AdapterWeights:
    """The part of an adapted model a training checkpoint keeps: its adapter, not the shared base weights."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach() for name, parameter in adapter_parameters(self.module).items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        own = adapter_parameters(self.module)
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value)


def checkpointed(module: torch.nn.Module):
    """What a checkpoint stores of a trained module: its adapter where it has one, else the module."""
    return AdapterWeights(module) if is_adapted(module) else module


def _merge_in_place(adapted: torch.nn.Module, settings: AdapterSettings, owner: str) -> torch.nn.Module:
    """Merges every adapted layer's update into its own weights and puts the plain layer back (peft's merge, as
    diffusers' ``fuse_lora`` runs it); the model carries the adapter it merged, as technique ``owner``'s."""
    weights = {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(adapted).items()}
    for name, module in list(adapted.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(adapted.get_submodule(parent_name) if parent_name else adapted, child, module.get_base_layer())
    if getattr(adapted, "_supports_gradient_checkpointing", False):
        adapted.disable_gradient_checkpointing()
    adapted.__dict__.pop("peft_config", None)  # no adapter is left: a later one (recovery of a student) starts anew
    adapted.eval().requires_grad_(False)
    carried = {**getattr(adapted, LORA_ADAPTERS, {}), owner: TrainedAdapter(settings, weights)}
    object.__setattr__(adapted, LORA_ADAPTERS, carried)
    return adapted


def merged_model(adapted: torch.nn.Module, settings: AdapterSettings, owner: str) -> torch.nn.Module:
    """The deployed model of a trained adapted one: a copy with weights of its own (the adapted model's base is
    shared with the model it was trained from), the adapter merged into them."""
    return _merge_in_place(copy.deepcopy(adapted), settings, owner)


def merge_adapter(adapted: torch.nn.Module, settings: AdapterSettings, owner: str) -> torch.nn.Module:
    """``merged_model`` in place, for an adapted model whose weights are its own (a pruned copy)."""
    return _merge_in_place(adapted, settings, owner)


def trained_adapter(model: torch.nn.Module, owner: str) -> TrainedAdapter | None:
    """The adapter technique ``owner`` merged into ``model`` (or into the model it is a copy of)."""
    return getattr(model, LORA_ADAPTERS, {}).get(owner)


def with_adapter(
    denoiser: torch.nn.Module, settings: AdapterSettings, weights: Mapping[str, torch.Tensor], owner: str
) -> torch.nn.Module:
    """``denoiser`` (changed in place: pass a copy) with an adapter of ``settings`` loaded from ``weights`` (peft's
    names) and merged, never trained; a missing or extra adapter weight is an error."""
    with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten; the global random state is kept
        inject(denoiser, settings)
    result = set_peft_model_state_dict(denoiser, dict(weights), adapter_name=ADAPTER_NAME)
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if missing or result.unexpected_keys:
        wrong = (missing or result.unexpected_keys)[0]
        raise ValueError(f"its adapter does not fit this model (first differing weight: {wrong})")
    return _merge_in_place(denoiser, settings, owner)


# ----------------------------------------------------------------------------------------------- the artifact


def diffusers_prefix(denoiser: torch.nn.Module) -> str:
    """The component a diffusers LoRA file names the denoiser by: ``transformer`` for a row of blocks, else
    ``unet`` (what ``load_lora_weights`` reads)."""
    return "transformer" if layout_of(denoiser).sequence else "unet"


def adapter_tensors(model: torch.nn.Module, adapter: TrainedAdapter) -> tuple[dict[str, torch.Tensor], dict]:
    """The artifact's tensors (diffusers' LoRA names: ``unet.<layer>.lora_A.weight``) and metadata."""
    prefix = diffusers_prefix(model)
    tensors = {f"{prefix}.{name}": tensor for name, tensor in adapter.weights.items()}
    return tensors, {ADAPTER_METADATA: json.dumps(asdict(adapter.settings))}


def stored_adapter(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]):
    """(settings, peft-named weights) from an artifact's tensors and metadata; None where it holds no adapter."""
    if ADAPTER_METADATA not in metadata:
        return None
    settings = AdapterSettings(**json.loads(metadata[ADAPTER_METADATA]))
    prefix = diffusers_prefix(model) + "."
    if any(not name.startswith(prefix) for name in tensors):
        raise ValueError(f"its adapter weights are not all named {prefix}*")
    return settings, {name[len(prefix) :]: tensor for name, tensor in tensors.items()}


def check_stored_kind(choice: str, wanted: AdapterSettings | None, stored: AdapterSettings | None) -> None:
    """Refuses an artifact whose kind (whole weights, or an adapter of some rank and layers: ``stored``) is not
    what the config trains on this model (``wanted``). ``auto`` (``choice``) follows the artifact's kind (a recipe
    written before adapters existed holds whole weights), but an adapter must still be the config's."""
    if choice == "auto" and (stored is None or wanted is None):
        wanted = stored
    if stored != wanted:
        raise ValueError(f"it holds {_kind(stored)}, and this config trains {_kind(wanted)} on this model")


def _kind(adapter: AdapterSettings | None) -> str:
    return f"a rank-{adapter.rank} {adapter.modules} LoRA adapter" if adapter else "whole weights"


# ------------------------------------------------------------------------------------------- size from a config


@dataclass(frozen=True)
class AdapterSize:
    """An adapter's parameters and the model's, counted from the model's config alone."""

    adapter_parameters: int
    model_parameters: int

    @property
    def adapter_bytes(self) -> int:
        """As stored: float32."""
        return self.adapter_parameters * FLOAT32_BYTES

    def share_of_model(self, model_bytes_per_parameter: int = 2) -> float:
        """The adapter's float32 bytes as a share of the model's at ``model_bytes_per_parameter`` (2: float16 or
        bfloat16, as large models are deployed)."""
        return self.adapter_bytes / (self.model_parameters * model_bytes_per_parameter)


def adapter_size(config: Mapping[str, Any], rank: int, modules: str) -> AdapterSize:
    """The size of a rank-``rank`` adapter on ``modules`` of the denoiser a diffusers config describes (its
    ``_class_name`` and settings, as in its ``config.json``): the model is built on the meta device, so no weight
    is allocated or read (an SDXL UNet takes a second)."""
    model_class = getattr(diffusers, str(config.get("_class_name")), None)
    if model_class is None or not hasattr(model_class, "from_config"):
        raise ValueError(f"config _class_name={config.get('_class_name')!r} is not a diffusers model class")
    settings = {key: value for key, value in config.items() if key != "_class_name"}
    with accelerate.init_empty_weights():
        model = model_class.from_config(settings)
    layers = [model.get_submodule(name) for name in adapted_layers(model, modules)]
    adapter = sum(rank * (layer.in_features + layer.out_features) for layer in layers)
    return AdapterSize(adapter, parameter_count(model))
