"""The runtime technique: each setting applies or is refused with its reason on the tiny pipelines of every class,
lower precision changes the images a little, a compiled plan records its compile time, a compile during timed calls
fails the measurement, and a compiled plan's recipe compiles again to the same images."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from autoaccel.errors import TechniqueError
from autoaccel.measure.latency import RecompiledWhileTimed, measure_cost
from autoaccel.measure.measurement import FAILED
from autoaccel.pipeline.call_control import call_controller
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.plan.candidate import Candidate
from autoaccel.plan.recipe import apply_recipe, build_recipe, save_recipe
from autoaccel.targets.layouts import layout_of
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.base import COMPILE_SECONDS, get_technique
from autoaccel.techniques.runtime import RuntimeCall, RuntimeConfig
from autoaccel.testing.pipelines import build_tiny_pipeline
from autoaccel.testing.technique_contract import TechniqueExample, configured, fresh_evaluator, images, plan_params
from autoaccel.util.precision import module_dtype

RUNTIME = get_technique("runtime")
CLASSES = ("ddpm", "ddim", "dit", "sd", "pixart_alpha", "pixart_sigma", "sd3", "sana")  # the classes autoaccel loads
UNETS = ("ddpm", "ddim", "sd")


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime")
    return {kind: load_pipeline_folder(build_tiny_pipeline(kind, folder / kind)) for kind in CLASSES}


def params(**settings) -> dict:
    return plan_params(RUNTIME, TechniqueExample(settings, {}))


def close(images: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    """Within ``tolerance`` of the reference's mean magnitude on average (random tiny models' outputs are not in
    [-1, 1])."""
    return bool((images - reference).abs().mean() <= tolerance * reference.abs().mean())


def run(target, tmp_path, **settings):
    pipeline, evaluator = configured(target, params(**settings), tmp_path)
    return pipeline, evaluator


@pytest.mark.parametrize("kind", CLASSES)
def test_bfloat16_casts_the_denoiser_vae_and_text_encoders_and_stays_close_to_float32(targets, kind, tmp_path):
    target = targets[kind]
    eager, _ = run(target, tmp_path)
    low, _ = run(target, tmp_path, dtype="bfloat16")
    assert low.denoiser.dtype == torch.bfloat16 and target.denoiser.dtype == torch.float32
    if target.vae is not None:
        assert low.vae.dtype == torch.bfloat16 and target.vae.dtype == torch.float32
    if low.conditions.encoder is not None:  # prompts: re-encoded by cast copies of the text encoders
        assert all(
            value.dtype == torch.bfloat16 for value in low.conditions.embeds.values() if value.is_floating_point()
        )
    reference, lowered = images(eager, target), images(low, target)
    assert lowered.dtype == torch.float32 and torch.isfinite(lowered).all()
    assert not torch.equal(reference, lowered)
    assert close(lowered, reference, 0.02)


def test_float16_runs_on_this_cpu(targets, tmp_path):
    """torch has CPU float16 kernels for what the tiny models run (conv2d, group_norm, SDPA): accepted, measured."""
    target = targets["sd"]
    half, _ = run(target, tmp_path, dtype="float16")
    eager, _ = run(target, tmp_path)
    assert half.denoiser.dtype == torch.float16
    assert close(images(half, target), images(eager, target), 0.02)


@pytest.mark.parametrize("kind", CLASSES)
def test_channels_last_applies_to_unets_and_is_refused_for_transformers(targets, kind, tmp_path):
    target = targets[kind]
    if kind in UNETS:
        pipeline, _ = run(target, tmp_path, channels_last=True)
        weight = next(p for p in pipeline.denoiser.parameters() if p.dim() == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert close(images(pipeline, target), images(run(target, tmp_path)[0], target), 1e-5)
    else:
        with pytest.raises(TechniqueError, match="channels_last is for UNets"):
            run(target, tmp_path, channels_last=True)


@pytest.mark.parametrize("kind", CLASSES)
def test_fuse_qkv_applies_where_the_class_has_it_and_is_refused_otherwise(targets, kind, tmp_path):
    target = targets[kind]
    model = target.denoiser
    if not hasattr(model, "fuse_qkv_projections"):
        with pytest.raises(TechniqueError, match="has no fuse_qkv_projections"):
            run(target, tmp_path, fuse_qkv=True)
        return
    if not layout_of(model).fuses_qkv:  # Sana: its processors would go on reading the separate projections
        with pytest.raises(TechniqueError, match="read the separate query, key and value projections"):
            run(target, tmp_path, fuse_qkv=True)
        return
    pipeline, _ = run(target, tmp_path, fuse_qkv=True)
    assert any(hasattr(module, "to_qkv") for module in pipeline.denoiser.modules())
    assert not any(hasattr(module, "to_qkv") for module in model.modules())  # the target's model is left alone
    assert close(images(pipeline, target), images(run(target, tmp_path)[0], target), 1e-5)


def test_attention_backends_this_cpu_has_run_and_the_others_are_refused_with_the_reason(targets, tmp_path):
    target = targets["sd"]
    eager = images(run(target, tmp_path)[0], target)
    for backend in ("math", "flash"):  # torch's CPU kernels
        assert close(images(run(target, tmp_path, attention=backend)[0], target), eager, 1e-5)
    for backend in ("efficient", "cudnn"):
        with pytest.raises(TechniqueError, match=f"runtime.attention='{backend}': torch has no such kernel"):
            run(target, tmp_path, attention=backend)


def test_reduce_overhead_is_refused_off_cuda_and_a_refusal_is_a_failed_trial_with_its_reason(targets, tmp_path):
    evaluator = fresh_evaluator(targets["ddpm"], tmp_path)
    measurement = evaluator.evaluate(Candidate.from_params(params(compile="reduce-overhead")))
    assert measurement.status == FAILED
    assert "reduce-overhead" in measurement.failure and "CUDA only" in measurement.failure


def test_compile_is_refused_on_a_cached_model(targets, tmp_path):
    settings = {**params(compile="default"), "caching.method": "deep", "caching.depth": 1, "caching.interval": 2}
    with pytest.raises(TechniqueError, match="does not apply to a cached model"):
        configured(targets["ddpm"], settings, tmp_path)


@pytest.mark.parametrize(
    ("kind", "cache"),
    [
        ("sd", {"caching.method": "deep", "caching.depth": 1, "caching.interval": 2}),
        ("dit", {"caching.method": "first_block", "caching.strength": 0.5}),  # calibrated when it first runs
    ],
)
def test_a_cached_model_runs_in_lower_precision_with_its_cache_built_again_around_the_cast_model(
    targets, tmp_path, kind, cache
):
    """A cached model shares its weights with the model it was built from and cannot be copied: the runtime
    builds the same cache around a cast copy of that model, and the target's own modules stay float32."""
    target = targets[kind]
    cached, _ = configured(target, {**params(), **cache}, tmp_path)
    lower, _ = configured(target, {**params(dtype="bfloat16"), **cache}, tmp_path)
    assert call_controller(lower.denoiser) is not None and call_controller(lower.denoiser) is not call_controller(
        cached.denoiser
    )
    assert module_dtype(lower.denoiser) == torch.bfloat16 and module_dtype(target.denoiser) == torch.float32
    first, second = images(cached, target), images(lower, target)
    assert not torch.equal(first, second) and close(second, first, 0.1)


