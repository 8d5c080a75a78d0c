"""Quantization: weights really sit on their N-bit grid, sizes are the plan's real bytes, the sensitivity
pass decides which groups go low, activations are calibrated on the teacher's trajectory, float-kernel timing
is labelled, and a joint search records and reproduces everything."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from autoaccel.config import compose_config
from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.measure.size import model_bytes
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.reference.calibration import replay
from autoaccel.targets.base import hash_weights
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.quantization import (
    TIME_GROUP,
    QuantizationConfig,
    fake_quantize_weight,
    layer_groups,
    quantize_unet,
    trajectory_inputs,
)


@pytest.fixture
def tiny_target(tiny_pipeline_dir):
    return load_pipeline_folder(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def digits_target():
    from autoaccel.targets.digits.model import load_digits_target

    return load_digits_target()


def _error(unet, reference, inputs) -> float:
    output = replay(unet, inputs)
    return float((output - reference).pow(2).mean() / reference.pow(2).mean())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weights_land_on_a_symmetric_grid_per_output_channel(bits):
    weight = torch.randn(6, 5, 3, 3)
    quantized = fake_quantize_weight(weight, bits)
    levels = 2 ** (bits - 1) - 1
    for row, original in zip(quantized.flatten(1), weight.flatten(1)):
        scale = original.abs().max() / levels
        steps = row / scale
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert steps.abs().max() <= levels + 1e-4
    assert (quantized - weight).abs().max() <= weight.abs().max() / levels


def test_error_grows_as_bits_shrink_and_the_original_is_untouched(tiny_target):
    before = hash_weights(tiny_target.denoiser)
    inputs = trajectory_inputs(tiny_target, 8, 0)
    reference = replay(tiny_target.denoiser, inputs)
    errors = [
        _error(quantize_unet(tiny_target.denoiser, QuantizationConfig(bits), tiny_target), reference, inputs)
        for bits in (8, 4, 2)
    ]
    assert 0 < errors[0] < errors[1] < errors[2]
    assert hash_weights(tiny_target.denoiser) == before


def test_calibration_inputs_cover_the_whole_schedule(tiny_target):
    calls = trajectory_inputs(tiny_target, 8, 0)
    timesteps = torch.cat([kwargs["timestep"] for _, kwargs in calls]).unique()
    assert len(timesteps) >= 10
    assert (
        timesteps.max() >= 0.9 * tiny_target.num_train_timesteps
        and timesteps.min() <= 0.1 * tiny_target.num_train_timesteps
    )


def test_model_bytes_are_the_plans_bits_plus_scales(tiny_target):
    unet = tiny_target.denoiser
    assert model_bytes(unet) == sum(parameter.numel() * 4 for parameter in unet.parameters())
    quantized = quantize_unet(unet, QuantizationConfig(weight_bits=4, time_bits=8), tiny_target)
    modules = dict(quantized.named_modules())
    expected = 0
    quantized_weights = set()
    for group, names in layer_groups(quantized).items():
        for name in names:
            weight = modules[name].weight
            bits = 8 if group == TIME_GROUP else 4
            expected += -(-weight.numel() * bits // 8) + weight.shape[0] * 2
            quantized_weights.add(f"{name}.weight")
    expected += sum(p.numel() * 4 for name, p in quantized.named_parameters() if name not in quantized_weights)
    assert model_bytes(quantized) == expected
    assert model_bytes(quantized) < model_bytes(unet) / 3


@pytest.mark.slow
def test_the_sensitivity_pass_sends_the_least_sensitive_groups_low(digits_target):
    config = QuantizationConfig(weight_bits=8, low_bits=2, low_fraction=0.5, calibration_samples=16)
    plan = quantize_unet(digits_target.denoiser, config, digits_target).autoaccel_quantization
    low = [group for group, bits in plan.group_bits.items() if bits == 2]
    high = [group for group, bits in plan.group_bits.items() if bits == 8 and group != TIME_GROUP]
    assert low and high and plan.group_bits[TIME_GROUP] == 8
    assert max(plan.sensitivity[group] for group in low) < max(plan.sensitivity[group] for group in high)
    # the measured order matters: sending the same share of the most sensitive groups low is worse
    inputs = trajectory_inputs(digits_target, 16, 0)
    reference = replay(digits_target.denoiser, inputs)
    chosen = quantize_unet(digits_target.denoiser, config, digits_target)
    reversed_plan = quantize_unet(
        digits_target.denoiser, QuantizationConfig(weight_bits=8, calibration_samples=16), digits_target
    )
    modules = dict(reversed_plan.named_modules())
    worst_first = sorted(plan.sensitivity, key=plan.sensitivity.get, reverse=True)[: len(low)]
    for group in worst_first:
        for name in layer_groups(reversed_plan)[group]:
            modules[name].weight.data = fake_quantize_weight(modules[name].weight.data, 2)
    assert _error(chosen, reference, inputs) < _error(reversed_plan, reference, inputs)


@pytest.mark.slow
def test_low_fraction_extremes(tiny_target):
    none_low = quantize_unet(tiny_target.denoiser, QuantizationConfig(6, low_bits=3, low_fraction=0.0), tiny_target)
    assert set(none_low.autoaccel_quantization.group_bits.values()) <= {6, 8}
    all_low = quantize_unet(tiny_target.denoiser, QuantizationConfig(6, low_bits=3, low_fraction=1.0), tiny_target)
    bits = all_low.autoaccel_quantization.group_bits
    assert {bits[group] for group in bits if group != TIME_GROUP} == {3} and bits[TIME_GROUP] == 8


def test_activation_quantization_is_calibrated_and_switched_off_for_float_timing(tiny_target):
    from autoaccel.measure.kernels import NOT_MEASURED, deployment_kernels

    inputs = trajectory_inputs(tiny_target, 8, 0)
    weights_only = quantize_unet(tiny_target.denoiser, QuantizationConfig(8), tiny_target)
    with_activations = quantize_unet(tiny_target.denoiser, QuantizationConfig(8, activation_bits=8), tiny_target)
    plan = with_activations.autoaccel_quantization
    assert plan.activation_ranges and all(low <= high for low, high in plan.activation_ranges.values())
    assert not any(name.startswith("time_embedding") for name in plan.activation_ranges)
    assert not torch.equal(replay(weights_only, inputs), replay(with_activations, inputs))
    pipeline = sampler_pipeline(tiny_target)
    pipeline.unet = with_activations
    with deployment_kernels(pipeline) as kernels:
        assert kernels.quantized_latency == NOT_MEASURED and kernels.label.startswith("float")
        assert torch.equal(replay(pipeline.unet, inputs), replay(weights_only, inputs))
    assert not torch.equal(replay(pipeline.unet, inputs), replay(weights_only, inputs))


def test_pruning_refuses_an_already_quantized_model(tiny_target):
    from autoaccel.techniques.pruning import PruningConfig, prune_unet

    quantized = quantize_unet(tiny_target.denoiser, QuantizationConfig(8), tiny_target)
    with pytest.raises(TechniqueError, match="before quantization"):
        prune_unet(quantized, PruningConfig(ratio=0.3), tiny_target)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weight_bits": 1}, "quantization.weight_bits=1"),
        ({"weight_bits": 16}, "quantization.weight_bits=16"),
        ({"low_bits": True}, "quantization.low_bits"),
        ({"low_fraction": 1.5}, "quantization.low_fraction"),
        ({"activation_bits": 4}, "quantization.activation_bits=4"),
        ({"calibration_samples": 2}, "quantization.calibration_samples"),
    ],
)
def test_bad_quantization_configs_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        QuantizationConfig(**changes)


@pytest.mark.parametrize(
    ("name", "order"),
    [
        ("compressed", ["pruning", "quantization", "solver", "timesteps", "runtime"]),
        (
            "joint",
            ["distillation", "pruning", "quantization", "assignment", "caching", "solver", "timesteps", "runtime"],
        ),
    ],
)
def test_bundled_spaces_apply_distillation_then_pruning_then_quantization_then_caching(name, order):
    """A student is compressed, not a compressed model distilled; the teacher's steps go to the compressed one,
    the cache is built on the model all of them leave, and the runtime runs what they made."""
    from autoaccel.plan.candidate import Candidate
    from autoaccel.space.spaces import active_params, load_space

    space = load_space(name)
    assert set(space.techniques) == set(order)
    defaults = {
        dimension.name: (dimension.choices[0] if dimension.choices else dimension.low) for dimension in space.dimensions
    }
    plan = Candidate.from_params(space.complete(active_params(space, defaults))).plan(space.techniques)
    assert [technique.name for technique, _ in plan] == order


SMALL_JOINT_SPACE = """
techniques: [pruning, quantization, solver, timesteps]
fixed: {timesteps.family: uniform_trailing, solver.name: dpmsolver++, solver.order: 2, solver.final_sigma: zero,
        quantization.calibration_samples: 8}
