"""Property-based fuzzing of what users hand autoaccel as files: search-space YAML and recipes. Whatever the
input, the parsers either accept it or raise their own clear error (ConfigError / RecipeError), never a
stray TypeError, KeyError or AttributeError from deep inside."""

from __future__ import annotations

import contextlib
import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoaccel.errors import ConfigError, RecipeError
from autoaccel.plan.recipe import load_recipe, validate_recipe
from autoaccel.space.spaces import active_params, parse_space

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["int", "float", "categorical", "schedule", "solver.name", "timesteps.steps", "ddim"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["timesteps.steps", "timesteps.family", "timesteps.gap", "solver.name", "solver.order", "pruning.ratio", "x", "a.b"]
)
SPECS = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["int", "float", "categorical", "schedule", "bogus"]), VALUES),
        "low": VALUES,
        "high": VALUES,
        "log": VALUES,
        "choices": VALUES,
        "when": VALUES,
        "requires": VALUES,
        "count_from": st.one_of(KEYS, VALUES),
    },
)
SPACES = st.fixed_dictionaries(
    {},
    optional={
        "name": VALUES,
        "techniques": st.one_of(
            st.lists(st.sampled_from(["solver", "timesteps", "pruning", "quantization", "nope"]), max_size=4), VALUES
        ),
        "fixed": st.one_of(st.dictionaries(KEYS, VALUES, max_size=3), VALUES),
        "dimensions": st.one_of(st.dictionaries(KEYS, st.one_of(SPECS, VALUES), max_size=4), VALUES),
        "extra": VALUES,
    },
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPACES)
def test_space_parser_accepts_or_names_the_problem(document):
    try:
        space = parse_space(document, source="fuzz.yaml")
    except ConfigError as error:
        assert str(error)
        return

    # an accepted space yields complete candidates for its lower bounds / first choices
    def first(dimension):
        return dimension.choices[0] if dimension.choices else dimension.low

    with contextlib.suppress(ConfigError):
        space.complete(active_params(space, first))


def _valid_recipe() -> dict:
    return {
        "autoaccel_recipe": 1,
        "base_model": {"name": "m", "path": "/m", "content_hash": "0" * 64},
        "scheduler": {"class": "DDIMScheduler", "config": {"num_train_timesteps": 1000}},
        "timesteps": [900, 500, 100],
        "guidance_scale": 1.0,
        "null_class": None,
        "techniques": {"solver": {"version": 1, "config": {"name": "ddim"}}},
    }


RECIPE_KEYS = st.sampled_from(
    ["autoaccel_recipe", "base_model", "scheduler", "timesteps", "guidance_scale", "null_class", "techniques"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(RECIPE_KEYS, VALUES), max_size=3), st.sets(RECIPE_KEYS, max_size=2))
def test_recipe_validation_accepts_or_names_the_problem(changes, removed):
    recipe = copy.deepcopy(_valid_recipe())
    for key, value in changes:
        recipe[key] = value
    for key in removed:
        recipe.pop(key, None)
    try:
        validate_recipe(recipe)
    except RecipeError as error:
        assert str(error)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200).map(str.encode), st.binary(max_size=200)))
def test_recipe_files_of_any_text_or_bytes_load_or_name_the_problem(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(data)
    try:
        load_recipe(path)
    except RecipeError as error:
        assert "recipe" in str(error)


SCHEDULER_NAMES = st.one_of(
    st.sampled_from(["DDPMScheduler", "PNDMScheduler", "LCMScheduler", "UNet2DModel", "utils", "DiffusionPipeline"]),
    VALUES,
)
SCHEDULER_SETTINGS = st.one_of(
    st.dictionaries(
        st.sampled_from(["num_train_timesteps", "beta_schedule", "solver_order", "trained_betas", "steps_offset"]),
        st.one_of(VALUES, st.integers(-(10**12), 10**12)),
        max_size=3,
    ),
    VALUES,
)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={"scheduler_class": SCHEDULER_NAMES, "scheduler_config": SCHEDULER_SETTINGS}))
def test_recipe_base_model_scheduler_is_allowed_bounded_or_named(base):
    from autoaccel.schedules.schedulers import model_schedulers

    recipe = copy.deepcopy(_valid_recipe())
    recipe["base_model"].update(base)
    try:
        validate_recipe(recipe)
    except RecipeError as error:
        assert "\n" not in str(error)
        return
    assert base.get("scheduler_class", "DDPMScheduler") in model_schedulers()


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "scheduler_class": SCHEDULER_NAMES,
                "timesteps": st.one_of(st.lists(st.integers(-5, 1200), max_size=5), VALUES),
                "guidance_scale": VALUES,
                "settings": SCHEDULER_SETTINGS,
            },
        ),
        VALUES,
    )
)
def test_an_artifacts_prescription_is_allowed_bounded_or_named(stored):
    from autoaccel.pipeline.prescribed import read_prescription
    from autoaccel.schedules.schedulers import sampler_schedulers

    try:
        sampler = read_prescription(stored, 1000, "prescribed_sampler")
    except RecipeError as error:
        assert str(error).startswith("prescribed_sampler")
        return
    assert sampler.scheduler_class in sampler_schedulers() and len(sampler.timesteps) >= 1


