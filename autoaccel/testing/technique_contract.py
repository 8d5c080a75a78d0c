"""The contract every technique keeps, as checks an extension can run on its own technique: its config survives a
recipe, applying it is deterministic, it says what of its config changes deployment cost (so latency is cached
correctly), it never touches the target's own model, and one that trains tells the search's estimate how much.

A technique is described to the checks by a ``TechniqueExample`` (a valid non-default config and a change of it
that changes the cost); the target is any loaded ``Target`` (``autoaccel.testing.pipelines`` builds tiny ones).
``check_technique`` runs every check; each ``check_*`` also runs alone (for one pytest test per check)::

    from autoaccel.testing.technique_contract import TechniqueExample, check_technique

    def test_my_technique_keeps_the_contract(tmp_path):
        target = load_pipeline_folder(build_tiny_pipeline_folder(tmp_path / "tiny"))
        check_technique(get_technique("mine"), TechniqueExample({"level": 2}, {"level": 3}), target, tmp_path)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from autoaccel.measure.evaluator import CostSettings, Evaluator
from autoaccel.measure.reference import QualityJudge
from autoaccel.pipeline.sampling import SamplerPipeline
from autoaccel.pipeline.seeds import make_seed_batch, sample_in_chunks
from autoaccel.plan.candidate import Candidate, to_plain
from autoaccel.plan.recipe import apply_recipe, build_recipe, load_recipe, save_recipe
from autoaccel.space.spaces import parse_space
from autoaccel.targets.base import Target, hash_weights
from autoaccel.targets.loader import modules_hash
from autoaccel.techniques.base import SearchWork, Technique, registered_techniques, unchanged_model_params

SAMPLING_STEPS = 4
IMAGES = 4


@dataclass(frozen=True)
class TechniqueExample:
    """How the checks exercise one technique (settings without the ``name.`` prefix)."""

    settings: dict[str, Any]  # a small, valid, non-default config
    cost_change: dict[str, Any]  # a change of ``settings`` that changes what a deployment costs
    same_cost_change: dict[str, Any] | None = None  # a change that leaves the cost alone, where there is one
    partners: dict[str, Any] = field(default_factory=dict)  # what it needs of another technique (with prefixes)


def plan_params(technique: Technique, example: TechniqueExample, changes: dict[str, Any] | None = None) -> dict:
    """A complete candidate: the technique at its example (with ``changes``), every other technique leaving the
    model as it is, sampled in a few steps."""
    name = technique.name
    neutral = {**unchanged_model_params(), "timesteps.steps": SAMPLING_STEPS}
    others = {key: value for key, value in neutral.items() if not key.startswith(f"{name}.")}
    own = {f"{name}.{key}": value for key, value in {**example.settings, **(changes or {})}.items()}
    return {**others, **example.partners, **own}


def fresh_evaluator(target: Target, cache_dir: Path) -> Evaluator:
    """An evaluator of every registered technique with empty caches: each plan is applied from scratch."""
    space = parse_space({"techniques": [technique.name for technique in registered_techniques()], "dimensions": {}})
    judge = QualityJudge(target, IMAGES, 0, cache_dir, IMAGES)
    return Evaluator(target, space, judge, CostSettings(batch_size=IMAGES, warmup=0, repeats=1))


def configured(target: Target, params: dict[str, Any], cache_dir: Path) -> tuple[SamplerPipeline, Evaluator]:
    evaluator = fresh_evaluator(target, cache_dir)
    return evaluator.configured_pipeline(Candidate.from_params(params)), evaluator


def config_in(pipeline: SamplerPipeline, name: str) -> Any:
    return next(config for technique, config in pipeline.plan.techniques if technique.name == name)


def images(pipeline: SamplerPipeline, target: Target) -> torch.Tensor:
    """The same few seeds every time, stochastic solvers included."""
    return sample_in_chunks(pipeline, make_seed_batch(target.sample_shape, IMAGES, 0, target.condition_count), IMAGES)


def sampled_key(target: Target, params: dict[str, Any], cache_dir: Path) -> str:
    """The latency cache key of a plan, once it has sampled (the key counts the denoiser calls it made)."""
    pipeline, evaluator = configured(target, params, cache_dir)
    images(pipeline, target)
    return evaluator.structure_key(pipeline)


def check_example_is_valid_and_not_the_default(technique: Technique, example: TechniqueExample) -> None:
    config = technique.config_from_params(plan_params(technique, example))
    defaults = technique.config_cls()
    changed = [item.name for item in fields(config) if getattr(config, item.name) != getattr(defaults, item.name)]
    assert changed, f"the example of {technique.name} leaves every setting at its default"


def check_config_round_trips_through_a_recipe_file(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    pipeline, _ = configured(target, plan_params(technique, example), tmp_path)
    config = config_in(pipeline, technique.name)
    seed_policy = {"seed": 0, "samples": IMAGES, "chunk_size": IMAGES}
    recipe = build_recipe(target, pipeline.plan.techniques, pipeline, {}, {}, seed_policy, {})
    loaded = load_recipe(save_recipe(recipe, tmp_path / "recipe.yaml"))
    section = loaded["techniques"][technique.name]
    assert section["version"] == technique.version
    assert section.get("simulated", False) == technique.simulated_by(config)
    settings = {f"{technique.name}.{key}": value for key, value in section["config"].items()}
    rebuilt = technique.config_from_params(settings)
    assert rebuilt == config


def check_its_recipe_reproduces_the_measured_images(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    pipeline, _ = configured(target, plan_params(technique, example), tmp_path)
    recipe = build_recipe(target, pipeline.plan.techniques, pipeline, {}, {}, {"seed": 0}, {})
    path = save_recipe(recipe, tmp_path / "recipe.yaml")
    assert torch.equal(images(apply_recipe(target, path), target), images(pipeline, target))


def check_applying_it_twice_gives_bit_identical_images_and_cost_keys(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    params = plan_params(technique, example)
    first, first_evaluator = configured(target, params, tmp_path)
    second, second_evaluator = configured(target, params, tmp_path)
    assert second.denoiser is not first.denoiser or not technique.modifies_model  # really applied twice
    assert torch.equal(images(first, target), images(second, target))
    assert first_evaluator.structure_key(first) == second_evaluator.structure_key(second)


def check_it_declares_what_changes_its_cost(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    """A cost key of plain, stable values that a costlier config changes, and so gets its own timing."""
    assert technique.cost_key is not None, f"{technique.name} declares no cost_key"
    config = technique.config_from_params(plan_params(technique, example))
    changed = technique.config_from_params(plan_params(technique, example, example.cost_change))
    settings = technique.cost_settings(config)
    assert json.loads(json.dumps(settings, sort_keys=True)) == to_plain(settings)  # plain, stable values
    assert settings == technique.cost_settings(technique.config_from_params(plan_params(technique, example)))
    assert technique.cost_settings(changed) != settings

    key = sampled_key(target, plan_params(technique, example), tmp_path)
    assert json.loads(key)["techniques"].get(technique.name, {}) == to_plain(settings)
    assert sampled_key(target, plan_params(technique, example, example.cost_change), tmp_path) != key


def check_settings_that_leave_the_cost_alone_share_one_timing(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    if example.same_cost_change is None:
        return
    same = plan_params(technique, example, example.same_cost_change)
    assert technique.config_from_params(same) != technique.config_from_params(plan_params(technique, example))
    assert sampled_key(target, same, tmp_path) == sampled_key(target, plan_params(technique, example), tmp_path)


def check_a_model_reused_from_the_evaluators_cache_keeps_its_cost_key(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    if not technique.modifies_model:
        return
    evaluator = fresh_evaluator(target, tmp_path)
    candidate = Candidate.from_params(plan_params(technique, example))
    first, again = evaluator.configured_pipeline(candidate), evaluator.configured_pipeline(candidate)
    assert again.denoiser is first.denoiser  # not modified a second time
    assert [step[0].name for step in again.plan.techniques] == [step[0].name for step in first.plan.techniques]
    images(first, target)
    images(again, target)
    assert evaluator.structure_key(again) == evaluator.structure_key(first)


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(child._forward_pre_hooks) + len(child._forward_hooks) for child in module.modules())


def _decode_modes(vae: torch.nn.Module) -> tuple:
    return getattr(vae, "use_tiling", None), getattr(vae, "use_slicing", None)


def check_it_leaves_the_targets_own_model_untouched(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    unet, vae = target.denoiser, target.vae
    weights = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    weights_hash, hooks = hash_weights(unet), _hook_count(unet)
    vae_state = (hash_weights(vae), _hook_count(vae), _decode_modes(vae)) if vae is not None else None
    scheduler_config = dict(target.scheduler_config)

    pipeline, _ = configured(target, plan_params(technique, example), tmp_path)
    images(pipeline, target)

    assert target.denoiser is unet and target.vae is vae
    assert unet.state_dict().keys() == weights.keys()
    assert all(torch.equal(unet.state_dict()[name], tensor) for name, tensor in weights.items())
    assert hash_weights(unet) == weights_hash
    assert modules_hash(unet, target.modules) == target.content_hash  # the VAE and text encoders too
    assert _hook_count(unet) == hooks
    if vae is not None:  # its weights, hooks and decode modes (tiling, slicing)
        assert (hash_weights(vae), _hook_count(vae), _decode_modes(vae)) == vae_state
    assert not hasattr(unet, "autoaccel_quantization")
    assert dict(target.scheduler_config) == scheduler_config


def check_a_technique_that_trains_declares_its_work(
    technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path
) -> None:
    """A technique that trains (it declares a training cap, ``max_minutes_param``) tells the search's estimate what
    its trials train (``search_work``); what it declares is non-negative rows, its shared parts named."""
    if technique.max_minutes_param is None and technique.search_work is None:
        return
    assert technique.search_work is not None, f"{technique.name} trains but declares no search_work"
    config = technique.config_from_params(plan_params(technique, example))
    work = technique.search_work(config, target, float(SAMPLING_STEPS))
    parts = [work, *work.shared.values()]
    assert all(isinstance(part, SearchWork) for part in parts)
    assert all(part.shared == {} or part is work for part in parts)  # shared work is made once: nothing nested
    values = [getattr(part, name) for part in parts for name in ("trained", "teacher", "calibration", "decoded")]
    assert all(value >= 0 for value in values), f"{technique.name} declares negative work"


TARGET_CHECKS = (
    check_config_round_trips_through_a_recipe_file,
    check_its_recipe_reproduces_the_measured_images,
    check_applying_it_twice_gives_bit_identical_images_and_cost_keys,
    check_it_declares_what_changes_its_cost,
    check_settings_that_leave_the_cost_alone_share_one_timing,
    check_a_model_reused_from_the_evaluators_cache_keeps_its_cost_key,
    check_it_leaves_the_targets_own_model_untouched,
    check_a_technique_that_trains_declares_its_work,
)


def check_technique(technique: Technique, example: TechniqueExample, target: Target, tmp_path: Path) -> None:
    """Every check of the contract, each in its own folder under ``tmp_path``."""
    check_example_is_valid_and_not_the_default(technique, example)
    for check in TARGET_CHECKS:
        folder = Path(tmp_path) / check.__name__
        folder.mkdir(parents=True, exist_ok=True)
        check(technique, example, target, folder)
