"""Recipe loading and applying (autoaccel/plan/recipe.py): every bad recipe is a RecipeError, nothing is executed."""

from __future__ import annotations

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoaccel.errors import RecipeError
from autoaccel.pipeline.sampling import SamplerPipeline
from autoaccel.plan.recipe import ALLOWED_SCHEDULERS, REQUIRED_KEYS, apply_recipe, load_recipe
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.solver import SolverConfig, build_scheduler
from autoaccel.testing.pipelines import build_tiny_pipeline_folder


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    folder = build_tiny_pipeline_folder(tmp_path_factory.mktemp("recipe") / "tiny")
    return load_pipeline_folder(folder, device="cpu")


def _recipe(content_hash: str = "0" * 64, scheduler_config: dict | None = None, **changes) -> dict:
    recipe = {
        "autoaccel_recipe": 1,
        "base_model": {"name": "tiny", "path": "/models/tiny", "content_hash": content_hash},
        "techniques": {"solver": {"version": 1, "config": {"name": "unipc"}}},
        "scheduler": {"class": "UniPCMultistepScheduler", "config": scheduler_config or {"num_train_timesteps": 100}},
        "timesteps": [99, 66, 33, 10],
        "guidance_scale": 1.0,
        "null_class": 3,
        "seed_policy": {"seed": 0, "samples": 8},
    }
    recipe.update(changes)
    return recipe


def _write(tmp_path, recipe, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_valid_recipe_loads_unchanged(tmp_path):
    recipe = _recipe()
    assert load_recipe(_write(tmp_path, recipe)) == recipe


@pytest.mark.parametrize("class_name", ["os.system", "EulerAncestralDiscreteScheduler", "DiffusionPipeline", "", None])
def test_scheduler_class_outside_the_allow_list_is_refused(tmp_path, class_name):
    path = _write(tmp_path, _recipe(scheduler={"class": class_name, "config": {}}))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert f"scheduler class {class_name!r} is not allowed" in message
    assert f"allowed: {sorted(ALLOWED_SCHEDULERS)}" in message


def test_allow_list_holds_every_solver_class_and_no_stochastic_ancestral_one():
    assert {"DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"} <= ALLOWED_SCHEDULERS
    assert "EulerAncestralDiscreteScheduler" not in ALLOWED_SCHEDULERS
    assert all(name.endswith("Scheduler") for name in ALLOWED_SCHEDULERS)


@pytest.mark.parametrize(
    "timesteps",
    [
        [10, 20, 30],  # increasing
        [50, 50, 10],  # repeated
        [99, 10, 20],  # not monotone
        [5, -1],  # negative
        [-1],
        [99.0, 50.0],  # floats
        [99, "50"],  # a string
        [True, False],  # booleans are not steps
        [],
        "99, 50",
        None,
        {"first": 99},
    ],
)
def test_bad_timesteps_are_refused(tmp_path, timesteps):
    path = _write(tmp_path, _recipe(timesteps=timesteps))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert f"timesteps={timesteps!r}" in str(info.value)
    assert "strictly decreasing list of ints in [0, " in str(info.value)


def test_a_schedule_longer_than_any_sampler_runs_is_refused_unprobed(tmp_path, monkeypatch):
    import autoaccel.plan.recipe
    from autoaccel.schedules.schedulers import MAX_INFERENCE_STEPS

    def refuse(*args, **kwargs):
        raise AssertionError("a schedule of absurd length must be refused before the scheduler runs it")

    monkeypatch.setattr(autoaccel.plan.recipe, "_probe_scheduler", refuse)
    timesteps = list(range(MAX_INFERENCE_STEPS, -1, -1))  # one more step than any file may ask for
    recipe = _recipe(scheduler_config={"num_train_timesteps": 100_000}, timesteps=timesteps)
    with pytest.raises(
        RecipeError, match=f"strictly decreasing list of ints in \\[0, 99999\\], at most {MAX_INFERENCE_STEPS}"
    ):
        load_recipe(_write(tmp_path, recipe))


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_key_is_named(tmp_path, key):
    recipe = _recipe()
    del recipe[key]
    with pytest.raises(RecipeError, match=f"lacks {key}"):
        load_recipe(_write(tmp_path, recipe))


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_other_format_versions_are_refused(tmp_path, version):
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, _recipe(autoaccel_recipe=version)))
    assert f"format {version!r} is not supported" in str(info.value)
    assert "reads format 1" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"guidance_scale": 0.5}, "guidance_scale=0.5"),
        ({"guidance_scale": "2"}, "guidance_scale='2'"),
        ({"guidance_scale": True}, "guidance_scale=True"),
        ({"null_class": "3"}, "null_class='3'"),
        ({"null_class": 2.0}, "null_class=2.0"),
        ({"scheduler": {"class": "UniPCMultistepScheduler", "config": "fast"}}, "scheduler.config"),
        ({"scheduler": "UniPCMultistepScheduler"}, "'UniPCMultistepScheduler' is not allowed"),
    ],
)
def test_other_bad_values_are_named(tmp_path, changes, fragment):
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, _recipe(**changes)))
    assert fragment in str(info.value)