def _config_fields(config_cls) -> st.SearchStrategy:
    from dataclasses import fields

    names = [field.name for field in fields(config_cls)]
    return st.dictionaries(st.sampled_from(names), VALUES, max_size=4)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_model_technique_configs_accept_or_name_the_bad_value(data):
    """A recipe's pruning/quantization config is plain data a user may edit: any values either make a config
    or raise ConfigError naming the setting (never a TypeError from a comparison deep inside)."""
    from autoaccel.techniques.pruning import PruningConfig
    from autoaccel.techniques.quantization import QuantizationConfig

    for config_cls, prefix in ((PruningConfig, "pruning."), (QuantizationConfig, "quantization.")):
        values = data.draw(_config_fields(config_cls))
        try:
            config_cls(**values)
        except ConfigError as error:
            assert prefix in str(error)


# --- size and alias bombs, loaded under a memory limit in a child process ----------------------------------------

BOMB_LEAVES = st.sampled_from(["ddim", "1", "0.5", "null", "true", "{a: b}", "[]"])
BOMB_PLACES = st.sampled_from(
    [
        "name: BOMB\n",
        "description: BOMB\n",
        "extra: BOMB\n",
        "fixed: BOMB\n",
        "fixed: {solver.name: BOMB}\n",
        "fixed: {timesteps.gaps: BOMB}\n",
        "dimensions: BOMB\n",
        "dimensions: {solver.name: BOMB}\n",
        "dimensions: {solver.name: {type: categorical, choices: BOMB}}\n",
        "dimensions: {solver.name: {type: categorical, choices: [BOMB, ddim]}}\n",
        "dimensions: {solver.name: {type: BOMB, choices: [ddim]}}\n",
        "dimensions: {solver.guidance: {type: float, low: BOMB, high: 2}}\n",
        "dimensions: {solver.guidance: {type: float, low: 1, high: 2, log: BOMB, requires: BOMB}}\n",
        "dimensions: {timesteps.steps: {type: int, low: 3, high: 9}, solver.name: {type: categorical, choices: [ddim],"
        " when: {timesteps.steps: BOMB}}}\n",
        "dimensions: {timesteps.steps: {type: int, low: 3, high: 9}, timesteps.gap: {type: schedule, count_from: BOMB,"
        " low: 0.1, high: 1}}\n",
    ]
)


@st.composite
def alias_bombs(draw) -> str:
    """A "billion laughs": ``width ** levels`` leaves from a few hundred bytes, placed anywhere in a space file."""
    levels, width = draw(st.integers(2, 10)), draw(st.integers(2, 10))
    anchors = [f"&l0 [{', '.join([draw(BOMB_LEAVES)] * width)}]"]
    anchors += [f"&l{level} [{', '.join([f'*l{level - 1}'] * width)}]" for level in range(1, levels)]
    return "techniques: [solver, timesteps]\n" + draw(BOMB_PLACES).replace("BOMB", f"[{', '.join(anchors)}]")


@st.composite
def size_bombs(draw) -> str:
    """Small files whose values are huge: step counts and schedules, choices, dimensions, strings, nesting."""
    head = "techniques: [pruning, solver, timesteps]\n"
    kind = draw(st.sampled_from(["steps", "counter", "choices", "gaps", "text", "nesting"]))
    if kind in ("steps", "counter"):
        counter = "timesteps.steps" if kind == "steps" else "pruning.recovery_steps"
        high = draw(st.one_of(st.integers(3, 2000), st.integers(3, 10**15)))
        return head + (
            f"dimensions:\n  {counter}: {{type: int, low: {draw(st.integers(0, 3))}, high: {high}}}\n"
            f"  timesteps.gap: {{type: schedule, count_from: {counter}, low: 0.1, high: 1.0}}\n"
        )
    if kind == "choices":
        count, value = draw(st.integers(1, 6000)), draw(st.sampled_from(["1.5", "2", "ddim", "x" * 3000]))
        key = draw(st.sampled_from(["solver.guidance", "solver.name"]))
        return head + f"dimensions:\n  {key}: {{type: categorical, choices: [{', '.join([value] * count)}]}}\n"
    if kind == "gaps":
        count = draw(st.integers(1, 3000))
        lines = "".join(f"  timesteps.gap_{index}: {{type: float, low: 0.1, high: 1}}\n" for index in range(count))
        return head + "dimensions:\n" + lines
    if kind == "text":
        return head + f"name: {'n' * draw(st.integers(0, 300_000))}\n"
    depth = draw(st.integers(1, 20_000))
    return head + f"fixed: {{timesteps.gaps: {'[' * depth}0.5{']' * depth}}}\n"


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(alias_bombs(), size_bombs()))
def test_bomb_space_files_load_or_name_the_problem_within_memory_and_time(tmp_path, text):
    """Whatever the file, loading it under a memory limit either succeeds or raises a one-line ConfigError
    quickly: never a MemoryError, a kill or minutes of work."""
    from tests.test_space_checks import CHILD_TIMEOUT_S, load_under_memory_limit

    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    outcome, detail, seconds = load_under_memory_limit(path)
    assert outcome in ("ok", "config"), detail
    if outcome == "config":
        assert str(path) in detail and "\n" not in detail and len(detail) < 2000
    assert seconds < min(15, CHILD_TIMEOUT_S)
