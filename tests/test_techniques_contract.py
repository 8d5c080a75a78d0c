"""One contract for every registered technique, on the tiny pipeline: its config survives a recipe, applying it
is deterministic, it says what of its config changes deployment cost (so latency is cached correctly), and it
never touches the target's own model. A new technique is covered as soon as it registers, and must add an
example config below."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch

from autoaccel.candidate import Candidate, to_plain
from autoaccel.measure.evaluator import CostSettings, Evaluator
from autoaccel.measure.reference import QualityJudge
from autoaccel.recipe import apply_recipe, build_recipe, load_recipe, save_recipe
from autoaccel.sampling import SamplerPipeline
from autoaccel.seeds import make_seed_batch, sample_in_chunks
from autoaccel.space import parse_space
from autoaccel.targets.base import Target, hash_weights
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.base import Technique, registered_techniques, unchanged_model_params

TECHNIQUES = registered_techniques()
SAMPLING_STEPS = 4
IMAGES = 4

# A small, valid, non-default config of each technique (settings without the ``name.`` prefix).
EXAMPLES: dict[str, dict[str, Any]] = {
    "pruning": {"ratio": 0.3, "up": 0.5, "importance": "random", "seed": 3, "recovery_steps": 0},
    "quantization": {
        "weight_bits": 6,
        "low_bits": 4,
        "low_fraction": 0.5,
        "activation_bits": 8,
        "calibration_samples": 4,
        "seed": 1,
    },
    "solver": {
        "name": "unipc",
        "order": 3,
        "variant": "bh1",
        "final_sigma": "sigma_min",
        "lower_order_final": False,
        "guidance": 1.5,
    },
    "timesteps": {"steps": 4, "family": "free", "gaps": [0.2, 0.5, 1.0], "shift": 1.5, "start": 0.9, "end": 0.05},
    "distillation": {
        "method": "consistency",
        "steps": 2,
        "iterations": 4,
        "batch_size": 8,
        "data_samples": 16,
        "original_steps": 25,
        "loss": "l2",
    },
    "assignment": {"teacher_steps": 1, "where": "last"},
    "caching": {"method": "deep", "depth": 1, "interval": 2, "warmup": 1, "tail": 1},
}
# What a technique that acts on another's model needs of that one (settings with their technique's prefix).
PARTNERS: dict[str, dict[str, Any]] = {
    "assignment": {
        "distillation.method": "progressive",
        "distillation.steps": 2,
        "distillation.start_steps": 4,
        "distillation.iterations": 3,
        "distillation.batch_size": 8,
        "distillation.data_samples": 16,
    },
}
# A change of each example that changes what a deployment costs.
COST_CHANGES: dict[str, dict[str, Any]] = {
    "pruning": {"ratio": 0.5},
    "quantization": {"activation_bits": None},
    "solver": {"guidance": 1.0},
    "timesteps": {"steps": 3},
    "distillation": {"steps": 1},
    "assignment": {"teacher_steps": 0},
    "caching": {"interval": 3},
}
# Changes that leave the cost as it is, where a technique has some: such plans share one latency measurement.
SAME_COST_CHANGES: dict[str, dict[str, Any]] = {
    "pruning": {"importance": "magnitude", "seed": 4},
    "quantization": {"seed": 2, "calibration_samples": 5},
    "solver": {"guidance": 2.0, "order": 2},
    "timesteps": {"family": "karras", "rho": 7.0, "gaps": []},
    "distillation": {"seed": 2, "iterations": 3},
    "assignment": {"where": "first"},
}


def by_name(technique: Technique) -> str:
    return technique.name


@pytest.fixture(scope="module")
def target(tiny_pipeline_dir) -> Target:
    return load_pipeline_folder(tiny_pipeline_dir)


def example(name: str) -> dict[str, Any]:
    """The technique's example settings; a registered technique without one fails its contract."""
    if name not in EXAMPLES or name not in COST_CHANGES:
        pytest.fail(f"technique {name!r} has no example: add one to EXAMPLES and COST_CHANGES in {Path(__file__).name}")
    return EXAMPLES[name]


