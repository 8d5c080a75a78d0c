"""Search spaces (autoaccel/space/spaces.py): the bundled files, schedule expansion, and errors on bad space files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoaccel.errors import ConfigError
from autoaccel.space.spaces import load_space, parse_space

BUNDLED = ("sampler", "timesteps", "solver")


@pytest.fixture(scope="module")
def sampler():
    return load_space("sampler")


def _write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the bundled spaces --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_space_loads(name):
    space = load_space(name)
    assert space.name == name
    assert set(space.techniques) == {"solver", "timesteps"}
    assert "timesteps.steps" in space.names
    assert space.source.endswith(f"{name}.yaml")
    # every fixed value and dimension belongs to a listed technique
    for key in [*space.fixed, *space.names]:
        assert key.split(".", 1)[0] in space.techniques


def test_bundled_fixed_values_hold_the_other_technique_still():
    # the solver space searches solvers on diffusers' trailing schedule; the timesteps space fixes the solver
    assert load_space("solver").fixed == {"timesteps.family": "uniform_trailing"}
    assert load_space("timesteps").fixed == {"solver.name": "dpmsolver++", "solver.order": 2}
    for name in BUNDLED:
        space = load_space(name)
        assert not set(space.fixed) & set(space.names)


def test_load_space_by_path_equals_by_name(tmp_path):
    path = _write(tmp_path, Path(load_space("solver").source).read_text(), "copy.yaml")
    by_path = load_space(str(path))
    by_name = load_space("solver")
    assert by_path.dimensions == by_name.dimensions
    assert by_path.fixed == by_name.fixed
    assert by_path.source == str(path)


def test_unknown_space_name_lists_bundled():
    with pytest.raises(ConfigError) as info:
        load_space("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in BUNDLED:
        assert name in message


def test_missing_space_file_is_named(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="absent.yaml"):
        load_space(str(path))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_parameters_are_fields_of_their_technique_configs(name):
    from dataclasses import fields

    from autoaccel.techniques.base import get_technique

    space = load_space(name)
    for key in [*space.fixed, *space.names]:
        technique, setting = key.split(".", 1)
        known = {field.name for field in fields(get_technique(technique).config_cls)}
        assert setting in known or (setting.startswith("gap_") and "gaps" in known), key


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("corner", ["low", "high"])
def test_bundled_space_corners_make_valid_technique_configs(name, corner):
    from autoaccel.techniques.base import get_technique

    space = load_space(name)
    chosen: dict = {}
    for dimension in space.dimensions:
        if not dimension.is_active({**space.fixed, **chosen}):
            continue
        if dimension.kind == "categorical":
            chosen[dimension.name] = dimension.choices[0 if corner == "low" else -1]
        else:
            chosen[dimension.name] = getattr(dimension, corner)
    params = space.complete(chosen)
    for technique in space.techniques:
        get_technique(technique).config_from_params(params)


# --- the schedule type ---------------------------------------------------------------------------------------


def test_schedule_expands_into_one_gap_per_step_gap(sampler):
    steps = sampler.dimension("timesteps.steps")
    assert (steps.low, steps.high) == (3, 10)
    gaps = [name for name in sampler.names if name.startswith("timesteps.gap")]
    assert gaps == [f"timesteps.gap_{index}" for index in range(steps.high - 1)]
    assert "timesteps.gap" not in sampler.names
    for name in gaps:
        gap = sampler.dimension(name)
        assert gap.kind == "float"
        assert (gap.low, gap.high, gap.log) == (0.1, 1.0, True)
    # the gaps sit where the schedule was declared: after shift, before the solver
    assert sampler.names.index("timesteps.gap_0") == sampler.names.index("timesteps.shift") + 1
    assert sampler.names.index("solver.name") == sampler.names.index("timesteps.gap_8") + 1


@pytest.mark.parametrize("family", ["free", "power", "uniform_trailing", "karras"])
def test_gap_i_active_only_when_steps_at_least_i_plus_2_and_family_free(sampler, family):
    steps = sampler.dimension("timesteps.steps")
    for count in range(steps.low, steps.high + 1):
        for index in range(steps.high - 1):
            gap = sampler.dimension(f"timesteps.gap_{index}")
            expected = family == "free" and count >= index + 2
            params = {"timesteps.steps": count, "timesteps.family": family}
            assert gap.is_active(params) is expected, (family, count, index)


def test_schedule_with_low_step_count_bound_activates_gap_0_from_two_steps(tmp_path):
    path = _write(
        tmp_path,
        """
techniques: [timesteps]
dimensions:
  timesteps.steps: {type: int, low: 1, high: 4}
  timesteps.gap: {type: schedule, count_from: timesteps.steps, low: 0.5, high: 2.0}
