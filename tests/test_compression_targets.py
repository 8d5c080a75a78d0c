"""Pruning and quantization on every supported denoiser (a text-conditioned UNet, DiT, PixArt-alpha, SD3) and both
schedule families, through the target seam alone: channels and heads really go, whole blocks go where they matter
least, the results sample through the pipeline, and artifacts rebuild the same models."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from autoaccel.distill import recovery
from autoaccel.errors import TechniqueError
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.reference.calibration import replay, trajectory_calls
from autoaccel.targets.base import hash_weights
from autoaccel.targets.layouts import layout_of
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques import pruning
from autoaccel.techniques.pruning import (
    PruningConfig,
    _attentions,
    _feed_forward_inputs,
    _projections,
    block_importance,
    prune_unet,
    pruned_weights,
    pruning_from_artifact,
)
from autoaccel.techniques.quantization import (
    TIME_GROUP,
    QuantizationConfig,
    quantization_from_artifact,
    quantize_unet,
    quantized_weights,
)
from autoaccel.testing.pipelines import IMAGE_SIZE, SANA_IMAGE_SIZE, build_tiny_pipeline
from autoaccel.util.artifacts import ArtifactStore, read_artifact

KINDS = ("sd", "dit", "pixart_alpha", "sd3", "sana")
TRANSFORMERS = ("dit", "pixart_alpha", "sd3", "sana")
DEEP_LAYERS = 4  # the tiny transformers have 2 blocks, the first and last of which never go


@pytest.fixture(autouse=True)
def small_calibration(monkeypatch):
    """Fewer seeds for the block measurement and the Taylor and recovery batches: the tiny models need no more."""
    monkeypatch.setattr(pruning, "BLOCK_CALIBRATION_SAMPLES", 2)
    monkeypatch.setattr(pruning, "CALIBRATION_SAMPLES", 8)
    monkeypatch.setattr(recovery, "TRAJECTORY_SAMPLES", 2)
    monkeypatch.setattr(recovery, "DATA_SAMPLES", 8)


def _deepen(kind: str, folder, destination):
    """The tiny ``kind`` pipeline with a transformer of DEEP_LAYERS blocks (seeded random weights)."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(folder)
    torch.manual_seed(1)
    config = {key: value for key, value in pipeline.transformer.config.items() if not key.startswith("_")}
    pipeline.register_modules(transformer=type(pipeline.transformer)(**{**config, "num_layers": DEEP_LAYERS}).eval())
    pipeline.save_pretrained(destination)
    return destination


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """kind -> Target for every kind, and ``<kind>-deep`` for the transformers with DEEP_LAYERS blocks."""
    root = tmp_path_factory.mktemp("compression_targets")
    loaded = {}
    for kind in KINDS:
        folder = build_tiny_pipeline(kind, root / kind)
        loaded[kind] = load_pipeline_folder(folder)
        if kind in TRANSFORMERS:
            loaded[f"{kind}-deep"] = load_pipeline_folder(_deepen(kind, folder, root / f"{kind}-deep"))
    return loaded