def test_a_student_handing_a_step_to_its_teacher_runs_both_in_the_plans_precision(targets, tmp_path):
    """The teacher answers the first step with the prompt's unconditional branch: both models and that branch's
    embeddings in bfloat16, the target's own teacher left as it was."""
    target = targets["sd"]
    student = {
        "distillation.method": "consistency",
        "distillation.iterations": 3,
        "distillation.steps": 2,
        "distillation.batch_size": 4,
        "distillation.data_samples": 8,
        "assignment.teacher_steps": 1,
    }
    pipeline, _ = configured(target, {**params(dtype="bfloat16"), **student}, tmp_path)
    assert module_dtype(pipeline.denoiser.student) == module_dtype(pipeline.denoiser.teacher) == torch.bfloat16
    assert module_dtype(target.denoiser) == torch.float32
    assert torch.isfinite(images(pipeline, target)).all()


def test_the_default_config_leaves_the_model_as_it_is(targets):
    target = targets["ddpm"]
    pipeline = sampler_pipeline(target)
    RUNTIME.apply(pipeline, RuntimeConfig(), target)
    assert pipeline.denoiser is target.denoiser
    assert RUNTIME.cost_settings(RuntimeConfig()) == {}
    assert RUNTIME.label(params()) is None and RUNTIME.label(params(dtype="bfloat16", compile="default")) == (
        "bfloat16 compiled"
    )


