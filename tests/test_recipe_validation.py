"""Recipe loading and applying (autoaccel/plan/recipe.py): every bad recipe is a RecipeError, nothing is executed.

Format 2 (what autoaccel writes) takes its sampler from its techniques alone; format 1 (written before) still
applies its written sampler where no technique decides it, so its fields are validated as they always were."""

from __future__ import annotations

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoaccel.errors import RecipeError
from autoaccel.pipeline.sampling import SamplerPipeline
from autoaccel.plan.apply import build_pipeline
from autoaccel.plan.recipe import (
    ALLOWED_SCHEDULERS,
    DERIVED_NOTE,
    FORMAT_1_KEYS,
    REQUIRED_KEYS,
    apply_recipe,
    build_recipe,
    load_recipe,
    recipe_plan,
    save_recipe,
)
from autoaccel.plan.steps import Plan
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.pruning import PRUNING, PruningConfig
from autoaccel.techniques.solver import SOLVER, SolverConfig, build_scheduler
from autoaccel.techniques.timesteps import TIMESTEPS, TimestepsConfig
from autoaccel.testing.pipelines import build_tiny_pipeline_folder


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    folder = build_tiny_pipeline_folder(tmp_path_factory.mktemp("recipe") / "tiny")
    return load_pipeline_folder(folder, device="cpu")


def _recipe(content_hash: str = "0" * 64, scheduler_config: dict | None = None, **changes) -> dict:
    """A format-1 recipe, as autoaccel wrote them before: its sampler written beside its techniques."""
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


@pytest.mark.parametrize("key", FORMAT_1_KEYS)
def test_missing_key_is_named(tmp_path, key):
    recipe = _recipe()
    del recipe[key]
    with pytest.raises(RecipeError, match=f"lacks {key}"):
        load_recipe(_write(tmp_path, recipe))


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_key_of_a_format_2_recipe_is_named(tmp_path, key):
    recipe = _format_2_recipe()
    del recipe[key]
    with pytest.raises(RecipeError, match=f"lacks {key}"):
        load_recipe(_write(tmp_path, recipe))


@pytest.mark.parametrize("version", [0, 3, "x", "1", None, True, 2.0])
def test_other_format_versions_are_refused(tmp_path, version):
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, _recipe(autoaccel_recipe=version)))
    message = str(info.value)
    assert f"format {version!r} is not supported; this autoaccel reads formats 1 and 2" in message
    assert "\n" not in message


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
    """A format-1 recipe for the tiny model: UniPC order 2 written out, on four written timesteps."""
    scheduler = build_scheduler(SolverConfig(name="unipc", order=2), target.scheduler_config)
    config = {key: value for key, value in dict(scheduler.config).items() if not key.startswith("_")}
    return _recipe(content_hash=target.content_hash, scheduler_config=config, timesteps=[99, 70, 40, 12])


def _format_2_recipe(content_hash: str = "0" * 64, **changes) -> dict:
    """A hand-written format-2 recipe: UniPC order 2 on four trailing steps, named by its techniques alone."""
    recipe = {
        "autoaccel_recipe": 2,
        "base_model": {"name": "tiny", "path": "/models/tiny", "content_hash": content_hash},
        "techniques": {
            "solver": {"version": SOLVER.version, "config": {"name": "unipc", "order": 2}},
            "timesteps": {"version": TIMESTEPS.version, "config": {"steps": 4, "family": "uniform_trailing"}},
        },
        "null_class": 3,
        "seed_policy": {"seed": 0, "samples": 8},
    }
    recipe.update(changes)
    return recipe


def _written(target, plan: Plan) -> dict:
    """The recipe autoaccel writes for ``plan`` on ``target``, with the pipeline it was written from."""
    pipeline = build_pipeline(target, plan)
    return build_recipe(target, plan, pipeline, {}, {}, {"seed": 0}, {}), pipeline


def _images(pipeline) -> torch.Tensor:
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    return pipeline(noise, torch.tensor([0, 2]), generator=torch.Generator().manual_seed(5)).images


UNIPC_ON_4 = Plan.of([(SOLVER, SolverConfig(name="unipc", order=2, guidance=1.5)), (TIMESTEPS, TimestepsConfig(4))])