def plan_params(name: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete candidate: ``name`` at its example (with ``changes``), every other technique leaving the model
    as it is, sampled in a few steps."""
    neutral = {**unchanged_model_params(), "timesteps.steps": SAMPLING_STEPS}
    others = {key: value for key, value in neutral.items() if not key.startswith(f"{name}.")}
    own = {f"{name}.{key}": value for key, value in {**example(name), **(changes or {})}.items()}
    return {**others, **PARTNERS.get(name, {}), **own}


def fresh_evaluator(target: Target, cache_dir: Path) -> Evaluator:
    """An evaluator of every technique with empty caches: each plan is applied from scratch."""
    space = parse_space({"techniques": [technique.name for technique in TECHNIQUES], "dimensions": {}})
    judge = QualityJudge(target, IMAGES, 0, cache_dir, IMAGES)
    return Evaluator(target, space, judge, CostSettings(batch_size=IMAGES, warmup=0, repeats=1))


def configured(target: Target, params: dict[str, Any], cache_dir: Path) -> tuple[SamplerPipeline, Evaluator]:
    evaluator = fresh_evaluator(target, cache_dir)
    return evaluator.configured_pipeline(Candidate.from_params(params)), evaluator


def config_in(pipeline: SamplerPipeline, name: str) -> Any:
    return next(config for technique, config in pipeline.plan.techniques if technique.name == name)


def images(pipeline: SamplerPipeline, target: Target) -> torch.Tensor:
    """The same few seeds every time, stochastic solvers included."""
    return sample_in_chunks(pipeline, make_seed_batch(target.sample_shape, IMAGES, 0, target.num_classes), IMAGES)


def sampled_key(target: Target, params: dict[str, Any], cache_dir: Path) -> str:
    """The latency cache key of a plan, once it has sampled (the key counts the unet calls it made)."""
    pipeline, evaluator = configured(target, params, cache_dir)
    images(pipeline, target)
    return evaluator.structure_key(pipeline)


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_the_example_is_valid_and_not_the_default(technique):
    config = technique.config_from_params(plan_params(technique.name))
    defaults = technique.config_cls()
    changed = [item.name for item in fields(config) if getattr(config, item.name) != getattr(defaults, item.name)]
    assert changed, f"the example of {technique.name} leaves every setting at its default"


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_config_round_trips_through_a_recipe_file(technique, target, tmp_path):
    pipeline, _ = configured(target, plan_params(technique.name), tmp_path)
    config = config_in(pipeline, technique.name)
    seed_policy = {"seed": 0, "samples": IMAGES, "chunk_size": IMAGES}
    recipe = build_recipe(target, pipeline.plan.techniques, pipeline, {}, {}, seed_policy, {})
    loaded = load_recipe(save_recipe(recipe, tmp_path / "recipe.yaml"))
    section = loaded["techniques"][technique.name]
    assert section["version"] == technique.version
    assert section.get("simulated", False) == technique.simulated
    settings = {f"{technique.name}.{key}": value for key, value in section["config"].items()}
    rebuilt = technique.config_from_params(settings)
    assert rebuilt == config


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_its_recipe_reproduces_the_measured_images(technique, target, tmp_path):
    pipeline, _ = configured(target, plan_params(technique.name), tmp_path)
    recipe = build_recipe(target, pipeline.plan.techniques, pipeline, {}, {}, {"seed": 0}, {})
    path = save_recipe(recipe, tmp_path / "recipe.yaml")
    assert torch.equal(images(apply_recipe(target, path), target), images(pipeline, target))


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_applying_it_twice_gives_bit_identical_images_and_cost_keys(technique, target, tmp_path):
    params = plan_params(technique.name)
    first, first_evaluator = configured(target, params, tmp_path)
    second, second_evaluator = configured(target, params, tmp_path)
    assert second.unet is not first.unet or not technique.modifies_model  # really applied twice
    assert torch.equal(images(first, target), images(second, target))
    assert first_evaluator.structure_key(first) == second_evaluator.structure_key(second)


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_it_declares_what_changes_its_cost_and_a_costlier_config_gets_its_own_timing(technique, target, tmp_path):
    assert technique.cost_key is not None, f"{technique.name} declares no cost_key"
    config = technique.config_from_params(plan_params(technique.name))
    changed = technique.config_from_params(plan_params(technique.name, COST_CHANGES[technique.name]))
    settings = technique.cost_settings(config)
    assert json.loads(json.dumps(settings, sort_keys=True)) == to_plain(settings)  # plain, stable values
    assert settings == technique.cost_settings(technique.config_from_params(plan_params(technique.name)))
    assert technique.cost_settings(changed) != settings

    key = sampled_key(target, plan_params(technique.name), tmp_path)
    assert json.loads(key)["techniques"].get(technique.name, {}) == to_plain(settings)
    assert sampled_key(target, plan_params(technique.name, COST_CHANGES[technique.name]), tmp_path) != key


@pytest.mark.parametrize("technique", [t for t in TECHNIQUES if t.name in SAME_COST_CHANGES], ids=by_name)
def test_settings_that_leave_the_cost_alone_share_one_timing(technique, target, tmp_path):
    same = plan_params(technique.name, SAME_COST_CHANGES[technique.name])
    assert technique.config_from_params(same) != technique.config_from_params(plan_params(technique.name))
    assert sampled_key(target, same, tmp_path) == sampled_key(target, plan_params(technique.name), tmp_path)


@pytest.mark.parametrize("technique", [t for t in TECHNIQUES if t.modifies_model], ids=by_name)
def test_a_model_reused_from_the_evaluators_cache_keeps_its_cost_key(technique, target, tmp_path):
    evaluator = fresh_evaluator(target, tmp_path)
    candidate = Candidate.from_params(plan_params(technique.name))
    first, again = evaluator.configured_pipeline(candidate), evaluator.configured_pipeline(candidate)
    assert again.unet is first.unet  # not modified a second time
    assert [step[0].name for step in again.plan.techniques] == [step[0].name for step in first.plan.techniques]
    images(first, target)
    images(again, target)
    assert evaluator.structure_key(again) == evaluator.structure_key(first)


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(child._forward_pre_hooks) + len(child._forward_hooks) for child in module.modules())


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_it_leaves_the_targets_own_model_untouched(technique, target, tmp_path):
    unet = target.denoiser
    weights = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    weights_hash, hooks = hash_weights(unet), _hook_count(unet)
    scheduler_config = dict(target.scheduler_config)

    pipeline, _ = configured(target, plan_params(technique.name), tmp_path)
    images(pipeline, target)

    assert target.denoiser is unet
    assert unet.state_dict().keys() == weights.keys()
    assert all(torch.equal(unet.state_dict()[name], tensor) for name, tensor in weights.items())
    assert hash_weights(unet) == weights_hash == target.content_hash
    assert _hook_count(unet) == hooks
    assert not hasattr(unet, "autoaccel_quantization")
    assert dict(target.scheduler_config) == scheduler_config
