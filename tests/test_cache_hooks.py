"""diffusers' transformer caches driven by autoaccel's loop, on tiny transformers: they skip work and count it,
their thresholds come from a calibration run at the plan's schedule (so none is inert), runs are reproducible,
the uncached model stays unhooked, and a search over them gives recipes that re-apply bit for bit."""

from __future__ import annotations

import pytest
import torch
import yaml

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.call_control import call_controller
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.base import target_limits
from autoaccel.techniques.caching import CachingConfig, cache_methods
from autoaccel.techniques.caching.hooks import HookMethod
from autoaccel.techniques.caching.method import ordered_methods
from autoaccel.testing.pipelines import build_tiny_pipeline
from tests.test_caching import _cached_pipeline, _sample

HOOK_METHODS = tuple(method.name for method in ordered_methods() if isinstance(method, HookMethod))
HOOK_KINDS = ("dit", "pixart_alpha", "sana")  # Sana: block outputs described to diffusers by its layout

STEPS = 12
SETTINGS = {"first_block": {}, "mag": {"interval": 3, "warmup": 2}, "taylorseer": {"interval": 3, "warmup": 0}}
SETTINGS["pab"] = {"interval": 2, "warmup": 0}  # the first call runs in full all the same


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hook_targets")
    return {kind: load_pipeline_folder(build_tiny_pipeline(kind, root / kind)) for kind in HOOK_KINDS}


@pytest.mark.parametrize("kind", HOOK_KINDS)
@pytest.mark.parametrize("method", HOOK_METHODS)
def test_a_hook_cache_skips_work_counts_it_and_repeats_its_images(targets, kind, method):
    target = targets[kind]
    uncached = _sample(_cached_pipeline(target, None, STEPS), target)
    pipeline = _cached_pipeline(target, CachingConfig(method, **SETTINGS[method]), STEPS)
    images = _sample(pipeline, target)
    calls = pipeline.model_calls
    assert 0 < pipeline.denoiser_calls < calls  # some calls ran only part of the model: their share counts
    assert torch.isfinite(images).all() and not torch.equal(images, uncached)
    assert torch.equal(_sample(pipeline, target), images)  # each run starts from fresh hook state
    # the model's own blocks carry no hooks
    assert torch.equal(_sample(_cached_pipeline(target, None, STEPS), target), uncached)
    assert not any(hasattr(module, "_diffusers_hook") for module in target.denoiser.modules())


@pytest.mark.parametrize("method", ["first_block", "mag"])
def test_thresholds_come_from_the_calibration_run_at_the_plans_schedule(targets, method):
    """A raw threshold of 0 (below every recorded difference) caches nothing; any strength caches some calls
    and keeps some full; a stronger one caches at least as much; a new step count is calibrated anew."""
    target = targets["dit"]
    settings = {key: value for key, value in SETTINGS[method].items() if key != "warmup"}
    inert = _cached_pipeline(target, CachingConfig(method, threshold=0.0, **settings), STEPS)
    _sample(inert, target)
    assert inert.denoiser_calls == inert.model_calls
    shares = {}
    for strength in (0.1, 0.9):
        pipeline = _cached_pipeline(target, CachingConfig(method, strength=strength, **settings), STEPS)
        _sample(pipeline, target)
        cache = call_controller(pipeline.denoiser)
        calibration = cache.calibration(pipeline)
        assert calibration.calls == STEPS and len(calibration.first_block_changes) == STEPS - 1
        cheapest = cache.fixed_flops / cache.total_flops
        assert pipeline.model_calls * cheapest < pipeline.denoiser_calls < pipeline.model_calls
        shares[strength] = pipeline.denoiser_calls
        coarser = _cached_pipeline(target, CachingConfig(method, strength=strength, **settings), steps=6)
        coarser.denoiser = pipeline.denoiser  # the same cached model at another schedule
        _sample(coarser, target)
        assert cache.calibration(coarser).calls == 6
    assert shares[0.9] <= shares[0.1]