def test_apply_recipe_checks_the_weights_hash(tiny_target, tmp_path):
    recipe = _format_2_recipe(tiny_target.content_hash)
    recipe["base_model"]["content_hash"] = "f" * 64
    path = _write(tmp_path, recipe)
    with pytest.raises(RecipeError) as info:
        apply_recipe(tiny_target, path)
    message = str(info.value)
    assert "weights hash" in message and "ffffffffffffffff" in message
    assert tiny_target.content_hash[:16] in message
    assert "check_model=False" in message


def test_apply_recipe_without_check_runs_the_recipe(tiny_target, tmp_path):
    recipe = _format_2_recipe("f" * 64)
    fast = apply_recipe(tiny_target, _write(tmp_path, recipe), check_model=False)
    assert isinstance(fast, SamplerPipeline)
    assert fast.unet is tiny_target.denoiser  # shared, not copied
    assert type(fast.scheduler).__name__ == "UniPCMultistepScheduler"
    assert fast.plan.timesteps == build_pipeline(tiny_target, UNIPC_ON_4).plan.timesteps
    assert (fast.plan.guidance_scale, fast.plan.null_class) == (1.0, 3)


def test_a_written_recipe_shows_its_sampler_only_under_derived(tiny_target):
    recipe, pipeline = _written(tiny_target, UNIPC_ON_4)
    assert recipe["autoaccel_recipe"] == 2
    assert not {"scheduler", "timesteps", "sigmas", "guidance_scale"} & set(recipe)
    derived = recipe["derived"]
    assert derived["note"] == DERIVED_NOTE
    assert derived["scheduler"]["class"] == "UniPCMultistepScheduler"
    assert derived["scheduler"]["config"]["solver_order"] == 2
    assert derived["timesteps"] == pipeline.plan.timesteps and len(derived["timesteps"]) == 4
    assert derived["guidance_scale"] == 1.5


def test_applied_recipe_reproduces_the_plan(tiny_target, tmp_path):
    recipe, measured = _written(tiny_target, UNIPC_ON_4)
    fast = apply_recipe(tiny_target, save_recipe(recipe, tmp_path / "recipe.yaml"))
    torch.testing.assert_close(_images(fast), _images(measured), atol=0, rtol=0)
    assert fast.unet_calls == 8  # guided: two unet evaluations per step


def test_a_format_2_recipe_applies_without_reading_derived(tiny_target, tmp_path):
    recipe, measured = _written(tiny_target, UNIPC_ON_4)
    expected = _images(measured)
    derived = recipe["derived"]
    derived["scheduler"]["class"], derived["scheduler"]["config"] = "os.system", "rm -rf"
    derived["timesteps"], derived["sigmas"], derived["guidance_scale"] = [5, 50, 500000], "many", -3
    del derived["note"]
    edited = apply_recipe(tiny_target, save_recipe(recipe, tmp_path / "edited.yaml"))
    torch.testing.assert_close(_images(edited), expected, atol=0, rtol=0)
    del recipe["derived"]
    without = apply_recipe(tiny_target, save_recipe(recipe, tmp_path / "without.yaml"))
    torch.testing.assert_close(_images(without), expected, atol=0, rtol=0)


