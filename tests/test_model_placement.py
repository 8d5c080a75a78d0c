"""Loading a large model the way it fits: its weights read in the target's precision (never held in float32
first), and its modules offloaded to CPU memory between calls (target.offload), with offloading's cost inside
every latency and the device said so."""

from __future__ import annotations

import pytest
import torch

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.testing.pipelines import build_tiny_pipeline


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return build_tiny_pipeline("sdxl", tmp_path_factory.mktemp("placement") / "sdxl")


def test_target_dtype_reads_the_weights_in_that_precision(sdxl_folder, monkeypatch):
    """from_pretrained gets torch_dtype and low_cpu_mem_usage (accelerate's loading, module by module), and the
    weights hash as a float32 load cast afterwards does, so recipes measured either way name the same model."""
    import diffusers

    from autoaccel.targets.loader import load_pipeline_folder
    from autoaccel.targets.precision import load_in_dtype

    calls = []
    real = diffusers.StableDiffusionXLPipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "from_pretrained", classmethod(spy))
    target = load_pipeline_folder(sdxl_folder, dtype="bfloat16")
    given = calls[-1].get("dtype", calls[-1].get("torch_dtype"))  # the name diffusers takes it by
    assert given is torch.bfloat16 and calls[-1]["low_cpu_mem_usage"] is True
    assert target.denoiser.dtype == target.vae.dtype == torch.bfloat16
    assert target.modules["text_encoder_2"].dtype == torch.bfloat16
    assert target.conditions.embeds["encoder_hidden_states"].dtype == torch.bfloat16  # encoded by bf16 encoders
    cast = load_in_dtype(load_pipeline_folder(sdxl_folder), "bfloat16")
    assert target.content_hash == cast.content_hash


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["target.offload=disk"], "target.offload='disk' is not valid; valid: none, model, sequential"),
        (["target.offload=model", "target.device=cpu"], "target.device=cpu has no GPU, so only none is valid"),
        (["target.dtype=float8"], "target.dtype='float8' is not valid; valid: float32, bfloat16, float16"),
    ],
)
def test_bad_placement_is_one_line(sdxl_folder, tmp_path, capsys, overrides, message):
    from autoaccel.cli.main import main

    base = ["target=pipeline", f"target.path={sdxl_folder}", "target.device=cpu", f"report.dir={tmp_path}"]
    assert main(["search", *base, *overrides]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not any(tmp_path.iterdir())


def test_an_embedded_model_is_never_offloaded(tmp_path, capsys):
    from autoaccel.cli.main import main

    assert main(["search", "target=digits", "target.device=cpu", "target.offload=model", f"report.dir={tmp_path}"]) == 2
    assert "target.offload=model: target=digits is small and is never offloaded; valid: none" in capsys.readouterr().err


@pytest.mark.slow  # seconds of searching, training or scoring: kept out of the quick subset
def test_model_offload_runs_the_same_images_and_its_latency_says_offloaded(sdxl_folder, tmp_path):
    """diffusers' enable_model_cpu_offload hooks (accelerate's), installed as target.offload=model installs them,
    run under autoaccel's own loop: the images are the unoffloaded ones, the device read is the hooks' execution
    device, and every latency is marked as taken offloaded. A plan that makes a new model is refused in one line;
    the sampler is searched. (On a CPU the hooks move nothing; on a GPU they move each model in and out.)"""
    import diffusers

    from autoaccel.measure.latency import measure_cost
    from autoaccel.pipeline.seeds import make_seed_batch
    from autoaccel.reference.sampling import reference_pipeline
    from autoaccel.targets.denoisers import execution_device
    from autoaccel.targets.loader import load_pipeline_folder, place, target_from_pipeline
    from autoaccel.techniques.base import unchanged_model_params
    from autoaccel.testing.technique_contract import configured, images

    plain = load_pipeline_folder(sdxl_folder)
    pipeline = diffusers.DiffusionPipeline.from_pretrained(sdxl_folder)
    place(pipeline, "cpu", "model")  # the CPU stands in for the GPU: accelerate's hooks run all the same
    target = target_from_pipeline(pipeline, "sdxl", sdxl_folder)
    target.offload = "model"
    assert hasattr(target.denoiser, "_hf_hook") and execution_device(target.denoiser) == torch.device("cpu", 0)
    seeds = make_seed_batch(target.sample_shape, 2, 3, target.condition_count)
    offloaded = reference_pipeline(target)
    assert torch.equal(
        offloaded(seeds.noise, seeds.class_labels).images,
        reference_pipeline(plain)(seeds.noise, seeds.class_labels).images,
    )
    assert measure_cost(offloaded, seeds, warmup=0, repeats=1).device == "cpu:0, offloaded"
    assert measure_cost(reference_pipeline(plain), seeds, warmup=0, repeats=1).device == "cpu"

    sampler = {**unchanged_model_params(), "solver.name": "euler", "timesteps.steps": 3}
    assert images(configured(target, sampler, tmp_path)[0], target).shape[0] == 4
    with pytest.raises(TechniqueError, match=r"pruning: the target is offloaded \(target.offload=model\)"):
        configured(target, {**sampler, "pruning.ratio": 0.5}, tmp_path)


def test_offload_needs_a_gpu_even_when_called_directly():
    from autoaccel.targets.loader import check_offload

    with pytest.raises(ConfigError, match="only none is valid"):
        check_offload("sequential", "cpu")
    check_offload("none", "cpu")
