"""The technique contract (``autoaccel.testing.technique_contract``) for every registered technique, on the tiny
pipeline: its config survives a recipe, applying it is deterministic, it says what of its config changes
deployment cost (so latency is cached correctly), and it never touches the target's own model. A new technique is
covered as soon as it registers, and must add an example config below."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoaccel.targets.base import Target
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.base import Technique, registered_techniques
from autoaccel.testing import technique_contract as contract
from autoaccel.testing.pipelines import build_tiny_pipeline
from autoaccel.testing.technique_contract import TechniqueExample

TECHNIQUES = registered_techniques()

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
    "runtime": {"dtype": "bfloat16", "attention": "math"},
    "decoder": {"kind": "tiny", "iterations": 3, "data_samples": 8, "batch_size": 4, "width": 8, "slicing": True},
}
# Techniques that need a latent model (a VAE): checked on a tiny Stable Diffusion pipeline instead.
LATENT_ONLY = {"decoder"}
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
    "runtime": {"channels_last": True},
    "decoder": {"width": 4},
}
# Changes that leave the cost as it is, where a technique has some: such plans share one latency measurement.
SAME_COST_CHANGES: dict[str, dict[str, Any]] = {
    "pruning": {"importance": "magnitude", "seed": 4},
    "quantization": {"seed": 2, "calibration_samples": 5},
    "solver": {"guidance": 2.0, "order": 2},
    "timesteps": {"family": "karras", "rho": 7.0, "gaps": []},
    "distillation": {"seed": 2, "iterations": 3},
    "assignment": {"where": "first"},
    "decoder": {"seed": 1, "iterations": 2},
}


def by_name(technique: Technique) -> str:
    return technique.name


@pytest.fixture(scope="module")
def pixel_target(tiny_pipeline_dir) -> Target:
    return load_pipeline_folder(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def latent_target(tmp_path_factory) -> Target:
    return load_pipeline_folder(build_tiny_pipeline("sd", tmp_path_factory.mktemp("contract") / "sd"))


@pytest.fixture
def target(request) -> Target:
    """The tiny pixel pipeline, or a tiny latent one for the techniques that need a VAE."""
    technique = getattr(request.node, "callspec", None) and request.node.callspec.params.get("technique")
    latent = technique is not None and technique.name in LATENT_ONLY
    return request.getfixturevalue("latent_target" if latent else "pixel_target")


def example(name: str) -> TechniqueExample:
    """The technique's example; a registered technique without one fails its contract."""
    if name not in EXAMPLES or name not in COST_CHANGES:
        pytest.fail(f"technique {name!r} has no example: add one to EXAMPLES and COST_CHANGES in {Path(__file__).name}")
    return TechniqueExample(EXAMPLES[name], COST_CHANGES[name], SAME_COST_CHANGES.get(name), PARTNERS.get(name, {}))


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_the_example_is_valid_and_not_the_default(technique):
    contract.check_example_is_valid_and_not_the_default(technique, example(technique.name))


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_config_round_trips_through_a_recipe_file(technique, target, tmp_path):
    contract.check_config_round_trips_through_a_recipe_file(technique, example(technique.name), target, tmp_path)


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_its_recipe_reproduces_the_measured_images(technique, target, tmp_path):
    contract.check_its_recipe_reproduces_the_measured_images(technique, example(technique.name), target, tmp_path)


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_applying_it_twice_gives_bit_identical_images_and_cost_keys(technique, target, tmp_path):
    contract.check_applying_it_twice_gives_bit_identical_images_and_cost_keys(
        technique, example(technique.name), target, tmp_path
    )


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_it_declares_what_changes_its_cost_and_a_costlier_config_gets_its_own_timing(technique, target, tmp_path):
    contract.check_it_declares_what_changes_its_cost(technique, example(technique.name), target, tmp_path)


@pytest.mark.parametrize("technique", [t for t in TECHNIQUES if t.name in SAME_COST_CHANGES], ids=by_name)
def test_settings_that_leave_the_cost_alone_share_one_timing(technique, target, tmp_path):
    contract.check_settings_that_leave_the_cost_alone_share_one_timing(
        technique, example(technique.name), target, tmp_path
    )


@pytest.mark.parametrize("technique", [t for t in TECHNIQUES if t.modifies_model], ids=by_name)
def test_a_model_reused_from_the_evaluators_cache_keeps_its_cost_key(technique, target, tmp_path):
    contract.check_a_model_reused_from_the_evaluators_cache_keeps_its_cost_key(
        technique, example(technique.name), target, tmp_path
    )


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_it_leaves_the_targets_own_model_untouched(technique, target, tmp_path):
    contract.check_it_leaves_the_targets_own_model_untouched(technique, example(technique.name), target, tmp_path)


def test_an_extension_runs_the_whole_contract_with_one_call(target, tmp_path):
    """What a technique written outside autoaccel calls: every check at once, passing for a sound technique and
    failing when its example's cost change does not change the cost it declares."""
    timesteps = next(technique for technique in TECHNIQUES if technique.name == "timesteps")
    contract.check_technique(timesteps, example("timesteps"), target, tmp_path / "sound")
    unsound = TechniqueExample(EXAMPLES["timesteps"], SAME_COST_CHANGES["timesteps"])
    with pytest.raises(AssertionError):
        contract.check_technique(timesteps, unsound, target, tmp_path / "unsound")


@pytest.mark.parametrize("technique", TECHNIQUES, ids=by_name)
def test_a_technique_that_trains_declares_its_work(technique, target, tmp_path):
    contract.check_a_technique_that_trains_declares_its_work(technique, example(technique.name), target, tmp_path)
