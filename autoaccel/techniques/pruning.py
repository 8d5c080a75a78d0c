"""Technique ``pruning``: a physically smaller denoiser through torch-pruning (channels removed, not masked).

Structured pruning of any supported denoiser (``autoaccel.targets.denoisers``): a global ``ratio`` scaled per
stage (``down``, ``mid``, ``up``), an importance criterion (weight magnitude; Taylor, from the gradient of the
denoising loss on the teacher's own samples; random, as a control), and whole attention heads rather than head
dimensions (thinner heads made CPU attention slower).

- UNets: every channel torch-pruning can trace may go except the output convolution's; the stages are the down
  blocks, the mid block and the up blocks.
- Transformers: attention heads (query, key and value projections together, both streams of a joint attention)
  and the hidden width of each feed-forward (a gated convolutional one, Sana's, by the same ratio and importance
  outside torch-pruning, which cannot trace the split after its depthwise convolution); the residual width, the
  patch embedding, the time and text embeddings, the adaptive norms and the output projection keep their shapes.
  The stages are the first, middle and last third of the blocks, as the layout tags them (block ``i`` of ``n``
  is in third ``int(3 * (i + 0.5) / n)``).
  ``blocks`` removes that share of whole blocks first, the least important first: the ones whose skipping
  changes the denoiser's output least on calls along the teacher's trajectory (the first and last block stay).

Training-free unless ``recovery_steps`` > 0: then recovery distillation (``autoaccel.distill.recovery``) pulls
the pruned model's predictions towards the model it was cut from, on that model's own trajectory calls and noised
samples (no external data); its minutes are recorded as the trial's training cost. Recovery trains the pruned
model's whole weights or a LoRA adapter on them (``recovery_adapter``: ``full``, ``lora``, or ``auto``: LoRA for a
denoiser above 200M parameters; ``recovery_lora_rank``, ``recovery_lora_modules``), merged into the pruned model
once trained; its artifact then holds the adapter alone, and applying prunes the loaded model again (pruning is
deterministic: the pruned weights' digest is checked) before merging it. torch-pruning traces the
denoiser on one call the sampling loop really makes, so every architecture gets its own keyword arguments.

The pruned model is a copy: the target's denoiser is never touched. Its weights are stored as an artifact
(``autoaccel.util.artifacts``), with the removed blocks named in its metadata: a recipe rebuilds the pruned
structure (only the shapes matter, so no recovery, no measurement and no teacher) and loads them, never training again.
Everything is seeded, so without an artifact (a recipe written without a store) applying the same config to the
same model gives the same weights on the same machine.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from autoaccel.distill.adapters import (
    ADAPTERS,
    LORA_MODULES,
    MAX_RANK,
    adapter_tensors,
    check_stored_kind,
    inject,
    merge_adapter,
    resolved_adapter,
    stored_adapter,
    trained_adapter,
    with_adapter,
)
from autoaccel.distill.data import DATA_SEED_OFFSET
from autoaccel.distill.recovery import (
    DATA_SAMPLES,
    RECOVERY_SEED_OFFSET,
    TRAJECTORY_SAMPLES,
    TRAJECTORY_STEPS,
    RecoverySettings,
    recover,
)
from autoaccel.distill.training import weights_digest
from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.prescribed import prescription
from autoaccel.reference.calibration import (
    CALIBRATION_STEPS,
    clean_sample_work,
    noised_batch,
    replay,
    to_device,
    trajectory_calls,
    trajectory_work,
)
from autoaccel.targets.denoisers import predict
from autoaccel.targets.layouts import STAGES, DenoiserLayout, layout_of
from autoaccel.techniques.base import (
    TRAIN_MINUTES,
    ParamSpec,
    SearchWork,
    Technique,
    guided_rows,
    register,
    require_types,
)
from autoaccel.techniques.quantization import bit_assignment
from autoaccel.util.artifacts import Artifact

IMPORTANCES = ("magnitude", "taylor", "random")
CALIBRATION_SAMPLES = 64  # noised teacher samples the Taylor importance is taken on
BLOCK_CALIBRATION_SAMPLES = 8  # seeds of the trajectory calls whole blocks are judged on
MAX_BLOCKS = 0.5
REMOVED_BLOCKS = "removed_blocks"  # the artifact metadata key, and the attribute a pruned denoiser carries
PRUNED_BASE = "pruned_base"  # the same for the digest of a LoRA-recovered model's pruned weights before recovery


@dataclass(frozen=True)
class PruningConfig:
    """``ratio`` of channels removed overall; ``down``/``mid``/``up`` scale it per stage (1.0 = same ratio);
    ``blocks``: the share of whole transformer blocks removed before that (transformer denoisers only)."""

    ratio: float = 0.0
    down: float = 1.0
    mid: float = 1.0
    up: float = 1.0
    importance: str = "magnitude"
    prune_heads: bool = True
    recovery_steps: int = 0
    seed: int = 0
    blocks: float = 0.0
    recovery_lr: float = 1e-3
    recovery_max_minutes: float | None = None
    recovery_adapter: str = "auto"  # full weights, a LoRA adapter, or auto: LoRA above 200M parameters
    recovery_lora_rank: int = 16
    recovery_lora_modules: str = "attention_mlp"

    def __post_init__(self) -> None:
        number = (int, float)
        types = {"ratio": number, "down": number, "mid": number, "up": number, "importance": str, "blocks": number}
        types["recovery_lr"] = number
        types.update(recovery_adapter=str, recovery_lora_rank=int, recovery_lora_modules=str)
        require_types(self, "pruning", {**types, "prune_heads": bool, "recovery_steps": int, "seed": int})
        if not 0.0 <= self.ratio < 0.9:
            raise ConfigError(f"pruning.ratio={self.ratio} is not valid; it must be in [0, 0.9)")
        for stage in STAGES:
            scale = getattr(self, stage)
            if not 0.0 <= scale * self.ratio < 0.95 or scale < 0:
                raise ConfigError(f"pruning.{stage}={scale} is not valid; need 0 <= {stage} * ratio < 0.95")
        for name, valid in (
            ("importance", IMPORTANCES),
            ("recovery_adapter", ADAPTERS),
            ("recovery_lora_modules", LORA_MODULES),
        ):
            if getattr(self, name) not in valid:
                raise ConfigError(f"pruning.{name}={getattr(self, name)!r} is not valid; valid: {list(valid)}")
        if not PRUNING_PARAMS["recovery_lora_rank"].accepts(self.recovery_lora_rank):
            raise ConfigError(
                f"pruning.recovery_lora_rank={self.recovery_lora_rank} is not valid; it must be "
                + PRUNING_PARAMS["recovery_lora_rank"].describe()
            )
        if isinstance(self.recovery_steps, bool) or not isinstance(self.recovery_steps, int) or self.recovery_steps < 0:
            raise ConfigError(f"pruning.recovery_steps={self.recovery_steps!r} is not valid; it must be an int >= 0")
        if not self.recovery_lr > 0:
            raise ConfigError(f"pruning.recovery_lr={self.recovery_lr} is not valid; it must be > 0")
        cap = self.recovery_max_minutes
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or not cap > 0):
            raise ConfigError(
                f"pruning.recovery_max_minutes={self.recovery_max_minutes!r} is not valid; it must be > 0 or null"
            )
        if not 0.0 <= self.blocks <= MAX_BLOCKS:
            raise ConfigError(f"pruning.blocks={self.blocks} is not valid; it must be in [0, {MAX_BLOCKS}]")

    @property
    def prunes(self) -> bool:
        """Whether anything is removed (ratio and blocks 0 leave the base model)."""
        return self.ratio > 0.0 or self.blocks > 0.0


# What a space may set; ``stage * ratio < 0.95`` is checked by PruningConfig per candidate.
PRUNING_PARAMS = {
    "ratio": ParamSpec("float", low=0.0, high=0.9, high_open=True),
    "down": ParamSpec("float", low=0.0),
    "mid": ParamSpec("float", low=0.0),
    "up": ParamSpec("float", low=0.0),
    "importance": ParamSpec("choice", choices=IMPORTANCES),
    "prune_heads": ParamSpec("bool"),
    "recovery_steps": ParamSpec("int", low=0),
    "seed": ParamSpec("int", low=0, high=2**32 - 1),
    "blocks": ParamSpec("float", low=0.0, high=MAX_BLOCKS),
    "recovery_lr": ParamSpec("float", low=0.0, low_open=True, high=1.0),
    "recovery_max_minutes": ParamSpec("float", low=0.0, low_open=True),
    "recovery_adapter": ParamSpec("choice", choices=ADAPTERS),
    "recovery_lora_rank": ParamSpec("int", low=1, high=MAX_RANK),
    "recovery_lora_modules": ParamSpec("choice", choices=LORA_MODULES),
}


def recovery_adapter(config: PruningConfig, denoiser):
    """The LoRA adapter recovery trains on the pruned ``denoiser``; None for whole weights or no recovery."""
    if not config.recovery_steps or not config.prunes:
        return None
    return resolved_adapter(config.recovery_adapter, config.recovery_lora_rank, config.recovery_lora_modules, denoiser)


# ---------------------------------------------------------------------------------------------- calibration data


def _example_call(target, seed: int, device):
    """One call of the sampling loop (the first step on two seeds, guided where the reference is), on ``device``:
    what torch-pruning traces, with the keyword arguments this denoiser really takes."""
    return to_device(trajectory_calls(target, 2, seed, steps=1)[0], device)


def _teacher_batch(target, count: int, generator: torch.Generator, device=None):
    """Noised teacher samples with the model's own training target: calibration and recovery data without any
    dataset (``autoaccel.reference.calibration.noised_batch``)."""
    return noised_batch(target, count, generator, device)


# ------------------------------------------------------------------------------------------------- whole blocks


def _block_list(denoiser) -> torch.nn.ModuleList:
    return layout_of(denoiser).sequence_blocks(denoiser)


def blocks_to_remove(denoiser, share: float) -> int:
    """How many whole blocks ``share`` removes: rounded, never the first or the last (so none of two)."""
    count = len(_block_list(denoiser))
    return max(0, min(round(share * count), count - 2))


def block_importance(denoiser, calls) -> dict[int, float]:
    """Relative change of the denoiser's output on ``calls`` when block ``i`` is skipped, for every block but
    the first and the last (measured, one replay per block)."""
    layout = layout_of(denoiser)
    blocks = layout.sequence_blocks(denoiser)
    reference = replay(denoiser, calls)
    scale = reference.pow(2).mean().clamp_min(1e-12)
    importance = {}
    try:
        for index in range(1, len(blocks) - 1):
            layout.set_sequence_blocks(
                denoiser, torch.nn.ModuleList([block for at, block in enumerate(blocks) if at != index])
            )
            importance[index] = float((replay(denoiser, calls) - reference).pow(2).mean() / scale)
    finally:
        layout.set_sequence_blocks(denoiser, blocks)
    return importance


def remove_blocks(denoiser, indices: list[int]) -> None:
    """Drops the blocks at ``indices`` (the remaining ones keep their order) and records it in the config."""
    if not indices:
        return
    blocks = _block_list(denoiser)
    if any(not 0 < index < len(blocks) - 1 for index in indices):
        raise ValueError(f"blocks {indices} cannot be removed from {len(blocks)} (the first and last stay)")
    kept = torch.nn.ModuleList([block for index, block in enumerate(blocks) if index not in set(indices)])
    layout_of(denoiser).set_sequence_blocks(denoiser, kept)
    if "num_layers" in denoiser.config:
        denoiser.register_to_config(num_layers=len(kept))


def _least_important_blocks(denoiser, config: PruningConfig, target) -> list[int]:
    count = blocks_to_remove(denoiser, config.blocks)
    if count == 0:
        return []
    calls = trajectory_calls(target, BLOCK_CALIBRATION_SAMPLES, config.seed)
    importance = block_importance(denoiser, calls)
    return sorted(sorted(importance, key=lambda index: (importance[index], index))[:count])


# ------------------------------------------------------------------------------------------------------ channels


def _attentions(denoiser) -> list[torch.nn.Module]:
    return layout_of(denoiser).attentions(denoiser)


def _projections(attention) -> list[torch.nn.Linear]:
    return DenoiserLayout.projections(attention)


def _feed_forward_inputs(denoiser) -> list[torch.nn.Module]:
    """The first projection of every feed-forward (``net.0.proj``): what sets its hidden width."""
    return [module.net[0].proj for module in layout_of(denoiser).feed_forwards(denoiser)]


def _gated_inputs(denoiser) -> dict[torch.nn.Module, int]:
    """Gated feed-forwards (GEGLU, SwiGLU: a first projection twice as wide as the second layer's input, split
    into values and gates) -> 2: a value channel goes with its gate, so the count left never depends on which
    channels the importance picks (an artifact's shapes must be rebuilt without it)."""
    return {
        module.net[0].proj: 2
        for module in layout_of(denoiser).feed_forwards(denoiser)
        if module.net[0].proj.out_features == 2 * module.net[2].in_features
    }


def stage_of_blocks(denoiser) -> dict[str, str]:
    """Block name -> its stage: ``down``/``mid``/``up`` as the layout tags it (UNets by level, transformers by
    thirds of the blocks)."""
    return layout_of(denoiser).stages(denoiser)


def _stage_ratios(denoiser, config: PruningConfig) -> dict[torch.nn.Module, float]:
    return {
        denoiser.get_submodule(name): config.ratio * getattr(config, stage)
        for name, stage in stage_of_blocks(denoiser).items()
    }


def _head_ratios(denoiser, ratios: dict[torch.nn.Module, float], config: PruningConfig) -> dict:
    """Per projection: its stage's ratio, short of the last head (torch-pruning rounds removed heads up)."""
    ratio_of = {}
    for block, ratio in ratios.items():
        for module in block.modules():
            ratio_of[module] = ratio
    head_ratios = {}
    for attention in _attentions(denoiser):
        ratio = ratio_of.get(attention, config.ratio)
        limit = (attention.heads - 1) / attention.heads - 1e-6
        for projection in _projections(attention):
            head_ratios[projection] = max(0.0, min(ratio, limit))
    return head_ratios


def _conv_channel_importance(feed_forward, importance: str, generator: torch.Generator) -> torch.Tensor:
    """One score per hidden channel of a gated convolutional feed-forward: its value and gate rows of the first
    and depthwise convolutions and its column of the last, by weight magnitude or Taylor (weight times gradient,
    as torch-pruning scores the other layers), or random."""
    hidden = feed_forward.conv_point.in_channels
    if importance == "random":
        return torch.rand(hidden, generator=generator)
    score = torch.zeros(hidden)
    first, depth, last = feed_forward.conv_inverted, feed_forward.conv_depth, feed_forward.conv_point
    parameters = [first.weight, first.bias, depth.weight, depth.bias, last.weight]  # not the last one's bias
    for parameter in (parameter for parameter in parameters if parameter is not None):
        if importance == "taylor" and parameter.grad is None:
            continue
        values = parameter.detach() * parameter.grad if importance == "taylor" else parameter.detach()
        if parameter is last.weight:
            rows = values.transpose(0, 1).reshape(hidden, -1)  # the input channels of the last convolution
        else:
            rows = values.reshape(2, hidden, -1).transpose(0, 1).reshape(hidden, -1)  # a value and its gate
        score += rows.float().pow(2).sum(dim=1).cpu()
    return score.sqrt()


def _keep_hidden_channels(feed_forward, kept: torch.Tensor) -> None:
    """Narrows a gated convolutional feed-forward to the hidden channels ``kept`` (each value with its gate)."""
    hidden = feed_forward.conv_point.in_channels
    both = torch.cat([kept, kept + hidden]).to(feed_forward.conv_inverted.weight.device)
    for convolution in (feed_forward.conv_inverted, feed_forward.conv_depth):
        convolution.weight = torch.nn.Parameter(convolution.weight.detach()[both].clone())
        if convolution.bias is not None:
            convolution.bias = torch.nn.Parameter(convolution.bias.detach()[both].clone())
        convolution.out_channels = len(both)
    depth = feed_forward.conv_depth
    depth.in_channels = depth.groups = len(both)  # depthwise: one group per channel
    point = feed_forward.conv_point
    point.weight = torch.nn.Parameter(point.weight.detach()[:, both[: len(kept)]].clone())
    point.in_channels = len(kept)


def _narrow_conv_feed_forwards(denoiser, config: PruningConfig, ratios: dict, generator: torch.Generator) -> None:
    """Removes ``round(ratio * hidden)`` hidden channels of every gated convolutional feed-forward at its block's
    ratio (at least one stays), the least important first: the count depends on the config alone, so an
    artifact's shapes are rebuilt without the importance."""
    ratio_of = {module: ratio for block, ratio in ratios.items() for module in block.modules()}
    for feed_forward in layout_of(denoiser).conv_feed_forwards(denoiser):
        hidden = feed_forward.conv_point.in_channels
        keep = max(1, hidden - round(ratio_of.get(feed_forward, config.ratio) * hidden))
        if keep < hidden:
            scores = _conv_channel_importance(feed_forward, config.importance, generator)
            _keep_hidden_channels(feed_forward, scores.topk(keep).indices.sort().values)


def _output_layer(denoiser, call) -> torch.nn.Module:
    """The last Conv2d or Linear layer a call runs: the one producing the output, whose shape must stay."""
    ran: list[torch.nn.Module] = []
    hooks = [
        module.register_forward_hook(lambda module, args, output: ran.append(module))
        for module in denoiser.modules()
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear)
    ]
    try:
        with torch.no_grad():
            denoiser(*call[0], **call[1])
    finally:
        for hook in hooks:
            hook.remove()
    return ran[-1]