@pytest.mark.slow
def test_a_compiled_plan_records_its_compile_time_and_its_recipe_compiles_again_to_the_same_images(targets, tmp_path):
    target = targets["ddpm"]
    evaluator = fresh_evaluator(target, tmp_path)
    measurement = evaluator.evaluate(Candidate.from_params(params(compile="default", dtype="bfloat16")))
    assert measurement.status != FAILED, measurement.failure
    assert measurement.details["compile_seconds"] > 0
    pipeline = evaluator.configured_pipeline(Candidate.from_params(params(compile="default", dtype="bfloat16")))
    scored = images(pipeline, target)
    eager = images(run(target, tmp_path, dtype="bfloat16")[0], target)
    assert close(scored, eager, 0.02)
    record = measurement.details["records"]["runtime"]
    assert record["torch"] == torch.__version__ and record["fullgraph"] is True
    recipe = build_recipe(target, pipeline.plan.techniques, pipeline, {}, {}, {"seed": 0}, {})
    again = apply_recipe(target, save_recipe(recipe, tmp_path / "recipe.yaml"))
    assert getattr(again.denoiser, COMPILE_SECONDS) == 0.0  # nothing compiled is shipped: applying compiles
    assert torch.equal(images(again, target), scored)  # compiled vs compiled, on this machine
    # it ran compiled (in this process dynamo may reuse the code it compiled for the scored model: no new seconds)
    assert again.denoiser.autoaccel_runtime.fullgraph is True


@pytest.mark.slow
def test_a_compile_during_the_timed_calls_fails_the_measurement(targets, tmp_path):
    """A guard that fails between the warm-up and the timed calls (grad mode switched on inside the call)."""
    target = targets["ddpm"]
    pipeline, _ = run(target, tmp_path, compile="default")
    seeds = make_seed_batch(target.sample_shape, 4, 0, target.condition_count)
    cost = measure_cost(pipeline, seeds, warmup=0, repeats=2)  # compiles in the warm-up it is given anyway
    assert cost.latency_ms > 0
    with pytest.raises(RecompiledWhileTimed, match="compiled again during its timed calls.*grad_mode"):
        measure_cost(pipeline, seeds, warmup=0, repeats=1, on_step=lambda step, steps: torch.set_grad_enabled(True))


SMALL_RUNTIME_SPACE = """
name: small_runtime
techniques: [runtime]
dimensions:
  runtime.dtype: {type: categorical, choices: [float32, bfloat16]}
  runtime.compile: {type: categorical, choices: [none, default]}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_runtime_search_through_the_cli_records_compile_time_and_writes_recipes(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    """A space of runtime settings alone measures them at the model's default call, as deployed."""
    from autoaccel.cli.main import main

    space = tmp_path / "runtime.yaml"
    space.write_text(SMALL_RUNTIME_SPACE)
    reports = tmp_path / "reports"
    overrides = [*fast_overrides, f"space={space}", "budget.trials=4", "seed=2", f"report.dir={reports}"]
    assert main(["search", *overrides]) == 0
    trials = pd.read_csv(next(reports.rglob("trials.csv")))
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == len(trials), trials[["state", "failure"]].to_string()
    default_steps = load_pipeline_folder(str(tiny_pipeline_dir), device="cpu").reference_call.steps
    assert set(complete["nfe"]) == {default_steps}
    compiled = complete[complete["param.runtime.compile"] == "default"]
    assert not compiled.empty and (compiled["compile_seconds"] >= 0).all() and (compiled["compile_seconds"] > 0).any()
    assert list(next(reports.rglob("recipes")).glob("*.yaml"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "settings", [{"attention": "flash", "dtype": "float16"}, {"compile": "reduce-overhead"}, {"dtype": "float16"}]
)
def test_cuda_only_settings_run_on_cuda(tmp_path, settings):
    target = load_pipeline_folder(build_tiny_pipeline("sd", tmp_path / "sd"), device="cuda")
    pipeline, _ = run(target, tmp_path, **settings)
    eager = images(run(target, tmp_path)[0], target)
    assert close(images(pipeline, target), eager, 0.02)


@pytest.mark.slow
def test_a_process_compiles_more_plan_structures_than_dynamos_default_keeps():
    """A search compiles one variant of the denoiser's forward per plan structure; past dynamo's default of 8 a
    whole-graph compile would fail (or a partial one run eagerly, unannounced)."""
    torch._dynamo.reset()
    for depth in range(1, 12):  # 11 structures of one forward
        model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(depth)))
        call = RuntimeCall(model, RuntimeConfig(compile="default"))
        assert call(torch.ones(2, 4)).shape == (2, 4)
        assert call.fullgraph is True
