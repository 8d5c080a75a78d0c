"""Structural pruning: channels really go, the original model is untouched, results are deterministic, and a
recipe with pruning reproduces its images."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from autoaccel.config import compose_config
from autoaccel.errors import ConfigError
from autoaccel.targets.base import hash_weights
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.pruning import PruningConfig, prune_unet


@pytest.fixture
def tiny_target(tiny_pipeline_dir):
    return load_pipeline_folder(tiny_pipeline_dir)


def _parameters(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _inputs(unet):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, 1, 8, 8, generator=generator), torch.tensor([90, 60, 30, 5]), torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "random"])
def test_pruning_removes_channels_and_leaves_the_original_alone(tiny_target, importance):
    before = hash_weights(tiny_target.denoiser)
    pruned = prune_unet(tiny_target.denoiser, PruningConfig(ratio=0.5, importance=importance), tiny_target)
    assert _parameters(pruned) < 0.8 * _parameters(tiny_target.denoiser)
    sample, timestep, labels = _inputs(pruned)
    assert pruned(sample, timestep, class_labels=labels).sample.shape == sample.shape
    assert hash_weights(tiny_target.denoiser) == before


@pytest.mark.slow
@pytest.mark.integration
def test_pruning_is_deterministic(tiny_target):
    config = PruningConfig(ratio=0.4, importance="taylor", recovery_steps=5)
    first = prune_unet(tiny_target.denoiser, config, tiny_target)
    second = prune_unet(tiny_target.denoiser, config, tiny_target)
    assert hash_weights(first) == hash_weights(second)


@pytest.mark.slow
@pytest.mark.integration
def test_recovery_pulls_the_pruned_model_towards_the_teacher(tiny_target):
    sample, timestep, labels = _inputs(tiny_target.denoiser)
    wanted = tiny_target.denoiser(sample, timestep, class_labels=labels).sample
    errors = {}
    for steps in (0, 40):
        pruned = prune_unet(tiny_target.denoiser, PruningConfig(ratio=0.5, recovery_steps=steps), tiny_target)
        errors[steps] = (pruned(sample, timestep, class_labels=labels).sample - wanted).pow(2).mean().item()
    assert errors[40] < errors[0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ratio": 0.95}, "pruning.ratio"),
        ({"importance": "l1"}, "pruning.importance"),
        ({"recovery_steps": -1}, "pruning.recovery_steps"),
        ({"ratio": 0.5, "up": 1.9}, "pruning.up"),
    ],
)
def test_bad_pruning_configs_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        PruningConfig(**changes)


SMALL_PRUNED_SPACE = """
techniques: [pruning, solver, timesteps]
fixed: {timesteps.family: uniform_trailing, solver.name: dpmsolver++, solver.order: 2, solver.final_sigma: zero}
dimensions:
  pruning.ratio: {type: float, low: 0.0, high: 0.6}
  pruning.importance: {type: categorical, choices: [magnitude, taylor]}
  pruning.recovery_steps: {type: categorical, choices: [0, 10]}
  timesteps.steps: {type: int, low: 3, high: 5}
  solver.guidance: {type: float, low: 1.0, high: 2.0, requires: guidance}
"""


def test_bundled_pruned_sampler_space_loads():
    from autoaccel.space.spaces import load_space

    space = load_space("pruned_sampler")
    assert space.techniques[0] == "pruning" and "pruning.recovery_steps" in space.names


@pytest.mark.slow
@pytest.mark.integration
def test_search_with_pruning_records_sizes_and_recipes_reproduce_pruned_images(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run

    space_file = tmp_path / "pruned.yaml"
    space_file.write_text(SMALL_PRUNED_SPACE)
    index = search(
        compose_config([*fast_overrides, f"space={space_file}", "budget.trials=7", "seed=4", "study_name=pruned"]),
        log=lambda message: None,
    )
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    base = complete[complete["param.pruning.ratio"] == 0.0]["params"].iloc[0]
    pruned = complete[complete["param.pruning.ratio"] > 0.1]
    assert not pruned.empty and (pruned["params"] < base).all()
    assert (complete["model_bytes"] == complete["params"] * 4).all()
    context = open_run(index.parent)
    front = pd.read_csv(index.parent / "pareto.csv")
    for _, row in front.iterrows():
        recipe = index.parent / row["recipe"]
        fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), recipe)
        assert _parameters(fast.unet) == row["params"]
        # the grid in the report was sampled through the same recipe on the run's seeds
        images = sample_in_chunks(fast, context.judge.seeds.head(8), context.judge.chunk_size)
        again = sample_in_chunks(apply_recipe(context.target, recipe), context.judge.seeds.head(8), 48)
        assert torch.equal(images, again)