def _ignored(denoiser, call) -> list[torch.nn.Module]:
    """The layers whose output channels stay: the output layer (UNets); every layer but the attention projections
    and the feed-forwards' first layers (transformers: the residual width, and with it the patch embedding, the
    adaptive norms' tables and the output projection, stays)."""
    if not layout_of(denoiser).sequence:
        return [_output_layer(denoiser, call)]
    roots = {projection for attention in _attentions(denoiser) for projection in _projections(attention)}
    roots.update(_feed_forward_inputs(denoiser))
    layers = [module for module in denoiser.modules() if isinstance(module, torch.nn.Conv2d | torch.nn.Linear)]
    return [layer for layer in layers if layer not in roots]


def _prune_channels(pruned, config: PruningConfig, target, call, generator: torch.Generator) -> None:
    import torch_pruning as tp

    importance = {
        "magnitude": tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": tp.importance.GroupTaylorImportance(),
        "random": tp.importance.RandomImportance(),
    }[config.importance]
    attentions = _attentions(pruned)
    heads = {projection: attention.heads for attention in attentions for projection in _projections(attention)}
    ratios = _stage_ratios(pruned, config)
    with torch.enable_grad(), warnings.catch_warnings():
        # bare tables (PixArt's scale_shift_table) would go with the residual width, which transformers keep
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruned.requires_grad_(True)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example_inputs=call,
            forward_fn=lambda model, example: model(*example[0], **example[1]),
            output_transform=lambda output: output.sample if hasattr(output, "sample") else output[0],
            importance=importance,
            pruning_ratio=config.ratio,
            pruning_ratio_dict=ratios,
            ignored_layers=_ignored(pruned, call),
            num_heads=heads,
            out_channel_groups=_gated_inputs(pruned),
            prune_num_heads=config.prune_heads,
            prune_head_dims=not config.prune_heads,
            head_pruning_ratio=config.ratio if config.prune_heads else 0.0,
            head_pruning_ratio_dict=_head_ratios(pruned, ratios, config) if config.prune_heads else None,
        )
        if config.importance == "taylor":
            batch = _teacher_batch(target, CALIBRATION_SAMPLES, generator, pruned.device)
            F.mse_loss(predict(pruned, batch.sample, batch.timestep, batch.keywords), batch.wanted).backward()
        try:
            pruner.step()
        except (RuntimeError, ValueError, AssertionError, IndexError) as error:
            what = f"this {type(pruned).__name__} at ratio {config.ratio}"
            raise TechniqueError(f"torch-pruning could not prune {what}: {error}") from error
        _narrow_conv_feed_forwards(pruned, config, ratios, generator)  # before the Taylor gradients go
    pruned.zero_grad(set_to_none=True)
    for attention in attentions:
        attention.heads = pruner.num_heads.get(attention.to_q, attention.heads)
    _resync_diffusers_attributes(pruned)


