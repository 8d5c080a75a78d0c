"""Weights a technique produced travel with recipes: a recipe copied elsewhere with its artifacts folder applies
from them on a fresh load of the base model, never training or calibrating again, and reproduces the scored
images bit for bit; a changed or missing artifact is refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from autoaccel.config import compose_config
from autoaccel.errors import RecipeError
from autoaccel.pipeline.seeds import sample_in_chunks
from autoaccel.plan.candidate import Candidate
from autoaccel.plan.recipe import apply_recipe, build_recipe, save_recipe
from autoaccel.util.artifacts import ARTIFACTS_DIR

SPACE = """
techniques: [pruning, quantization, solver, timesteps]
fixed: {timesteps.family: uniform_trailing, solver.name: dpmsolver++, solver.order: 2}
dimensions:
  timesteps.steps: {type: int, low: 3, high: 5}
"""
PRUNED = {
    "pruning.ratio": 0.4,
    "pruning.importance": "taylor",
    "pruning.recovery_steps": 3,
    "quantization.enabled": False,
    "timesteps.steps": 4,
}
PRUNED_AND_QUANTIZED = {
    **PRUNED,
    "quantization.enabled": True,
    "quantization.weight_bits": 6,
    "quantization.activation_bits": 8,
    "quantization.calibration_samples": 4,
}


@pytest.fixture(scope="module")
def context(tiny_pipeline_dir, shared_cache_dir, tmp_path_factory):
    from autoaccel.search.run import prepare_run

    folder = tmp_path_factory.mktemp("artifacts-run")
    space = folder / "space.yaml"
    space.write_text(SPACE)
    overrides = [
        "target=pipeline",
        f"target.path={tiny_pipeline_dir}",
        "target.device=cpu",
        f"report.dir={folder / 'reports'}",
        f"cache_dir={shared_cache_dir}",
        f"space={space}",
        "quality.samples=16",
        "quality.chunk_size=16",
        "cost.batch_size=4",
        "cost.warmup=0",
        "cost.repeats=1",
        "quiet=true",
    ]
    return prepare_run(compose_config(overrides))


def candidate_of(context, params: dict) -> Candidate:
    return Candidate.from_params({**context.space.fixed, **params})


_SCORED: dict[tuple, tuple[Path, torch.Tensor]] = {}


def scored_recipe(context, params: dict) -> tuple[Path, torch.Tensor]:
    """Evaluates ``params`` as a search does, writes its recipe as the report does; the recipe and the images the
    evaluator scored (once per plan in this module: tests only copy the run's files)."""
    key = (id(context), *sorted(params.items()))
    if key not in _SCORED:
        _SCORED[key] = _score_and_write(context, params)
    return _SCORED[key]


def _score_and_write(context, params: dict) -> tuple[Path, torch.Tensor]:
    from autoaccel.plan.apply import build_pipeline
    from autoaccel.report.build import trial_artifacts

    candidate = candidate_of(context, params)
    measurement = context.evaluator.evaluate(candidate)
    assert measurement.ok, measurement.failure
    scored = sample_in_chunks(
        context.evaluator.configured_pipeline(candidate), context.judge.seeds, context.judge.chunk_size
    )
    plan = candidate.plan(context.space.techniques)
    pipeline = build_pipeline(context.target, plan.sampler_steps)
    recipes = context.run_dir / "recipes"
    artifacts = trial_artifacts(context.run_dir, measurement.details.get("artifacts"), recipes)
    policy = {"seed": context.judge.seeds.seed, "samples": 16, "chunk_size": 16}
    recipe = build_recipe(context.target, plan, pipeline, {}, {}, policy, {}, artifacts)
    return save_recipe(recipe, recipes / f"{candidate.key}.yaml"), scored


def fresh_checkout(run_dir: Path, recipe: Path, destination: Path) -> Path:
    """The recipes and artifacts folders alone, copied elsewhere: the recipe's path there."""
    for folder in ("recipes", ARTIFACTS_DIR):
        shutil.copytree(run_dir / folder, destination / folder)
    return destination / "recipes" / recipe.name


@pytest.fixture
def no_training(monkeypatch):
    """Recovery distillation, Taylor calibration and quantization calibration all fail if anything calls them."""
    import autoaccel.techniques.pruning as pruning
    import autoaccel.techniques.quantization as quantization

    def refuse(*args, **kwargs):
        raise AssertionError("applying a recipe with artifacts must not train or calibrate")

    for module, name in ((pruning, "recover"), (pruning, "_teacher_batch"), (quantization, "trajectory_inputs")):
        monkeypatch.setattr(module, name, refuse)


def fresh_model(tiny_pipeline_dir):
    from diffusers import DDPMPipeline

    return DDPMPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.mark.slow
@pytest.mark.parametrize("params", [PRUNED, PRUNED_AND_QUANTIZED], ids=["pruned", "pruned+quantized"])
def test_a_copied_recipe_applies_from_its_artifacts_without_training(
    params, context, tiny_pipeline_dir, tmp_path, request
):
    recipe, scored = scored_recipe(context, params)
    sections = yaml.safe_load(recipe.read_text())["techniques"]
    named = [name for name, section in sections.items() if "artifact" in section]
    assert named == (["pruning", "quantization"] if params["quantization.enabled"] else ["pruning"])
    assert all(sections[name]["artifact"]["path"].startswith("../artifacts/") for name in named)
    assert not any("reapplied" in section for section in sections.values())

    copied = fresh_checkout(context.run_dir, recipe, tmp_path / "elsewhere")
    request.getfixturevalue("no_training")
    fast = apply_recipe(fresh_model(tiny_pipeline_dir), copied)
    assert torch.equal(sample_in_chunks(fast, context.judge.seeds, context.judge.chunk_size), scored)


@pytest.mark.slow
def test_apply_writes_images_from_a_copied_recipe_without_training(
    context, tiny_pipeline_dir, tmp_path, no_training, capsys
):
    from autoaccel.cli.apply_command import write_images

    recipe, _ = scored_recipe(context, PRUNED)  # the evaluator's cached model: nothing is trained here
    copied = fresh_checkout(context.run_dir, recipe, tmp_path / "elsewhere")
    paths = write_images(copied, tmp_path / "out", 4, None, str(tiny_pipeline_dir), "cpu")
    assert len(paths) == 5 and "re-runs" not in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_a_changed_or_missing_artifact_is_refused_in_one_line(
    damage, context, tiny_pipeline_dir, tmp_path, no_training
):
    recipe, _ = scored_recipe(context, PRUNED)
    copied = fresh_checkout(context.run_dir, recipe, tmp_path / "elsewhere")
    reference = yaml.safe_load(copied.read_text())["techniques"]["pruning"]["artifact"]
    artifact = (copied.parent / reference["path"]).resolve()
    if damage == "missing":
        artifact.unlink()
    else:
        data = bytearray(artifact.read_bytes())
        data[-1] ^= 0x01  # one byte of the last tensor
        artifact.write_bytes(bytes(data))
    with pytest.raises(RecipeError) as info:
        apply_recipe(fresh_model(tiny_pipeline_dir), copied)
    message = str(info.value)
    assert "\n" not in message and artifact.name in message
    assert ("does not exist" if damage == "missing" else "hashes to") in message


@pytest.mark.slow
def test_a_recipe_without_an_artifact_says_it_re_runs_recovery(context, tiny_pipeline_dir, tmp_path):
    recipe, scored = scored_recipe(context, PRUNED)
    written = yaml.safe_load(recipe.read_text())
    del written["techniques"]["pruning"]["artifact"]  # as an older autoaccel, or a run without a store, wrote it
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(written, sort_keys=False))
    said: list[str] = []
    fast = apply_recipe(fresh_model(tiny_pipeline_dir), old, log=said.append)
    assert said == [
        "pruning: no artifact, so applying re-runs pruning and its recovery distillation (3 steps) from the base model"
    ]
    assert torch.equal(sample_in_chunks(fast, context.judge.seeds, context.judge.chunk_size), scored)

    plan = candidate_of(context, PRUNED).plan(context.space.techniques)
    pipeline = context.evaluator.configured_pipeline(candidate_of(context, PRUNED))
    without_store = build_recipe(context.target, plan, pipeline, {}, {}, {}, {})
    assert "recovery distillation (3 steps)" in without_store["techniques"]["pruning"]["reapplied"]