def test_nan_guidance_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="guidance_scale"):
        load_recipe(_write(tmp_path, _recipe(guidance_scale=float("nan"))))


def test_unhashable_scheduler_class_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="scheduler class"):
        load_recipe(_write(tmp_path, _recipe(scheduler={"class": ["os", "system"], "config": {}})))


def test_timesteps_beyond_the_trained_range_are_refused(tmp_path):
    with pytest.raises(RecipeError, match="5000"):
        load_recipe(_write(tmp_path, _recipe(timesteps=[5000, 50, 10])))


def test_missing_file_and_non_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(_write(tmp_path, "- 1\n- 2\n", "list.yaml"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "timesteps: [1, 2\n", "broken.yaml"))


@pytest.mark.parametrize(
    "payload",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        "autoaccel_recipe: !!python/object/apply:os.system ['touch {marker}']",
        "scheduler: !!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "timesteps: !!python/name:os.system",
    ],
)
def test_python_tags_are_refused_and_never_executed(tmp_path, payload):
    marker = tmp_path / "executed"
    path = _write(tmp_path, payload.format(marker=marker) + "\n", "evil.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    assert not marker.exists()


# --- apply_recipe ----------------------------------------------------------------------------------------------


def _real_recipe(target) -> dict:
    scheduler = build_scheduler(SolverConfig(name="unipc", order=2), target.scheduler_config)
    config = {key: value for key, value in dict(scheduler.config).items() if not key.startswith("_")}
    return _recipe(content_hash=target.content_hash, scheduler_config=config, timesteps=[99, 70, 40, 12])


def test_apply_recipe_checks_the_weights_hash(tiny_target, tmp_path):
    recipe = _real_recipe(tiny_target)
    recipe["base_model"]["content_hash"] = "f" * 64
    path = _write(tmp_path, recipe)
    with pytest.raises(RecipeError) as info:
        apply_recipe(tiny_target, path)
    message = str(info.value)
    assert "weights hash" in message and "ffffffffffffffff" in message
    assert tiny_target.content_hash[:16] in message
    assert "check_model=False" in message


def test_apply_recipe_without_check_runs_the_recipe(tiny_target, tmp_path):
    recipe = _real_recipe(tiny_target)
    recipe["base_model"]["content_hash"] = "f" * 64
    fast = apply_recipe(tiny_target, _write(tmp_path, recipe), check_model=False)
    assert isinstance(fast, SamplerPipeline)
    assert fast.unet is tiny_target.denoiser  # shared, not copied
    assert type(fast.scheduler).__name__ == "UniPCMultistepScheduler"
    assert fast.plan.timesteps == [99, 70, 40, 12]
    assert (fast.plan.guidance_scale, fast.plan.null_class) == (1.0, 3)


def test_applied_recipe_reproduces_the_plan(tiny_target, tmp_path):
    recipe = _real_recipe(tiny_target)
    recipe["guidance_scale"] = 1.5
    recipe["techniques"]["solver"]["config"]["guidance"] = 1.5  # the solver config and the recipe agree
    fast = apply_recipe(tiny_target, _write(tmp_path, recipe))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 2])
    direct = SamplerPipeline(
        denoiser=tiny_target.denoiser,
        scheduler=build_scheduler(SolverConfig(name="unipc", order=2), tiny_target.scheduler_config),
    )
    direct.plan.timesteps, direct.plan.guidance_scale, direct.plan.null_class = [99, 70, 40, 12], 1.5, 3
    torch.testing.assert_close(fast(noise, labels).images, direct(noise, labels).images, atol=0, rtol=0)
    assert fast.unet_calls == 8  # guided: two unet evaluations per step