def _resync_diffusers_attributes(denoiser) -> None:
    """torch-pruning changes tensors; diffusers modules also cache channel counts their forward reads."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    for module in denoiser.modules():
        if isinstance(module, Upsample2D | Downsample2D) and getattr(module, "conv", None) is not None:
            module.channels = module.conv.in_channels
            module.out_channels = module.conv.out_channels
    for attention in _attentions(denoiser):
        attention.inner_dim = attention.to_q.out_features
        attention.inner_kv_dim = attention.to_k.out_features
        attention.query_dim = attention.to_q.in_features
        if getattr(attention, "to_out", None) is not None:  # a pre-only attention (Flux's single blocks) has none
            attention.out_dim = attention.to_out[0].out_features
        if getattr(attention, "group_norm", None) is not None:
            attention.group_norm.num_channels = attention.to_q.in_features


# ------------------------------------------------------------------------------------------------ the technique


def prune_unet(unet, config: PruningConfig, target=None, removed_blocks: list[int] | None = None):
    """A pruned copy of ``unet`` (any supported denoiser); the original is left as it was.

    ``removed_blocks``: remove exactly these blocks instead of measuring which matter least (a rebuild from an
    artifact). The copy carries the removed blocks' indices as ``removed_blocks``.
    """
    if bit_assignment(unet) is not None:
        raise TechniqueError(
            "pruning must apply before quantization (quantization is calibrated on the pruned model); "
            "this denoiser is already quantized"
        )
    if config.importance == "taylor" and prescription(unet) is not None:
        raise TechniqueError(
            "pruning.importance='taylor' takes its gradient from the base model's denoising loss, which a distilled "
            "student does not predict; use importance magnitude or random after distillation"
        )
    if config.blocks and not layout_of(unet).sequence:
        raise TechniqueError(
            f"pruning.blocks={config.blocks} applies to transformer denoisers; this {type(unet).__name__} takes 0"
        )
    if config.ratio and not config.prune_heads and layout_of(unet).rotary_heads:
        raise TechniqueError(
            f"pruning.prune_heads=false narrows every attention head, and {type(unet).__name__}'s rotary position "
            "embedding fixes its head width; use pruning.prune_heads true (whole heads and feed-forward widths)"
        )
    if not config.prunes:
        return copy.deepcopy(unet)  # in the precision it was loaded in
    if target is None:
        raise TechniqueError("pruning needs the target: it traces the denoiser on a call of its own sampling loop")
    pruned, removed_blocks = _pruned_copy(unet, config, target, removed_blocks)
    if config.recovery_steps:
        adapter = recovery_adapter(config, unet)
        base = weights_digest(pruned) if adapter is not None else None
        if adapter is not None:
            inject(pruned, adapter)
        settings = RecoverySettings(
            config.recovery_steps,
            float(config.recovery_lr),
            seed=config.seed,
            max_minutes=config.recovery_max_minutes,
            adapter=adapter,
        )
        minutes = recover(pruned, unet, target, settings)
        if adapter is not None:
            pruned = merge_adapter(pruned, adapter, "pruning")
            setattr(pruned, PRUNED_BASE, base)
        object.__setattr__(pruned, TRAIN_MINUTES, getattr(unet, TRAIN_MINUTES, 0.0) + minutes)
    pruned = pruned.eval().requires_grad_(False)
    setattr(pruned, REMOVED_BLOCKS, list(removed_blocks))
    return pruned


def _pruned_copy(unet, config: PruningConfig, target, removed_blocks: list[int] | None):
    """A float32 copy of ``unet`` with ``config``'s blocks and channels removed (seeded, no recovery), and the
    blocks removed."""
    pruned = copy.deepcopy(unet).float()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    if removed_blocks is None:
        removed_blocks = _least_important_blocks(pruned, config, target) if config.blocks else []
    remove_blocks(pruned, removed_blocks)
    if config.ratio:
        _prune_channels(pruned, config, target, _example_call(target, config.seed, pruned.device), generator)
    return pruned, removed_blocks


def apply_pruning(pipeline, config: PruningConfig, target) -> None:
    pipeline.denoiser = prune_unet(pipeline.denoiser, config, target)


def pruned_weights(unet, config: PruningConfig):
    """The pruned (and recovered) denoiser's weights, and which blocks went; nothing where nothing was pruned."""
    if not config.prunes:
        return None
    metadata = {"technique": "pruning", "config": repr(config)}
    if config.blocks:
        metadata[REMOVED_BLOCKS] = json.dumps(getattr(unet, REMOVED_BLOCKS, []))
    adapter = trained_adapter(unet, "pruning")
    if adapter is not None:  # the recovery adapter alone: applying prunes the loaded model again
        tensors, described = adapter_tensors(unet, adapter)
        return Artifact(tensors, {**metadata, **described, PRUNED_BASE: getattr(unet, PRUNED_BASE)})
    return Artifact(dict(unet.state_dict()), metadata)


