"""``target.dtype``: a model loaded in bfloat16 or float16 is that model everywhere: its modules and prompt
embeddings are in that precision, its weights hash is of them, plans whose runtime precision is left free run it
as loaded (the reference too), and a recipe measured on it says so and loads it so."""

from __future__ import annotations

import pytest
import torch
import yaml

from autoaccel.cli.apply_command import load_base_model
from autoaccel.cli.main import main
from autoaccel.errors import ConfigError, RecipeError
from autoaccel.measure.measurement import FAILED
from autoaccel.plan.candidate import Candidate
from autoaccel.plan.recipe import apply_recipe, build_recipe, save_recipe
from autoaccel.reference.sampling import reference_pipeline
from autoaccel.targets.loader import load_pipeline_folder, modules_hash
from autoaccel.targets.precision import load_in_dtype, target_dtype
from autoaccel.techniques.base import get_technique
from autoaccel.techniques.runtime import RuntimeConfig, runtime_call
from autoaccel.testing.pipelines import build_tiny_pipeline
from autoaccel.testing.technique_contract import TechniqueExample, configured, fresh_evaluator, images, plan_params
from autoaccel.util.precision import module_dtype

RUNTIME = get_technique("runtime")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_pipeline("sd", tmp_path_factory.mktemp("dtype") / "sd")


def test_a_bfloat16_target_holds_every_module_and_prompt_embedding_in_bfloat16(folder):
    float32 = load_pipeline_folder(folder)
    target = load_in_dtype(load_pipeline_folder(folder), "bfloat16")
    assert target_dtype(target) == "bfloat16" and target_dtype(float32) == "float32"
    assert module_dtype(target.vae) == torch.bfloat16
    assert all(module_dtype(module) == torch.bfloat16 for module in target.modules.values())
    assert all(embeds.dtype == torch.bfloat16 for embeds in target.conditions.embeds.values())
    assert target.content_hash == modules_hash(target.denoiser, target.modules) != float32.content_hash


def test_its_reference_runs_in_bfloat16_close_to_float32_and_not_equal(folder, tmp_path):
    float32 = load_pipeline_folder(folder)
    target = load_in_dtype(load_pipeline_folder(folder), "bfloat16")
    reference, lower = reference_pipeline(float32), reference_pipeline(target)
    assert module_dtype(lower.denoiser) == torch.bfloat16
    first, second = images(reference, float32), images(lower, target)
    assert second.dtype == torch.float32 and torch.isfinite(second).all()
    assert not torch.equal(first, second)
    assert (first - second).abs().mean() <= 0.05 * first.abs().mean()


def test_a_plan_that_leaves_the_precision_free_runs_the_model_as_loaded(folder, tmp_path):
    target = load_in_dtype(load_pipeline_folder(folder), "bfloat16")
    assert RuntimeConfig().runs_as_loaded(target.denoiser)
    assert RuntimeConfig(dtype="bfloat16").runs_as_loaded(target.denoiser)
    assert not RuntimeConfig(dtype="float32").runs_as_loaded(target.denoiser)
    free, _ = configured(target, plan_params(RUNTIME, TechniqueExample({}, {})), tmp_path)
    assert runtime_call(free.denoiser) is None and module_dtype(free.denoiser) == torch.bfloat16  # as loaded
    upcast, _ = configured(target, plan_params(RUNTIME, TechniqueExample({"dtype": "float32"}, {})), tmp_path)
    assert module_dtype(upcast.denoiser) == torch.float32 and module_dtype(target.denoiser) == torch.bfloat16
    assert module_dtype(upcast.vae) == torch.float32


@pytest.mark.parametrize(
    ("technique", "settings"),
    [("pruning", {"ratio": 0.3}), ("quantization", {"enabled": True}), ("distillation", {"method": "consistency"})],
)
def test_a_technique_that_trains_a_float32_copy_is_refused_with_the_way_to_the_same_plan(
    folder, tmp_path, technique, settings
):
    target = load_in_dtype(load_pipeline_folder(folder), "bfloat16")
    candidate = Candidate.from_params(plan_params(get_technique(technique), TechniqueExample(settings, {})))
    measurement = fresh_evaluator(target, tmp_path).evaluate(candidate)
    assert measurement.status == FAILED
    assert "runs on a float32 copy of the model, and this target was loaded in bfloat16" in measurement.failure
    assert "load it in float32 and add runtime.dtype=bfloat16 to the space" in measurement.failure


def test_a_recipe_names_the_precision_and_apply_loads_the_model_in_it(folder, tmp_path):
    target = load_in_dtype(load_pipeline_folder(folder), "bfloat16")
    pipeline, _ = configured(target, plan_params(RUNTIME, TechniqueExample({}, {})), tmp_path)
    recipe = build_recipe(target, pipeline.plan.techniques, pipeline, {}, {}, {"seed": 0}, {})
    assert recipe["base_model"]["dtype"] == "bfloat16"
    path = save_recipe(recipe, tmp_path / "recipe.yaml")
    loaded = load_base_model(yaml.safe_load(path.read_text()), str(folder), "cpu")
    assert target_dtype(loaded) == "bfloat16" and loaded.content_hash == target.content_hash
    assert torch.equal(images(apply_recipe(loaded, path), loaded), images(pipeline, target))
    with pytest.raises(RecipeError, match=r"loaded in bfloat16, and this one is in float32: load it with "):
        apply_recipe(load_pipeline_folder(folder), path)


def test_a_dtype_no_model_loads_in_is_one_line(folder, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"target.dtype='int8' is not valid; valid: float32, bfloat16, float16"):
        load_in_dtype(load_pipeline_folder(folder), "int8")
    overrides = ["target=pipeline", f"target.path={folder}", "target.dtype=int8", f"report.dir={tmp_path}"]
    assert main(["search", *overrides]) == 2
    assert "target.dtype='int8' is not valid; valid: float32, bfloat16, float16" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_a_calibrated_cache_runs_on_a_bfloat16_target(tmp_path_factory, tmp_path):
    """Caching calibrates on the model as it runs, not on a float32 copy: it is not refused."""
    target = load_in_dtype(load_pipeline_folder(build_tiny_pipeline("dit", tmp_path_factory.mktemp("dit"))), "bfloat16")
    cache = {"method": "first_block", "strength": 0.5}
    pipeline, _ = configured(target, plan_params(get_technique("caching"), TechniqueExample(cache, {})), tmp_path)
    assert module_dtype(pipeline.denoiser) == torch.bfloat16 and torch.isfinite(images(pipeline, target)).all()