def _parameters(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _images(target, denoiser, steps: int = 2) -> torch.Tensor:
    """A whole sampling call of the target's pipeline around ``denoiser`` (guided where the model is)."""
    pipeline = sampler_pipeline(target)
    pipeline.denoiser = denoiser
    pipeline.plan.native_steps = steps
    pipeline.plan.guidance_scale = target.reference_call.guidance_scale
    seeds = make_seed_batch(target.sample_shape, 3, 7, target.condition_count)
    return pipeline(seeds.noise, seeds.class_labels).images


def _head_dims(denoiser) -> dict[str, int]:
    names = {module: name for name, module in denoiser.named_modules()}
    return {names[attention]: attention.to_q.out_features // attention.heads for attention in _attentions(denoiser)}


@pytest.mark.parametrize("kind", KINDS)
def test_pruning_removes_whole_heads_and_the_pruned_denoiser_samples(targets, kind):
    target = targets[kind]
    before = hash_weights(target.denoiser)
    pruned = prune_unet(target.denoiser, PruningConfig(ratio=0.3), target)
    assert _parameters(pruned) < _parameters(target.denoiser)
    head_dims = _head_dims(target.denoiser)
    heads = {name: module.heads for name, module in target.denoiser.named_modules() if name in head_dims}
    for name, attention in pruned.named_modules():
        if name in head_dims:
            assert attention.to_q.out_features == attention.heads * head_dims[name]  # whole heads, same width
            assert attention.to_out[0].in_features == attention.to_v.out_features
            assert 1 <= attention.heads < heads[name]
    images = _images(target, pruned)
    side = SANA_IMAGE_SIZE if target.pipeline_class == "SanaPipeline" else IMAGE_SIZE
    assert images.shape == (3, 3, side, side) and torch.isfinite(images).all()
    assert hash_weights(target.denoiser) == before


def _with_dead_heads_and_channels(target):
    """A copy of the target whose every attention's first head and every feed-forward's first half of hidden
    channels contribute nothing: pruning that removes exactly them leaves the outputs as they were."""
    denoiser = copy.deepcopy(target.denoiser)
    with torch.no_grad():
        for attention in _attentions(denoiser):
            width = attention.to_q.out_features // attention.heads
            for projection in _projections(attention):
                projection.weight[:width] = 0
                if projection.bias is not None:  # Sana's self-attention has none
                    projection.bias[:width] = 0
            for output in (attention.to_out[0], getattr(attention, "to_add_out", None)):
                if output is not None:
                    output.weight[:, :width] = 0
        for layer in _feed_forward_inputs(denoiser):
            layer.weight[: layer.out_features // 2] = 0
            layer.bias[: layer.out_features // 2] = 0
        for feed_forward in _conv_feed_forwards(denoiser):  # values, their gates and what reads them
            hidden = feed_forward.conv_point.in_channels
            for convolution in (feed_forward.conv_inverted, feed_forward.conv_depth):
                for start in (0, hidden):
                    convolution.weight[start : start + hidden // 2] = 0
                    convolution.bias[start : start + hidden // 2] = 0
            feed_forward.conv_point.weight[:, : hidden // 2] = 0
    return replace(target, denoiser=denoiser, content_hash=f"dead-{target.content_hash}")


def _conv_feed_forwards(denoiser) -> list[torch.nn.Module]:
    return layout_of(denoiser).conv_feed_forwards(denoiser)


@pytest.mark.parametrize("kind", TRANSFORMERS)
def test_transformer_pruning_removes_heads_across_all_projections_and_keeps_the_residual_width(targets, kind):
    target = _with_dead_heads_and_channels(targets[kind])
    calls = trajectory_calls(target, 2, 0, steps=3)
    pruned = prune_unet(target.denoiser, PruningConfig(ratio=0.3), target)
    assert _parameters(pruned) < _parameters(target.denoiser)
    assert all(attention.heads == 1 for attention in _attentions(pruned))
    widths = zip(_feed_forward_inputs(pruned), _feed_forward_inputs(target.denoiser))
    assert all(layer.out_features < full.out_features for layer, full in widths)
    for narrow, full in zip(_conv_feed_forwards(pruned), _conv_feed_forwards(target.denoiser), strict=True):
        hidden = full.conv_point.in_channels  # 0.3 of the hidden channels went, each value with its gate
        assert narrow.conv_point.in_channels == hidden - round(0.3 * hidden)
        assert narrow.conv_inverted.out_channels == narrow.conv_depth.groups == 2 * narrow.conv_point.in_channels
    torch.testing.assert_close(replay(pruned, calls), replay(target.denoiser, calls), atol=1e-5, rtol=1e-5)


def _make_identity(block) -> None:
    """Zeroes what ``block`` adds to its residual streams, so that skipping it changes nothing."""
    with torch.no_grad():
        for name, module in block.named_modules():
            if name.endswith(("to_out.0", "to_add_out", "net.2", "ff.conv_point")):
                module.weight.zero_()
                if module.bias is not None:  # Sana's conv_point has none
                    module.bias.zero_()


@pytest.mark.slow
@pytest.mark.parametrize("kind", TRANSFORMERS)
def test_blocks_go_whole_least_important_first(targets, kind):
    base = targets[f"{kind}-deep"]
    denoiser = copy.deepcopy(base.denoiser)
    _make_identity(denoiser.transformer_blocks[2])
    target = replace(base, denoiser=denoiser, content_hash=f"identity-block-{base.content_hash}")
    calls = trajectory_calls(target, 2, 0, steps=3)
    importance = block_importance(copy.deepcopy(denoiser), calls)
    assert sorted(importance) == [1, 2] and importance[2] < 1e-10 < importance[1]

    pruned = prune_unet(denoiser, PruningConfig(blocks=0.25), target)
    assert len(pruned.transformer_blocks) == DEEP_LAYERS - 1 and pruned.config.num_layers == DEEP_LAYERS - 1
    assert pruned.removed_blocks == [2]
    block_size = _parameters(denoiser.transformer_blocks[1])
    assert _parameters(pruned) == _parameters(denoiser) - block_size
    torch.testing.assert_close(replay(pruned, calls), replay(denoiser, calls), atol=1e-5, rtol=1e-5)

    both = prune_unet(denoiser, PruningConfig(ratio=0.3, blocks=0.25), target)
    assert _parameters(both) < _parameters(pruned)
    images = _images(target, both)
    side = SANA_IMAGE_SIZE if target.pipeline_class == "SanaPipeline" else IMAGE_SIZE
    assert images.shape == (3, 3, side, side) and torch.isfinite(images).all()


def test_removing_blocks_is_for_transformers(targets):
    with pytest.raises(TechniqueError, match="applies to transformer denoisers") as raised:
        prune_unet(targets["sd"].denoiser, PruningConfig(blocks=0.25), targets["sd"])
    assert "\n" not in str(raised.value)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["pixart_alpha", "sd3", "sana"])
def test_taylor_importance_and_recovery_follow_the_models_own_training_target(targets, kind):
    """PixArt: DDPM-family with a learned variance and fixed call arguments; SD3: flow matching; Sana: flow
    matching, its convolutional feed-forwards scored by their own gradients."""
    target = targets[kind]
    calls = trajectory_calls(target, 2, 0, steps=3)
    wanted = replay(target.denoiser, calls)
    errors = {}
    for steps in (0, 10):
        config = PruningConfig(ratio=0.5, importance="taylor", recovery_steps=steps)
        errors[steps] = float((replay(prune_unet(target.denoiser, config, target), calls) - wanted).pow(2).mean())
    assert errors[10] < 0.8 * errors[0]


@pytest.mark.parametrize("kind", KINDS)
def test_quantization_groups_follow_the_blocks_and_images_stay_close(targets, kind):
    target = targets[kind]
    config = QuantizationConfig(weight_bits=4, activation_bits=8, calibration_samples=4)
    quantized = quantize_unet(target.denoiser, config, target)
    plan = quantized.autoaccel_quantization
    groups = set(plan.group_bits) - {TIME_GROUP}
    if kind in TRANSFORMERS:
        assert set(layout_of(target.denoiser).block_names(target.denoiser)) <= groups
        assert not any(group.startswith("transformer_blocks.") and group.count(".") > 1 for group in groups)
        assert any(".emb." in name or name.startswith(("time_text_embed", "adaln_single")) for name in plan.layer_bits)
    else:
        assert {"down_blocks.0.attentions", "down_blocks.0.resnets", "mid_block.attentions"} <= groups
    assert plan.group_bits[TIME_GROUP] == 8 and {plan.group_bits[group] for group in groups} == {4}
    time_layers = [name for name, bits in plan.layer_bits.items() if name not in plan.activation_ranges]
    assert time_layers and plan.activation_ranges
    reference, images = _images(target, target.denoiser), _images(target, quantized)
    error = float((images - reference).pow(2).mean())
    between_seeds = float((reference.roll(1, 0) - reference).pow(2).mean())
    # the same images, a little off, not other images (8-bit activations cost most: the random models' latents
    # reach hundreds along their trajectories, and the first layer's grid spans them all)
    assert 0 < error < 0.25 * between_seeds


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_artifacts_rebuild_the_same_pruned_and_quantized_models(targets, kind, tmp_path, monkeypatch):
    target = targets[f"{kind}-deep" if kind in TRANSFORMERS else kind]
    # random importance: the rebuild (magnitude) must get the same shapes whichever channels went
    prune_config = PruningConfig(ratio=0.3, blocks=0.25 if kind in TRANSFORMERS else 0.0, importance="random")
    pruned = prune_unet(target.denoiser, prune_config, target)
    quantize_config = QuantizationConfig(weight_bits=4, activation_bits=8, calibration_samples=4)
    quantized = quantize_unet(pruned, quantize_config, target)
    store = ArtifactStore(tmp_path)
    pruned_sha, quantized_sha = (
        store.put(pruned_weights(pruned, prune_config)),
        store.put(quantized_weights(quantized, quantize_config)),
    )

    def measured(*args):
        raise AssertionError("a rebuild from an artifact measures nothing")

    monkeypatch.setattr(pruning, "block_importance", measured)
    pipeline = sampler_pipeline(target)
    pruning_from_artifact(pipeline, prune_config, target, read_artifact(store.path_of(pruned_sha), pruned_sha))
    calls = trajectory_calls(target, 2, 0, steps=3)
    assert torch.equal(replay(pipeline.denoiser, calls), replay(pruned, calls))
    quantization_from_artifact(
        pipeline, quantize_config, target, read_artifact(store.path_of(quantized_sha), quantized_sha)
    )
    assert torch.equal(replay(pipeline.denoiser, calls), replay(quantized, calls))
    assert pipeline.denoiser.autoaccel_quantization.group_bits == quantized.autoaccel_quantization.group_bits
