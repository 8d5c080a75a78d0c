"""Targets (autoaccel/targets/loader.py, the embedded digits model) and quality features (autoaccel/measure/)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from autoaccel.errors import TargetError
from autoaccel.metrics.features import EXTRACTORS, GENERIC_EXTRACTOR, ensure_registered
from autoaccel.metrics.quality import distribution_metrics
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.targets.base import hash_weights
from autoaccel.targets.digits.features import DIGITS_EXTRACTOR
from autoaccel.targets.loader import SUPPORTED, default_device, load_pipeline_folder
from autoaccel.targets.registry import registered_target_kinds, target_kind
from autoaccel.testing.pipelines import build_tiny_pipeline_folder
from autoaccel.testing.target_contract import check_target_kind


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("targets") / "tiny")


@pytest.fixture(scope="module")
def unconditional_folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("targets") / "plain", class_conditional=False)


@pytest.fixture(scope="module")
def digits():
    from autoaccel.targets.digits.model import load_digits_target

    return load_digits_target("cpu")


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


# --- load_pipeline_folder errors -------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    path = tmp_path / "no-such-model"
    with pytest.raises(TargetError) as info:
        load_pipeline_folder(path)
    assert repr(str(path)) in str(info.value)
    assert "is not a folder" in str(info.value)
    assert SUPPORTED in str(info.value)


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(TargetError) as info:
        load_pipeline_folder(tmp_path)
    assert repr(str(tmp_path)) in str(info.value)
    assert "no model_index.json" in str(info.value)
    assert SUPPORTED in str(info.value)


@pytest.mark.parametrize("class_name", ["QwenImagePipeline", "KandinskyPipeline", None])
def test_unsupported_pipeline_class(tiny_folder, tmp_path, class_name):
    folder = _copy(tiny_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = class_name
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(TargetError) as info:
        load_pipeline_folder(folder)
    message = str(info.value)
    assert repr(str(folder)) in message
    assert f"holds a {class_name}, which is not supported" in message
    assert SUPPORTED in message


def test_unsupported_unet_class(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DModel2"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(TargetError, match="UNet2DModel2.*not supported"):
        load_pipeline_folder(folder)


def test_unreadable_model_index(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(TargetError, match="model_index.json is not readable JSON"):
        load_pipeline_folder(folder)


def test_missing_scheduler_config(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(TargetError, match="no scheduler/scheduler_config.json"):
        load_pipeline_folder(folder)


def test_missing_unet_weights(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(TargetError, match="weights could not be loaded"):
        load_pipeline_folder(folder)


def test_null_class_outside_the_unets_classes(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    (folder / "autoaccel.json").write_text(json.dumps({"null_class": 4}))
    with pytest.raises(TargetError, match="null_class=4 is not a class of this unet"):
        load_pipeline_folder(folder)


# --- loading the tiny folders ----------------------------------------------------------------------------------


def test_tiny_class_conditional_folder(tiny_folder):
    target = load_pipeline_folder(tiny_folder)
    assert target.null_class == 3
    assert target.num_classes == 3
    assert target.capabilities == {"guidance", "distillation"}
    assert target.name == "tiny"
    assert target.path == tiny_folder.resolve()
    assert target.scheduler_class == "DDPMScheduler"
    assert target.scheduler_config["num_train_timesteps"] == 100
    assert target.num_train_timesteps == 100
    assert target.sample_shape == (1, 8, 8)
    assert target.content_hash == hash_weights(target.denoiser)
    assert target.quality.extractor == GENERIC_EXTRACTOR
    assert target.real_images is None
    assert not target.denoiser.training
    assert not any(parameter.requires_grad for parameter in target.denoiser.parameters())
    pipeline = sampler_pipeline(target)
    assert pipeline.unet is target.denoiser
    assert type(pipeline.scheduler).__name__ == "DDPMScheduler"
    assert pipeline.plan.null_class == 3


def test_tiny_unconditional_folder(unconditional_folder):
    target = load_pipeline_folder(unconditional_folder)
    assert target.null_class is None
    assert target.num_classes is None
    assert target.capabilities == {"distillation"}
    assert target.metadata == {}


def test_null_class_without_num_classes_counts_the_other_embeddings(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    (folder / "autoaccel.json").write_text(json.dumps({"null_class": 3}))
    target = load_pipeline_folder(folder)
    assert (target.null_class, target.num_classes) == (3, 3)


def test_hash_is_stable_across_loads_and_tracks_every_weight(tiny_folder, tmp_path):
    first = load_pipeline_folder(tiny_folder)
    second = load_pipeline_folder(tiny_folder)
    assert first.denoiser is not second.denoiser
    assert first.content_hash == second.content_hash == hash_weights(second.denoiser)
    assert len(first.content_hash) == 64
    with torch.no_grad():
        parameter = dict(second.denoiser.named_parameters())["conv_out.bias"]
        parameter[0] += 1e-3
    assert hash_weights(second.denoiser) != first.content_hash
    with torch.no_grad():
        parameter[0] -= 1e-3
    # a model saved with other weights (another seed) hashes differently
    other = load_pipeline_folder(build_tiny_pipeline_folder(tmp_path / "other", seed=1))
    assert other.content_hash != first.content_hash


def test_default_device():
    assert default_device("cpu") == "cpu"
    assert default_device("cuda:1") == "cuda:1"
    assert default_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TargetError, match="target.device='tpu' is not valid"):
        default_device("tpu")


# --- the embedded digits model ---------------------------------------------------------------------------------


def test_digits_target(digits):
    assert digits.name == "digits"
    assert digits.null_class == 10
    assert digits.num_classes == 10
    assert digits.capabilities == {"guidance", "distillation"}
    assert digits.sample_shape == (1, 8, 8)
    assert digits.num_train_timesteps == 1000
    real = digits.real_images
    assert real.dtype == torch.uint8
    assert tuple(real.shape) == (1797, 1, 8, 8)
    assert int(real.min()) == 0 and int(real.max()) == 255
    assert digits.quality.extractor == DIGITS_EXTRACTOR
    assert digits.quality.kind == "real-data"


def test_digits_target_samples_on_its_own_scheduler(digits):
    pipeline = sampler_pipeline(digits)
    pipeline.plan.timesteps = [999, 500, 100]
    from autoaccel.techniques.solver import SolverConfig, build_scheduler

    pipeline.scheduler = build_scheduler(SolverConfig(name="ddim"), digits.scheduler_config)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    images = pipeline(noise, torch.tensor([3, 7])).images
    assert images.shape == (2, 1, 8, 8)
    assert torch.isfinite(images).all()


# --- features and FID ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fid_separates_real_digits_from_noise(digits, tmp_path):
    extractor, cache = DIGITS_EXTRACTOR, tmp_path / "cache"
    real = digits.real_images
    real_subset = real[:500].float() / 127.5 - 1.0
    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    close = distribution_metrics(real_subset, real, extractor, cache, reference_key="digits-test")
    far = distribution_metrics(noise, real, extractor, cache, reference_key="digits-test")
    assert set(close) == {"fid", "fid_std", "kid", "kid_std", "precision", "recall"}
    assert 0 <= close["fid"] < 5
    assert 0 < close["fid_std"] < close["fid"]  # the bootstrap interval is a real, smaller-than-the-value spread
    assert far["fid"] > 20 * max(close["fid"], 1.0)
    assert far["kid"] > close["kid"]
    assert close["precision"] > 0.9 > far["precision"]
    assert (cache / "fidelity").is_dir()  # the reference features went to the given cache


def test_distribution_metrics_refuse_non_finite_images(digits, tmp_path):
    images = torch.zeros(4, 1, 8, 8)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        distribution_metrics(images, digits.real_images, DIGITS_EXTRACTOR, tmp_path, reference_key="x")


def test_ensure_registered_is_idempotent():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    for name in EXTRACTORS:
        assert ensure_registered(name) == name
        assert ensure_registered(name) == name
        assert FEATURE_EXTRACTORS_REGISTRY[name] is EXTRACTORS[name]


def test_ensure_registered_rejects_unknown_extractor():
    with pytest.raises(ValueError, match="unknown feature extractor 'inception-v3'"):
        ensure_registered("inception-v3")


@pytest.mark.parametrize("extractor", [DIGITS_EXTRACTOR, GENERIC_EXTRACTOR])
def test_feature_extractors_are_deterministic(extractor):
    module = EXTRACTORS[extractor](extractor, ["features"])
    images = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    with torch.no_grad():
        first = module(images)[0]
        again = EXTRACTORS[extractor](extractor, ["features"])(images)[0]
    assert first.shape == (6, 64 if extractor == DIGITS_EXTRACTOR else 192)
    torch.testing.assert_close(first, again)


def test_corrupt_weights_file_is_one_clear_error_and_nothing_is_written(tiny_folder, tmp_path, capsys):
    from autoaccel.cli.main import main

    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(TargetError, match="weights could not be loaded"):
        load_pipeline_folder(broken)
    reports = tmp_path / "reports"
    assert main(["search", "target=pipeline", f"target.path={broken}", f"report.dir={reports}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "diffusion_pytorch_model.safetensors" in error
    assert not reports.exists()


# --- the target-kind contract (autoaccel.testing.target_contract), for every registered kind --------------------


@pytest.mark.parametrize("name", registered_target_kinds())
def test_every_registered_kind_keeps_the_target_contract(name, tiny_folder, tmp_path):
    kind = target_kind(name)
    check_target_kind(kind, tiny_folder if kind.takes_path else None, tmp_path)


def test_the_target_contract_catches_a_kind_whose_summary_disagrees_with_its_model(tmp_path):
    digits = target_kind("digits")
    wrong = dataclasses.replace(digits, summary=lambda: ("flow", 1.0))
    with pytest.raises(AssertionError, match="flow"):
        check_target_kind(wrong, None, tmp_path)