dimensions:
  pruning.ratio: {type: float, low: 0.0, high: 0.5}
  quantization.weight_bits: {type: int, low: 3, high: 8}
  quantization.low_bits: {type: int, low: 2, high: 4}
  quantization.low_fraction: {type: float, low: 0.0, high: 1.0}
  quantization.activation_bits: {type: categorical, choices: [null, 8]}
  timesteps.steps: {type: int, low: 3, high: 5}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_joint_search_records_sizes_labels_simulation_and_recipes_reproduce(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run

    space_file = tmp_path / "joint.yaml"
    space_file.write_text(SMALL_JOINT_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=8", "seed=2", "study_name=joint"]
    index = search(compose_config([*overrides, "objectives=[fid,latency_ms,model_bytes]"]), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) >= 6
    assert {"params", "model_bytes", "simulated", "kernels", "quantized_latency"} <= set(complete.columns)
    assert (complete["model_bytes"] < complete["params"] * 4 / 3).all()  # every plan quantizes to <= 8 bits
    assert (complete["quantized_latency"] == "not measured").all()
    assert complete["simulated"].str.contains("quantization").all()
    pruned = complete[complete["param.pruning.ratio"] > 0.2]
    unpruned = complete[complete["param.pruning.ratio"] < 0.05]
    if not pruned.empty and not unpruned.empty:
        assert pruned["params"].max() < unpruned["params"].min()
    context = open_run(index.parent)
    front = pd.read_csv(index.parent / "pareto.csv")
    assert not front.empty
    for _, row in front.iterrows():
        recipe_path = index.parent / row["recipe"]
        recipe = yaml.safe_load(recipe_path.read_text())
        assert recipe["simulated"] == ["quantization"] and recipe["techniques"]["quantization"]["simulated"] is True
        assert recipe["measured_on"]["quantized_latency"] == "not measured"
        fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), recipe_path)
        assert model_bytes(fast.unet) == row["model_bytes"]
        images = sample_in_chunks(fast, context.judge.seeds.head(8), context.judge.chunk_size)
        again = sample_in_chunks(apply_recipe(context.target, recipe_path), context.judge.seeds.head(8), 48)
        assert torch.equal(images, again)
    html = (index.parent / "index.html").read_text()
    assert "simulated" in html and "not measured" in html
