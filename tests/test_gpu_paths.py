"""The measurement paths that only a CUDA device takes (CUDA-event latency, NVML energy, torchao kernels), marked
``gpu`` and skipped with a reason elsewhere (``python -m pytest -m gpu tests/test_gpu_paths.py``), and the CPU
fallbacks of the same paths, which run everywhere."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from autoaccel.measure.energy import EnergyMeter
from autoaccel.measure.kernels import FLOAT, NOT_MEASURED, deployment_kernels, kernel_choice, kernel_key
from autoaccel.measure.latency import measure_cost
from autoaccel.pipeline.sampling import SamplerPipeline, sampler_pipeline
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.targets.base import Target
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.quantization import QuantizationConfig, quantize_unet
from autoaccel.techniques.timesteps import TimestepsConfig, build_timesteps

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BATCH = 4


def _pipeline(target: Target, steps: int = 4) -> SamplerPipeline:
    pipeline = sampler_pipeline(target)
    pipeline.plan.timesteps = build_timesteps(TimestepsConfig(steps=steps), pipeline.scheduler.alphas_cumprod)
    return pipeline


def _seeds(target: Target):
    return make_seed_batch(target.sample_shape, BATCH, 0, target.num_classes)


def _quantized_pipeline(target: Target) -> SamplerPipeline:
    """A pipeline whose unet carries an 8-bit weight and activation plan (Linear layers get int8 kernels)."""
    pipeline = _pipeline(target)
    config = QuantizationConfig(weight_bits=8, activation_bits=8, calibration_samples=4)
    pipeline.unet = quantize_unet(target.denoiser, config, target)
    return pipeline


@pytest.fixture(scope="module")
def cpu_target(tiny_pipeline_dir) -> Target:
    return load_pipeline_folder(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def cuda_target(tiny_pipeline_dir) -> Target:
    return load_pipeline_folder(tiny_pipeline_dir, device="cuda")


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@NEEDS_CUDA
def test_cuda_latency_is_timed_with_events_and_allocator_memory(cuda_target, monkeypatch):
    recorded = []
    real_event = torch.cuda.Event

    def counted_event(*args, **kwargs):
        recorded.append(kwargs)
        return real_event(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "Event", counted_event)
    cost = measure_cost(_pipeline(cuda_target), _seeds(cuda_target), warmup=1, repeats=3)
    assert cost.device.startswith("cuda") and cost.memory_kind == "cuda-allocated"
    assert len(recorded) >= 2 * (1 + 3) and all(options.get("enable_timing") for options in recorded)
    assert math.isfinite(cost.latency_ms) and cost.latency_ms > 0
    assert cost.peak_memory_mb > 0 and cost.repeats == 3 and cost.batch_size == BATCH


@pytest.mark.gpu
@NEEDS_CUDA
def test_nvml_energy_counts_the_joules_of_a_timed_region():
    pytest.importorskip("pynvml", reason="NVML energy needs nvidia-ml-py")
    work = torch.randn(2048, 2048, device="cuda")
    with EnergyMeter("cuda:0") as meter:
        for _ in range(50):
            work = torch.tanh(work @ work)
        torch.cuda.synchronize()
    assert math.isfinite(meter.joules) and meter.joules >= 0


@pytest.mark.gpu
@NEEDS_CUDA
def test_cuda_cost_measurement_reports_energy(cuda_target):
    pytest.importorskip("pynvml", reason="NVML energy needs nvidia-ml-py")
    cost = measure_cost(_pipeline(cuda_target), _seeds(cuda_target), warmup=1, repeats=2)
    assert math.isfinite(cost.energy_j) and cost.energy_j >= 0


@pytest.mark.gpu
@NEEDS_CUDA
def test_torchao_kernels_time_a_quantized_plan_and_give_it_its_own_cost_key(cuda_target):
    pytest.importorskip("torchao", reason="real quantized kernels need torchao (pip install -e '.[gpu]')")
    pipeline = _quantized_pipeline(cuda_target)
    simulated = pipeline.unet
    assert kernel_key(simulated).startswith("|torchao|")
    assert kernel_choice(simulated).quantized_latency == "measured"
    with deployment_kernels(pipeline) as choice:
        assert pipeline.unet is not simulated and not simulated.autoaccel_quantization.activations_enabled
        images = pipeline(_seeds(cuda_target).noise, _seeds(cuda_target).class_labels).images
        assert "torchao" in choice.label
    assert pipeline.unet is simulated and simulated.autoaccel_quantization.activations_enabled
    assert torch.isfinite(images).all()


# ---------------------------------------------------------------- CPU fallbacks


def test_energy_is_not_a_number_on_the_cpu():
    with EnergyMeter("cpu") as meter:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert math.isnan(meter.joules)


def test_energy_is_not_a_number_when_nvml_cannot_start(monkeypatch):
    """A CUDA machine without a working driver library: the measurement goes on without energy."""

    def refuse() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    broken = types.ModuleType("pynvml")
    broken.nvmlInit = refuse
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    with EnergyMeter("cuda:0") as meter:
        pass
    assert math.isnan(meter.joules)


def test_cpu_cost_is_wall_time_and_resident_memory_without_energy(cpu_target):
    cost = measure_cost(_pipeline(cpu_target), _seeds(cpu_target), warmup=0, repeats=2)
    assert (cost.device, cost.memory_kind) == ("cpu", "cpu-rss")
    assert cost.latency_ms > 0 and cost.peak_memory_mb > 0
    assert math.isnan(cost.energy_j)


def test_a_quantized_plan_on_the_cpu_is_timed_on_float_kernels_and_says_so(cpu_target):
    pipeline = _quantized_pipeline(cpu_target)
    simulated = pipeline.unet
    assert kernel_key(simulated) == ""
    assert kernel_choice(simulated).quantized_latency == NOT_MEASURED
    assert "no quantized kernels on cpu" in kernel_choice(simulated).label
    with deployment_kernels(pipeline) as choice:
        assert pipeline.unet is simulated  # no copy: the same float model
        assert not simulated.autoaccel_quantization.activations_enabled  # fake quantization is not a cost
        assert choice.quantized_latency == NOT_MEASURED
    assert simulated.autoaccel_quantization.activations_enabled


def test_a_float_model_is_timed_as_it_is(cpu_target):
    pipeline = _pipeline(cpu_target)
    assert kernel_key(pipeline.unet) == ""
    with deployment_kernels(pipeline) as choice:
        assert pipeline.unet is cpu_target.denoiser
    assert choice.label == FLOAT