""",
    )
    space = load_space(str(path))
    assert space.names == ["timesteps.steps", "timesteps.gap_0", "timesteps.gap_1", "timesteps.gap_2"]
    active = {
        count: [name for name in space.names[1:] if space.dimension(name).is_active({"timesteps.steps": count})]
        for count in range(1, 5)
    }
    assert active == {
        1: [],
        2: ["timesteps.gap_0"],
        3: ["timesteps.gap_0", "timesteps.gap_1"],
        4: ["timesteps.gap_0", "timesteps.gap_1", "timesteps.gap_2"],
    }


def test_schedule_needs_an_int_count_dimension_above(tmp_path):
    path = _write(
        tmp_path,
        """
techniques: [timesteps]
dimensions:
  timesteps.gap: {type: schedule, count_from: timesteps.steps, low: 0.5, high: 2.0}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    assert str(path) in str(info.value)
    assert "dimensions.timesteps.gap.count_from" in str(info.value)


# --- for_target and complete ---------------------------------------------------------------------------------


def test_for_target_without_guidance_drops_guidance(sampler):
    assert "solver.guidance" in sampler.names
    reduced = sampler.for_target(set())
    assert "solver.guidance" not in reduced.names
    assert reduced.names == [name for name in sampler.names if name != "solver.guidance"]
    assert sampler.for_target({"guidance"}).names == sampler.names


def test_for_target_drops_dimensions_conditioned_on_dropped_ones():
    space = parse_space(
        {
            "techniques": ["solver"],
            "dimensions": {
                "solver.guidance": {"type": "float", "low": 1.0, "high": 2.0, "requires": "guidance"},
                "solver.order": {"type": "int", "low": 1, "high": 3, "when": {"solver.guidance": [1.5]}},
                "solver.name": {"type": "categorical", "choices": ["ddim"]},
            },
        }
    )
    assert space.for_target(set()).names == ["solver.name"]


def _free_candidate(steps: int) -> dict:
    candidate = {
        "timesteps.steps": steps,
        "timesteps.family": "free",
        "timesteps.start": 1.0,
        "timesteps.end": 0.0,
        "timesteps.shift": 1.0,
        "solver.name": "ddim",
    }
    candidate.update({f"timesteps.gap_{index}": 0.5 for index in range(steps - 1)})
    return candidate


def test_complete_merges_fixed_and_active_values(sampler):
    space = sampler.for_target(set())
    params = space.complete(_free_candidate(4))
    assert params["timesteps.family"] == "free"
    assert params["timesteps.gap_2"] == 0.5
    assert "timesteps.gap_3" not in params
    assert "solver.order" not in params  # inactive for ddim


def test_complete_rejects_missing_active_parameter(sampler):
    candidate = _free_candidate(5)
    del candidate["timesteps.gap_3"]
    with pytest.raises(ConfigError, match=r"'timesteps\.gap_3' is missing"):
        sampler.for_target(set()).complete(candidate)


def test_complete_does_not_need_inactive_parameters(sampler):
    candidate = {"timesteps.steps": 4, "timesteps.family": "uniform_trailing", "solver.name": "ddim"}
    params = sampler.for_target(set()).complete(candidate)
    assert params["timesteps.family"] == "uniform_trailing"
    assert not any(key.startswith("timesteps.gap") for key in params)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timesteps.steps", 11),
        ("timesteps.steps", 2),
        ("timesteps.steps", 4.5),
        ("timesteps.steps", True),
        ("timesteps.start", 1.5),
        ("timesteps.end", -0.1),
        ("timesteps.gap_1", 0.05),
        ("timesteps.family", "cosine"),
        ("solver.name", "plms"),
    ],
)
def test_complete_rejects_out_of_range_value(sampler, name, value):
    candidate = _free_candidate(4)
    candidate[name] = value
    with pytest.raises(ConfigError) as info:
        sampler.for_target(set()).complete(candidate)
    assert f"{name}={value!r}" in str(info.value)
    assert "outside" in str(info.value)


def test_complete_rejects_non_numeric_int_value_with_config_error(sampler):
    candidate = _free_candidate(4)
    candidate["timesteps.steps"] = "many"
    with pytest.raises(ConfigError, match="timesteps.steps"):
        sampler.for_target(set()).complete(candidate)


# --- bad space files: each error names the file and the key ---------------------------------------------------

GOOD_HEAD = "techniques: [solver, timesteps]\ndimensions:\n  timesteps.steps: {type: int, low: 3, high: 10}\n"