def test_a_recipe_runs_what_its_technique_configs_give_not_its_written_sampler(tiny_target, tmp_path):
    recipe = _real_recipe(tiny_target)
    recipe["techniques"]["timesteps"] = {"version": 1, "config": {"steps": 4, "family": "uniform_trailing"}}
    written = {key: recipe[key] for key in ("scheduler", "timesteps", "guidance_scale")}
    as_configured = apply_recipe(tiny_target, _write(tmp_path, recipe, "configured.yaml"))
    # the written sampler edited by hand (or by an old tool): the plan is the technique configs, not these fields
    recipe["guidance_scale"] = 1.5
    recipe["timesteps"] = [90, 45, 5]
    recipe["scheduler"] = {"class": "DPMSolverMultistepScheduler", "config": {"num_train_timesteps": 100}}
    edited = apply_recipe(tiny_target, _write(tmp_path, recipe, "edited.yaml"))
    assert type(edited.scheduler).__name__ == "UniPCMultistepScheduler"
    assert (edited.plan.timesteps, edited.plan.guidance_scale) == (as_configured.plan.timesteps, 1.0)
    assert edited.plan.timesteps != [90, 45, 5]
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 2])
    torch.testing.assert_close(edited(noise, labels).images, as_configured(noise, labels).images, atol=0, rtol=0)
    del recipe["techniques"]["solver"], recipe["techniques"]["timesteps"]  # nothing decides the sampler: as written
    by_hand = apply_recipe(tiny_target, _write(tmp_path, recipe, "by-hand.yaml"))
    assert type(by_hand.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert (by_hand.plan.timesteps, by_hand.plan.guidance_scale) == ([90, 45, 5], 1.5)
    assert written["guidance_scale"] == 1.0


def test_apply_recipe_needs_a_unet(tmp_path):
    with pytest.raises(RecipeError, match="needs a pipeline with a unet"):
        apply_recipe(object(), _recipe(), check_model=False)


def test_apply_recipe_validates_a_dict_recipe_too(tiny_target):
    recipe = _real_recipe(tiny_target)
    recipe["scheduler"]["class"] = "EulerAncestralDiscreteScheduler"
    with pytest.raises(RecipeError, match="not allowed"):
        apply_recipe(tiny_target, recipe)


def test_base_model_that_is_not_a_mapping_is_a_recipe_error(tiny_target, tmp_path):
    path = _write(tmp_path, _recipe(base_model="tiny"))
    with pytest.raises(RecipeError, match="base_model"):
        apply_recipe(tiny_target, path)


# --- property: load_recipe raises only RecipeError ------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=1200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(sorted(ALLOWED_SCHEDULERS) + ["os.system", "class", "config"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), children)
    ),
    max_leaves=10,
)


@st.composite
def _recipes(draw):
    """Mostly recipe-shaped mappings, each field sometimes replaced by any YAML-ish value or dropped."""
    recipe = {
        "autoaccel_recipe": 1,
        "base_model": {"name": "tiny", "content_hash": "0" * 64},
        "scheduler": {
            "class": draw(st.sampled_from(sorted(ALLOWED_SCHEDULERS))),
            "config": draw(st.dictionaries(st.text(max_size=5), _SCALARS, max_size=3)),
        },
        "timesteps": sorted(draw(st.lists(st.integers(0, 999), min_size=1, max_size=6, unique=True)), reverse=True),
        "guidance_scale": draw(st.floats(min_value=1.0, max_value=10.0)),
        "null_class": draw(st.one_of(st.none(), st.integers(0, 10))),
    }
    for key in list(recipe):
        roll = draw(st.integers(min_value=0, max_value=99))
        if roll >= 92:
            del recipe[key]
        elif roll >= 75:
            recipe[key] = draw(_VALUES)
    if draw(st.integers(min_value=0, max_value=99)) >= 90:
        recipe["scheduler"] = {"class": draw(_VALUES), "config": draw(_VALUES)}
    return draw(st.one_of(st.just(recipe), _VALUES)) if draw(st.booleans()) else recipe


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(recipe=_recipes())
def test_load_recipe_raises_only_recipe_error(tmp_path, recipe):
    path = _write(tmp_path, recipe, "fuzz.yaml")
    try:
        loaded = load_recipe(path)
    except RecipeError as error:
        assert str(path) in str(error)
        return
    assert isinstance(loaded, dict)
    # what loads is usable: an allowed scheduler, decreasing int steps >= 0, guidance >= 1
    assert loaded["autoaccel_recipe"] == 1
    assert loaded["scheduler"]["class"] in ALLOWED_SCHEDULERS
    assert isinstance(loaded["scheduler"]["config"], dict)
    steps = loaded["timesteps"]
    assert steps and all(type(step) is int for step in steps) and steps[-1] >= 0
    assert all(earlier > later for earlier, later in zip(steps, steps[1:]))
    assert loaded["guidance_scale"] >= 1