def test_models_the_hook_caches_cannot_run_are_refused_and_spaces_narrow_to_what_each_takes(targets, tmp_path):
    from autoaccel.space.spaces import load_space

    ddpm = load_pipeline_folder(build_tiny_pipeline("ddpm", tmp_path / "ddpm"))
    with pytest.raises(TechniqueError, match=r"caching\.method=mag .* not a transformer \(use caching\.method deep"):
        _cached_pipeline(ddpm, CachingConfig("mag"))
    with pytest.raises(ConfigError, match=r"caching\.strength=1\.5 .* \[0, 1\]"):
        CachingConfig("first_block", strength=1.5)
    with pytest.raises(ConfigError, match=r"caching\.threshold=-0\.1"):
        CachingConfig("first_block", threshold=-0.1)
    assert cache_methods(ddpm.denoiser) == ("none", "deep")
    assert cache_methods(targets["dit"].denoiser) == ("none", "deep", *HOOK_METHODS)
    # Sana's blocks are unknown to diffusers' block registry: its layout describes their outputs
    assert cache_methods(targets["sana"].denoiser) == ("none", "deep", *HOOK_METHODS)
    space = load_space("cached")
    methods = space.for_target(set(), **target_limits(ddpm)).dimension("caching.method").choices
    assert methods == ("none", "deep")
    with_hooks = load_space("cached").for_target(set(), **{**target_limits(targets["dit"]), "cache_depth_limit": 3})
    assert with_hooks.dimension("caching.method").choices == ("none", "deep", *HOOK_METHODS)


SMALL_HOOK_SPACE = """
name: small_hooks
techniques: [caching, solver, timesteps]
fixed:
  solver.name: unipc
dimensions:
  caching.method: {type: categorical, choices: [first_block, mag, taylorseer, pab]}
  caching.strength: {type: float, low: 0.2, high: 0.8, when: {caching.method: [first_block, mag]}}
  caching.interval: {type: int, low: 2, high: 3, when: {caching.method: [mag, taylorseer, pab]}}
  caching.warmup: {type: int, low: 1, high: 2, when: {caching.method: [mag, taylorseer, pab]}}
  timesteps.steps: {type: int, low: 6, high: 10}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_over_hook_caches_gives_recipes_that_reapply_bit_exactly(fast_overrides, targets, tmp_path):
    import pandas as pd
    from diffusers import DiTPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.config import compose_config
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run
    from tests.test_distillation import _candidate, _recipe_of

    folder = build_tiny_pipeline("dit", tmp_path / "dit")
    space_file = tmp_path / "hooks.yaml"
    space_file.write_text(SMALL_HOOK_SPACE)
    overrides = [*fast_overrides, f"target.path={folder}", f"space={space_file}", "budget.trials=4", "seed=3"]
    index = search(compose_config([*overrides, "study_name=hooks"]), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == len(trials), trials[["state", "failure"]].to_string()
    assert (complete["nfe"] < complete["denoiser_calls"]).all()
    context = open_run(index.parent)
    seeds = context.judge.seeds.head(6)
    for trial in complete["trial"][:3]:
        recipe = _recipe_of(context, int(trial))
        section = yaml.safe_load(recipe.read_text())["techniques"]["caching"]
        assert "cache calibration" in section["reapplied"]
        fast = apply_recipe(DiTPipeline.from_pretrained(folder), recipe)
        scored = context.evaluator.configured_pipeline(_candidate(context, int(trial)))
        assert torch.equal(sample_in_chunks(fast, seeds, 48), sample_in_chunks(scored, seeds, 48))
        # the recipe records the calibration it was scored with: applying computed the same values
        recorded = section["calibration"]
        assert recorded["calls"] == len(fast.scheduler.timesteps)
        assert recorded == call_controller(fast.denoiser).describe(fast)