BAD_SPACES = {
    "invalid_yaml": ("techniques: [solver\ndimensions: {", "not valid YAML"),
    "unknown_top_level_key": (GOOD_HEAD + "searchers: [x]\n", "searchers"),
    "unknown_technique": ("techniques: [solver, warp_drive]\n", "warp_drive"),
    "unknown_dimension_type": (GOOD_HEAD + "  solver.order: {type: integer, low: 1, high: 3}\n", "solver.order.type"),
    "low_above_high": (GOOD_HEAD + "  solver.guidance: {type: float, low: 2.0, high: 1.0}\n", "solver.guidance"),
    "when_names_undefined": (
        GOOD_HEAD + "  solver.order: {type: int, low: 1, high: 3, when: {solver.name: [ddim]}}\n"
        "  solver.name: {type: categorical, choices: [ddim]}\n",
        "solver.name",
    ),
    "parameter_without_technique": (GOOD_HEAD + "  vae.tiling: {type: categorical, choices: [true]}\n", "vae.tiling"),
    "fixed_without_technique": (GOOD_HEAD + "fixed:\n  cache.interval: 2\n", "cache.interval"),
    "log_with_nonpositive_low": (GOOD_HEAD + "  solver.guidance: {type: float, low: 0, high: 2, log: true}\n", "log"),
    "not_a_mapping": ("- techniques\n- dimensions\n", "mapping"),
    "empty_techniques": ("techniques: []\n", "techniques"),
    "unknown_dimension_key": (GOOD_HEAD + "  solver.order: {type: int, low: 1, high: 3, step: 1}\n", "step"),
    "non_numeric_bound": (GOOD_HEAD + "  solver.guidance: {type: float, low: one, high: 2}\n", "solver.guidance.low"),
    "int_with_fractional_bounds": (GOOD_HEAD + "  solver.order: {type: int, low: 1.5, high: 3}\n", "solver.order"),
    "impossible_when_value": (
        GOOD_HEAD + "  solver.order: {type: int, low: 1, high: 3, when: {timesteps.steps: [42]}}\n",
        "timesteps.steps=42",
    ),
    "unknown_requires": (GOOD_HEAD + "  solver.guidance: {type: float, low: 1, high: 2, requires: text}\n", "requires"),
    "empty_choices": (GOOD_HEAD + "  solver.name: {type: categorical, choices: []}\n", "solver.name.choices"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_file_names_file_and_key(tmp_path, case):
    text, key = BAD_SPACES[case]
    path = _write(tmp_path, text, f"{case}.yaml")
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    message = str(info.value)
    assert str(path) in message
    assert key in message


def test_low_above_high_message_gives_both_bounds(tmp_path):
    path = _write(tmp_path, GOOD_HEAD + "  solver.guidance: {type: float, low: 2.0, high: 1.0}\n")
    with pytest.raises(ConfigError, match=r"dimensions\.solver\.guidance: low=2\.0 is above high=1\.0"):
        load_space(str(path))


def test_when_naming_a_later_dimension_lists_what_is_defined_above(tmp_path):
    text, _ = BAD_SPACES["when_names_undefined"]
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    assert "dimensions.solver.order.when names 'solver.name'" in str(info.value)
    assert "['timesteps.steps']" in str(info.value)


def test_unknown_technique_lists_known_ones(tmp_path):
    from autoaccel.techniques.base import registered_techniques

    known = ", ".join(sorted(technique.name for technique in registered_techniques()))
    assert "solver" in known and "timesteps" in known
    path = _write(tmp_path, BAD_SPACES["unknown_technique"][0])
    with pytest.raises(ConfigError, match=f"known: {known}"):
        load_space(str(path))


def test_unknown_type_lists_valid_types(tmp_path):
    path = _write(tmp_path, BAD_SPACES["unknown_dimension_type"][0])
    with pytest.raises(ConfigError, match="valid: int, float, categorical, schedule"):
        load_space(str(path))


def test_non_numeric_when_value_for_int_dimension_is_config_error(tmp_path):
    spec = "  solver.order: {type: int, low: 1, high: 3, when: {timesteps.steps: [many]}}\n"
    path = _write(tmp_path, GOOD_HEAD + spec)
    with pytest.raises(ConfigError, match="timesteps.steps"):
        load_space(str(path))


def test_unknown_keys_of_mixed_types_are_config_error(tmp_path):
    path = _write(tmp_path, GOOD_HEAD + "1: one\nzzz: two\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_space(str(path))


def test_schedule_count_from_list_is_config_error(tmp_path):
    spec = "  timesteps.gap: {type: schedule, count_from: [timesteps.steps], low: 0.1, high: 1}\n"
    path = _write(tmp_path, GOOD_HEAD + spec)
    with pytest.raises(ConfigError, match="count_from"):
        load_space(str(path))


def test_huge_integer_bound_is_config_error(tmp_path):
    path = _write(tmp_path, GOOD_HEAD + f"  solver.order: {{type: int, low: 1, high: {10**400}}}\n")
    with pytest.raises(ConfigError, match="solver.order.high"):
        load_space(str(path))


# --- property: parse_space raises only ConfigError ----------------------------------------------------------

_PARAMS = st.sampled_from(["timesteps.steps", "solver.name", "solver.order", "solver.guidance", "timesteps.gap"])
_TEXT = st.one_of(
    st.sampled_from(["int", "float", "categorical", "schedule", "guidance", "ddim", "solver", "timesteps", ""]),
    _PARAMS,
    st.text(max_size=4),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=12),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
)
_KEYS = st.one_of(_TEXT, st.integers(min_value=-2, max_value=3), st.booleans(), st.none())
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=4)),
    max_leaves=10,
)
_BOUNDS = st.one_of(st.integers(min_value=-2, max_value=12), st.floats(min_value=-1, max_value=12), _SCALARS)