def pruning_from_artifact(pipeline, config: PruningConfig, target, artifact) -> None:
    """The pruned structure (the artifact's removed blocks, magnitude importance, no recovery: which channels go
    does not change how many) with the artifact's weights loaded strictly: a shape or name that differs is an
    error, not a guess."""
    removed = json.loads(artifact.metadata.get(REMOVED_BLOCKS, "[]")) if config.blocks else []
    if config.blocks and REMOVED_BLOCKS not in artifact.metadata:
        raise ValueError(f"it does not say which blocks pruning.blocks={config.blocks} removed")
    stored = stored_adapter(pipeline.denoiser, artifact.tensors, artifact.metadata)
    wanted = recovery_adapter(config, pipeline.denoiser)
    check_stored_kind(config.recovery_adapter, wanted, None if stored is None else stored[0])
    if stored is not None:
        pipeline.denoiser = _recovered_with_adapter(pipeline.denoiser, config, target, removed, artifact, stored)
        return
    settings = replace(config, importance="magnitude", recovery_steps=0)
    structure = prune_unet(pipeline.denoiser, settings, target, removed)
    structure.load_state_dict(artifact.tensors, strict=True)
    pipeline.denoiser = structure.eval().requires_grad_(False)


def _recovered_with_adapter(denoiser, config: PruningConfig, target, removed, artifact, stored):
    """The pruned model rebuilt as the search pruned it (its own importance and seed: which channels went
    matters, since the adapter is on them), checked against the stored digest, with the adapter merged."""
    if PRUNED_BASE not in artifact.metadata:
        raise ValueError("it holds a recovery adapter but not the digest of the pruned weights it was trained on")
    pruned, _ = _pruned_copy(denoiser, config, target, removed)
    if weights_digest(pruned) != artifact.metadata[PRUNED_BASE]:
        raise ValueError(
            "pruning this model again gave other weights than the ones its recovery adapter was trained on "
            "(another model, or another machine's arithmetic); apply it to the model it was searched on"
        )
    recovered = with_adapter(pruned, *stored, "pruning").eval().requires_grad_(False)
    setattr(recovered, REMOVED_BLOCKS, list(removed))
    setattr(recovered, PRUNED_BASE, artifact.metadata[PRUNED_BASE])
    return recovered