def test_editing_a_format_2_recipes_technique_configs_changes_its_sampler(tiny_target, tmp_path):
    recipe = _format_2_recipe(tiny_target.content_hash)
    recipe["techniques"]["solver"]["config"] = {"name": "dpmsolver++", "order": 2, "guidance": 2.0}
    recipe["techniques"]["timesteps"]["config"] = {"steps": 3, "family": "uniform_trailing"}
    edited = apply_recipe(tiny_target, _write(tmp_path, recipe))
    assert type(edited.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert (len(edited.plan.timesteps), edited.plan.guidance_scale) == (3, 2.0)
    plan = Plan.of([(SOLVER, SolverConfig(name="dpmsolver++", order=2, guidance=2.0)), (TIMESTEPS, TimestepsConfig(3))])
    torch.testing.assert_close(_images(edited), _images(build_pipeline(tiny_target, plan)), atol=0, rtol=0)


@pytest.mark.parametrize("field", ["scheduler", "timesteps", "sigmas", "guidance_scale"])
def test_a_format_2_recipe_with_a_written_sampler_field_is_refused(tmp_path, field):
    path = _write(tmp_path, _format_2_recipe(**{field: _recipe().get(field, [0.9, 0.5])}))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert f"top-level {field} is not a field of a format-2 recipe" in message
    assert "solver technique" in message and "timesteps technique" in message and "default call" in message


@pytest.mark.parametrize(
    "techniques", [{}, {"pruning": {"version": PRUNING.version, "config": {"ratio": 0.3, "recovery_steps": 0}}}]
)
def test_a_recipe_deciding_no_sampler_runs_the_models_default_call(tiny_target, tmp_path, techniques):
    recipe = _format_2_recipe(tiny_target.content_hash, techniques=techniques)
    fast = apply_recipe(tiny_target, _write(tmp_path, recipe))
    assert type(fast.scheduler).__name__ == tiny_target.scheduler_class == "DDPMScheduler"
    assert fast.plan.native_steps == tiny_target.reference_call.steps and not fast.plan.timesteps
    assert fast.plan.guidance_scale == tiny_target.reference_guidance
    _images(fast)
    assert fast.model_calls == tiny_target.reference_call.steps  # its default call is unguided


def test_a_written_recipe_of_a_plan_deciding_no_sampler_reproduces_exactly(tiny_target, tmp_path):
    plan = Plan.of([(PRUNING, PruningConfig(ratio=0.3, recovery_steps=0))])
    recipe, measured = _written(tiny_target, plan)
    assert recipe["derived"]["native_steps"] == tiny_target.reference_call.steps
    assert recipe["derived"]["scheduler"]["class"] == tiny_target.scheduler_class
    fast = apply_recipe(tiny_target, save_recipe(recipe, tmp_path / "pruned.yaml"))
    torch.testing.assert_close(_images(fast), _images(measured), atol=0, rtol=0)


def test_a_format_1_recipe_runs_what_its_technique_configs_give_not_its_written_sampler(tiny_target, tmp_path):
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
    torch.testing.assert_close(_images(edited), _images(as_configured), atol=0, rtol=0)
    # nothing decides the sampler: a format-1 recipe runs what it wrote, as it always did
    del recipe["techniques"]["solver"], recipe["techniques"]["timesteps"]
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
    if loaded["autoaccel_recipe"] == 2:  # a fuzzed format, and no written sampler left: its techniques decide
        assert not {"scheduler", "timesteps", "guidance_scale"} & set(loaded)
        return
    # what loads is usable: an allowed scheduler, decreasing int steps >= 0, guidance >= 1
    assert loaded["autoaccel_recipe"] == 1
    assert loaded["scheduler"]["class"] in ALLOWED_SCHEDULERS
    assert isinstance(loaded["scheduler"]["config"], dict)
    steps = loaded["timesteps"]
    assert steps and all(type(step) is int for step in steps) and steps[-1] >= 0
    assert all(earlier > later for earlier, later in zip(steps, steps[1:]))
    assert loaded["guidance_scale"] >= 1


_FUZZED_TECHNIQUES = {"solver": SOLVER, "timesteps": TIMESTEPS, "pruning": PRUNING}


@st.composite
def _format_2_techniques(draw):
    """A format-2 recipe's techniques section: real technique names with their own setting names, each value
    sometimes any YAML-ish value; sometimes an unknown name, a wrong version, or a section that is no mapping."""
    techniques = {}
    for name in draw(st.lists(st.sampled_from([*_FUZZED_TECHNIQUES, "os.system", ""]), max_size=3, unique=True)):
        technique = _FUZZED_TECHNIQUES.get(name)
        settings = sorted(technique.params) if technique else ["name", "steps"]
        config = draw(st.dictionaries(st.sampled_from([*settings, "unknown"]), _VALUES, max_size=3))
        version = technique.version if technique and draw(st.integers(0, 9)) else draw(_SCALARS)
        techniques[name] = draw(st.one_of(st.just({"version": version, "config": config}), _VALUES))
    return draw(st.one_of(st.just(techniques), _VALUES)) if draw(st.integers(0, 9)) == 0 else techniques


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(techniques=_format_2_techniques())
def test_a_format_2_recipe_loads_with_valid_technique_configs_or_raises_only_recipe_error(tmp_path, techniques):
    path = _write(tmp_path, _format_2_recipe(techniques=techniques), "fuzz.yaml")
    try:
        loaded = load_recipe(path)
    except RecipeError as error:
        assert str(path) in str(error) or "recipe" in str(error)
        assert "\n" not in str(error)
        return
    # what loads is a plan: each section a known technique at its version, its config one the technique accepts
    plan = recipe_plan(loaded)
    assert sorted(plan.names) == sorted(loaded["techniques"] or {})
    for technique, config in plan:
        assert isinstance(config, technique.config_cls)
