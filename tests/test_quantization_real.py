"""Quantization on real kernels (``quantization.backend: torchao``): the model holds torchao's quantized tensors and
runs their kernels on this CPU, its size is what those tensors hold, nothing is labelled simulated, its recipe
rebuilds it through torchao bit for bit, a setting torchao has no kernel for stays simulated and says so, and a
model torchao cannot quantize is a failed trial with torchao's reason."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torchao.quantization import Int8Tensor

from autoaccel.config import compose_config
from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.measure.kernels import kernel_choice
from autoaccel.measure.size import model_bytes
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.base import simulations
from autoaccel.techniques.quantization import QUANTIZATION, QuantizationConfig, apply_quantization


@pytest.fixture(scope="module")
def digits_target():
    from autoaccel.targets.digits.model import load_digits_target

    return load_digits_target()


@pytest.fixture
def tiny_target(tiny_pipeline_dir):
    return load_pipeline_folder(tiny_pipeline_dir)


def _quantized(target, **settings):
    pipeline = sampler_pipeline(target)
    apply_quantization(pipeline, QuantizationConfig(**settings), target)
    return pipeline.denoiser


def _linear_weights(model):
    return [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]


@pytest.mark.parametrize("activation_bits", [None, 8])
def test_the_digits_denoiser_runs_torchao_int8_kernels_and_is_smaller(digits_target, activation_bits):
    quantized = _quantized(digits_target, backend="torchao", activation_bits=activation_bits)
    weights = _linear_weights(quantized)
    assert weights and all(isinstance(weight, Int8Tensor) for weight in weights)
    assert all(weight.qdata.dtype == torch.int8 for weight in weights)
    assert not any(isinstance(weight, Int8Tensor) for weight in _linear_weights(digits_target.denoiser))
    float_bytes = model_bytes(digits_target.denoiser)
    assert model_bytes(quantized) < float_bytes
    linear_float = sum(weight.numel() * 4 for weight in _linear_weights(digits_target.denoiser))
    # int8 data and one float scale per row in place of float32 weights: about three quarters of them saved
    assert float_bytes - model_bytes(quantized) > 0.7 * linear_float
    assert simulations(quantized) == {}
    choice = kernel_choice(quantized)
    assert choice.quantized_latency == "measured" and "torchao" in choice.label
    assert not QUANTIZATION.simulated_by(QuantizationConfig(backend="torchao", activation_bits=activation_bits))
    noise = torch.randn(4, *digits_target.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        real = quantized(noise, torch.full((4,), 500), class_labels=torch.arange(4)).sample
        reference = digits_target.denoiser(noise, torch.full((4,), 500), class_labels=torch.arange(4)).sample
    assert not torch.equal(real, reference)  # the int8 kernels ran: not the float model's output
    assert float((real - reference).pow(2).mean() / reference.pow(2).mean()) < 1e-3


@pytest.mark.parametrize(
    "settings",
    [{"weight_bits": 4}, {"activation_bits": 16}, {"low_bits": 4, "low_fraction": 0.5}, {"time_bits": 6}],
)
def test_a_setting_torchao_has_no_kernel_for_stays_simulated_and_says_so(tiny_target, settings):
    config = QuantizationConfig(backend="torchao", calibration_samples=4, **settings)
    assert config.simulated and QUANTIZATION.simulated_by(config)
    quantized = _quantized(tiny_target, backend="torchao", calibration_samples=4, **settings)
    assert "quantization" in simulations(quantized)
    assert not any(isinstance(weight, Int8Tensor) for weight in _linear_weights(quantized))
    assert "backend" not in QUANTIZATION.cost_settings(config)  # timed as the simulated plan it is


def test_the_backend_is_checked():
    with pytest.raises(ConfigError, match=r"quantization.backend='tensorrt' is not valid; valid: simulated, torchao"):
        QuantizationConfig(backend="tensorrt")


def test_a_model_torchao_cannot_quantize_fails_with_its_reason(tiny_target):
    """A TechniqueError: the evaluator records it as the trial's failure, and the search goes on."""
    tiny_target.denoiser = tiny_target.denoiser.double()
    with pytest.raises(TechniqueError, match=r"torchao .* could not quantize .*float64.*Unsupported input dtype"):
        _quantized(tiny_target, backend="torchao")


REAL_SPACE = """
techniques: [quantization, solver, timesteps]
fixed: {timesteps.family: uniform_trailing, solver.name: dpmsolver++, solver.order: 2, solver.final_sigma: zero,
        quantization.backend: torchao, quantization.calibration_samples: 4}
dimensions:
  quantization.weight_bits: {type: categorical, choices: [4, 8]}
  quantization.activation_bits: {type: categorical, choices: [null, 8]}
  timesteps.steps: {type: int, low: 3, high: 5}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_records_real_kernel_trials_and_their_recipes_rebuild_them_through_torchao(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    from autoaccel.cli.search_command import search

    space_file = tmp_path / "real.yaml"
    space_file.write_text(REAL_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=6", "seed=1", "study_name=real"]
    index = search(compose_config([*overrides, "objectives=[fid,latency_ms,model_bytes]"]), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    real = complete[complete["param.quantization.weight_bits"] == 8]
    simulated = complete[complete["param.quantization.weight_bits"] == 4]
    assert not real.empty and not simulated.empty
    assert real["simulated"].isna().all() and (real["quantized_latency"] == "measured").all()
    assert real["kernels"].str.contains("torchao").all()
    assert simulated["simulated"].str.contains("quantization").all()
    assert (simulated["quantized_latency"] == "not measured").all()


def test_a_real_kernel_recipe_rebuilds_the_model_through_torchao_bit_for_bit(tiny_target, tmp_path):
    from autoaccel.plan.recipe import apply_recipe, build_recipe, load_recipe, save_recipe
    from autoaccel.testing.technique_contract import configured, images

    params = {"quantization.backend": "torchao", "quantization.activation_bits": 8, "solver.name": "ddim"}
    pipeline, _ = configured(tiny_target, params, tmp_path / "cache")
    measured = images(pipeline, tiny_target)
    recipe = build_recipe(tiny_target, pipeline.plan.techniques, pipeline, {}, {}, {"seed": 0}, {})
    section = load_recipe(save_recipe(recipe, tmp_path / "recipe.yaml"))["techniques"]["quantization"]
    assert "simulated" not in section and "quantization" not in recipe["simulated"]
    assert "reapplied" not in section  # nothing is calibrated: torchao rebuilds it from the base weights
    kernels = section["kernels"]
    assert kernels["library"].startswith("torchao ") and "quantize_(denoiser" in kernels["call"]
    assert set(kernels["modules"].values()) == {"Int8DynamicActivationInt8WeightConfig", "Int8WeightOnlyConfig"}
    applied = apply_recipe(tiny_target, tmp_path / "recipe.yaml")
    assert all(isinstance(weight, Int8Tensor) for weight in _linear_weights(applied.denoiser))
    assert torch.equal(measured, images(applied, tiny_target))  # bit for bit on the same machine