def pruning_recompute(config: PruningConfig) -> str | None:
    if not config.prunes:
        return None
    if config.recovery_steps:
        return f"pruning and its recovery distillation ({config.recovery_steps} steps) from the base model"
    return "pruning from the base model"


def pruning_work(config: PruningConfig, target, calls_per_image: float) -> SearchWork:
    """What pruning calibrates and trains, in denoiser rows (``SearchWork``): a replay of the block calibration
    trajectory per block it could remove (``blocks``), and the recovery distillation's steps: a batch through the
    student with a backward pass and through the teacher, on the teacher's trajectories and clean samples."""
    if not config.prunes:
        return SearchWork()
    work = SearchWork()
    if config.blocks and layout_of(target.denoiser).sequence:
        trajectory = BLOCK_CALIBRATION_SAMPLES * CALIBRATION_STEPS * guided_rows(target)
        replays = len(_block_list(target.denoiser)) - 1  # the whole model once, then every block but the ends
        work = trajectory_work(target, BLOCK_CALIBRATION_SAMPLES, config.seed) + SearchWork(
            calibration=replays * trajectory
        )
    if config.recovery_steps:
        batch = RecoverySettings(config.recovery_steps).batch_size
        data = trajectory_work(target, TRAJECTORY_SAMPLES, RECOVERY_SEED_OFFSET + config.seed, TRAJECTORY_STEPS)
        data = data + clean_sample_work(target, DATA_SAMPLES, DATA_SEED_OFFSET + config.seed)
        steps = config.recovery_steps
        work = work + data + SearchWork(trained=steps * batch, teacher=steps * batch)
    return work