def _chance(draw, percent: int) -> bool:
    return draw(st.integers(min_value=0, max_value=99)) >= 100 - percent


def _often(draw, likely, otherwise, percent: int = 85):
    """``likely`` about ``percent`` % of the time, else a draw from ``otherwise``."""
    return likely if _chance(draw, percent) else draw(otherwise)


@st.composite
def _dimensions(draw):
    """Mostly well-formed dimensions (so parsing gets past the first checks), each sometimes mutated."""
    dimensions: dict = {}
    for name in draw(st.lists(_PARAMS, min_size=1, max_size=5, unique=True)):
        kind = _often(draw, draw(st.sampled_from(["int", "float", "categorical", "schedule"])), _SCALARS)
        spec: dict = {"type": kind}
        if kind == "categorical":
            spec["choices"] = draw(st.lists(_SCALARS, min_size=1, max_size=4))
        else:
            low = draw(st.integers(min_value=0, max_value=5) if kind == "int" else st.floats(0.01, 5))
            spec["low"], spec["high"] = low, low + draw(st.integers(min_value=0, max_value=8))
            if _chance(draw, 30):
                spec["log"] = draw(st.booleans())
        if kind == "schedule":
            spec["count_from"] = _often(draw, draw(st.sampled_from([*dimensions, "timesteps.steps"])), _VALUES)
        if dimensions and _chance(draw, 40):
            other = draw(st.sampled_from(list(dimensions)))
            spec["when"] = {other: draw(st.one_of(_SCALARS, st.lists(_SCALARS, min_size=1, max_size=3)))}
        if _chance(draw, 15):
            spec["requires"] = _often(draw, "guidance", _SCALARS)
        if _chance(draw, 25):  # one key gets a value of any YAML-ish type
            spec[draw(st.sampled_from(["type", "low", "high", "log", "choices", "when", "requires", "count_from"]))] = (
                draw(_VALUES)
            )
        if _chance(draw, 8):
            spec[draw(_KEYS)] = draw(_VALUES)
        dimensions[name] = _often(draw, spec, _VALUES, percent=90)
    if _chance(draw, 8):
        dimensions[draw(_KEYS)] = draw(_VALUES)
    return dimensions


@st.composite
def _space_documents(draw):
    """Mostly space-shaped mappings (so parsing gets deep), sometimes any YAML-ish value."""
    if _chance(draw, 15):
        return draw(_VALUES)
    document = {
        "techniques": _often(draw, ["solver", "timesteps"], st.one_of(st.lists(_TEXT, max_size=3), _VALUES)),
        "dimensions": _often(draw, draw(_dimensions()), _VALUES, percent=90),
    }
    if draw(st.booleans()):
        document["fixed"] = draw(st.one_of(st.dictionaries(st.one_of(_PARAMS, _KEYS), _SCALARS, max_size=3), _VALUES))
    if draw(st.booleans()):
        document["name"] = draw(_SCALARS)
    if _chance(draw, 10):
        document[draw(_KEYS)] = draw(_VALUES)
    return document


def _int_like(value) -> bool:
    try:
        int(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(document=_space_documents())
def test_parse_space_raises_only_config_error(document):
    try:
        space = parse_space(document, source="fuzz.yaml")
    except ConfigError as error:
        assert "fuzz.yaml" in str(error)
        return
    # a space that parses is usable: every dimension has bounds or choices, and conditions name earlier dimensions
    for position, dimension in enumerate(space.dimensions):
        assert dimension.name.split(".", 1)[0] in space.techniques
        if dimension.kind == "categorical":
            assert dimension.choices
        else:
            assert dimension.low <= dimension.high
        earlier = set(space.names[:position])
        assert all(other in earlier for other, _ in dimension.when)


def test_parse_space_accepts_yaml_round_trip_of_bundled_space():
    space = load_space("sampler")
    document = yaml.safe_load(Path(space.source).read_text())
    assert parse_space(document, source=space.source).dimensions == space.dimensions