# --- artifacts from a recipe someone else wrote ------------------------------------------------------------------


def _student_recipe(tiny_pipeline_dir: Path, run: Path, sampler: dict) -> Path:
    """A recipe applying a consistency student from an artifact (the tiny model's own weights) whose metadata
    prescribes ``sampler``: what anyone can write and hash themself. Returns the recipe file in ``run/recipes``."""
    import json

    from autoaccel.targets.loader import load_pipeline_folder
    from autoaccel.techniques.distillation import DISTILLATION
    from autoaccel.util.artifacts import Artifact, ArtifactStore

    target = load_pipeline_folder(tiny_pipeline_dir, device="cpu")
    artifact = Artifact(dict(target.denoiser.state_dict()), {"prescribed_sampler": json.dumps(sampler)})
    sha = ArtifactStore(run / ARTIFACTS_DIR).put(artifact)
    recipe = {
        "autoaccel_recipe": 1,
        "base_model": {"name": "tiny", "path": str(tiny_pipeline_dir), "content_hash": target.content_hash},
        "techniques": {
            "distillation": {
                "version": DISTILLATION.version,
                "config": {"method": "consistency", "steps": 2},
                "artifact": {"path": f"../{ARTIFACTS_DIR}/{sha}.safetensors", "sha256": sha},
            }
        },
        "scheduler": {"class": "DDPMScheduler", "config": {"num_train_timesteps": 100}},
        "timesteps": [99, 49],
        "guidance_scale": 1.0,
        "null_class": 3,
        "seed_policy": {"seed": 0, "samples": 4, "chunk_size": 4},
    }
    (run / "recipes").mkdir(parents=True, exist_ok=True)
    path = run / "recipes" / "student.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _apply_refused(capsys, recipe: Path, out: Path, *fragments: str) -> str:
    from autoaccel.cli.main import main

    assert main(["apply", str(recipe), "--out", str(out), "--n", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoaccel apply: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()
    return lines[0]


STUDENT_SAMPLER = {"scheduler_class": "LCMScheduler", "timesteps": [99, 49], "guidance_scale": 1.0, "settings": {}}


def test_a_student_artifact_prescribing_an_allowed_sampler_applies(capsys, tiny_pipeline_dir, tmp_path):
    from autoaccel.cli.main import main

    recipe = _student_recipe(tiny_pipeline_dir, tmp_path / "run", STUDENT_SAMPLER)
    assert main(["apply", str(recipe), "--out", str(tmp_path / "out"), "--n", "2"]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["00000.png", "00001.png", "grid.png"]


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        (
            {
                "scheduler_class": "UNet2DModel",
                "settings": {"block_out_channels": [1024, 2048, 4096, 4096], "layers_per_block": 6},
            },
            ["prescribed_sampler.scheduler_class='UNet2DModel' is not allowed", "LCMScheduler"],
        ),
        ({"scheduler_class": "utils"}, ["prescribed_sampler.scheduler_class='utils' is not allowed"]),
        (
            {"settings": {"num_train_timesteps": 10**7}},
            ["prescribed_sampler.settings num_train_timesteps=10000000", "[1, 1000000]"],
        ),
        ({"settings": ["num_train_timesteps", 100]}, ["prescribed_sampler.settings must be a mapping"]),
        ({"timesteps": list(range(10**5, 0, -1))}, ["prescribed_sampler.timesteps=", "ints in [0, 99]"]),
        ({"timesteps": [50, 70]}, ["prescribed_sampler.timesteps=[50, 70]", "strictly decreasing"]),
        ({"guidance_scale": 1e300}, ["prescribed_sampler.guidance_scale=1e+300"]),
    ],
)
def test_a_student_artifact_prescribing_what_no_plan_runs_is_refused_unbuilt(
    capsys, refuse_large_unets, tiny_pipeline_dir, tmp_path, changes, fragments
):
    recipe = _student_recipe(tiny_pipeline_dir, tmp_path / "run", {**STUDENT_SAMPLER, **changes})
    _apply_refused(capsys, recipe, tmp_path / "out", "artifact ", *fragments)


@pytest.mark.parametrize(
    "path", ["../../../../x.safetensors", "../artifacts/../../elsewhere/{sha}.safetensors", "{sha}.safetensors"]
)
def test_an_artifact_outside_the_recipes_artifacts_folder_is_refused_unread(capsys, tiny_pipeline_dir, tmp_path, path):
    recipe = _student_recipe(tiny_pipeline_dir, tmp_path / "run", STUDENT_SAMPLER)
    written = yaml.safe_load(recipe.read_text())
    reference = written["techniques"]["distillation"]["artifact"]
    reference["path"] = path.format(sha=reference["sha256"])
    recipe.write_text(yaml.safe_dump(written, sort_keys=False))
    outside = (recipe.parent / reference["path"]).resolve()
    messages = []
    for exists in (False, True):  # the same answer whether a file is there or not: nothing is learnt about it
        if exists:
            outside.parent.mkdir(parents=True, exist_ok=True)
            outside.write_bytes(b"someone else's file")
        messages.append(_apply_refused(capsys, recipe, tmp_path / "out", "artifact.path=", "../artifacts/"))
    assert messages[0] == messages[1]
    assert "does not exist" not in messages[0] and "hashes to" not in messages[0]


def test_an_artifact_that_is_not_a_regular_file_is_refused_unopened(capsys, tiny_pipeline_dir, tmp_path):
    import os

    recipe = _student_recipe(tiny_pipeline_dir, tmp_path / "run", STUDENT_SAMPLER)
    artifact = next((tmp_path / "run" / ARTIFACTS_DIR).iterdir())
    artifact.unlink()
    os.mkfifo(artifact)  # opening it to read would wait for a writer forever
    line = _apply_refused(capsys, recipe, tmp_path / "out", artifact.name, "is not a regular file")
    assert "does not exist" not in line


def test_an_artifact_is_hashed_before_it_is_read_whole(tmp_path):
    import tracemalloc

    from autoaccel.util.artifacts import read_artifact

    large = tmp_path / f"{'0' * 64}.safetensors"
    with large.open("wb") as file:
        file.truncate(256 * 2**20)  # 256 MB of zeros, sparse on disk: not the artifact the recipe names
    tracemalloc.start()
    try:
        with pytest.raises(RecipeError, match="hashes to"):
            read_artifact(large, "0" * 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB held while hashing a file of 256 MB"