def pruning_cost(config: PruningConfig) -> dict:
    """The ratios, whether whole heads go and the share of blocks removed: they fix the shapes left.

    Which channels and blocks go (importance, seed) and the recovery distillation change the weights, not their
    shapes: plans differing only there share one timing. Nothing pruned leaves the model as it is and adds nothing.
    """
    if not config.prunes:
        return {}
    ratios = {name: float(getattr(config, name)) for name in ("ratio", "down", "mid", "up")}
    cost = {**ratios, "prune_heads": config.prune_heads}
    if config.blocks:
        cost["blocks"] = float(config.blocks)
    return cost


PRUNING = register(
    Technique(
        name="pruning",
        order=5,
        config_cls=PruningConfig,
        apply=apply_pruning,
        modifies_model=True,
        unchanged_params={
            "ratio": 0.0,
            "down": 1.0,
            "mid": 1.0,
            "up": 1.0,
            "importance": "magnitude",
            "recovery_steps": 0,
            "blocks": 0.0,
        },
        params=PRUNING_PARAMS,
        cost_key=pruning_cost,
        artifact_state=pruned_weights,
        from_artifact=pruning_from_artifact,
        recompute=pruning_recompute,
        float32_copy=True,  # trained or calibrated on a float32 copy
        version=2,
        max_minutes_param="recovery_max_minutes",
        search_work=pruning_work,
    )
)
