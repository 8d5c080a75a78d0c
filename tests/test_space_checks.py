"""Space files are checked strictly and safely: every key and value against what the techniques declare, sizes
against limits before anything is expanded, and the step count against the target's trained timesteps. Each
bad file stops with one line naming the file, the key and what is valid."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from dataclasses import fields
from pathlib import Path

import pytest

from autoaccel.errors import ConfigError
from autoaccel.space.spaces import (
    MAX_CHOICES,
    MAX_FILE_BYTES,
    MAX_TEXT,
    MAX_TOTAL_CHOICES,
    TARGET_CAPABILITIES,
    load_space,
    parse_space,
)
from autoaccel.techniques.base import registered_techniques

CHILD_MEMORY_MB = 768  # address space a child may add to what it inherits: far below what a bomb needs
CHILD_TIMEOUT_S = 60  # generous on a busy 2-core machine; a good load takes well under a second


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_line_config_error(path: Path) -> str:
    """The message of the ConfigError ``load_space(path)`` raises; it names the file and is one line."""
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


# --- loading under a memory limit, in a forked child ---------------------------------------------------------


def _address_space_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _child_load(path: str, memory_mb: int, connection) -> None:
    import resource

    limit = _address_space_bytes() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        space = load_space(path)
        # what a run records of the space must stay small too (an accepted alias bomb would not)
        connection.send(("ok", f"{len(space.dimensions)} dimensions, repr of {len(repr(space))} characters"))
    except ConfigError as error:
        connection.send(("config", str(error)))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which fails the test
        connection.send(("other", f"{type(error).__name__}: {str(error)[:300]}"))
    finally:
        connection.close()


def load_under_memory_limit(path: Path, memory_mb: int = CHILD_MEMORY_MB) -> tuple[str, str, float]:
    """``load_space(path)`` in a forked child limited to ``memory_mb`` more address space: (outcome, detail,
    seconds), outcome ``ok``, ``config`` (a ConfigError), ``other`` (any other exception, MemoryError
    included), ``timeout`` or ``killed``. A file that would exhaust memory fails here, not on the machine."""
    load_space("sampler")  # imports every technique (torch, diffusers) here: the child only parses
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    started = time.monotonic()
    child = context.Process(target=_child_load, args=(str(path), memory_mb, sender))
    child.start()
    sender.close()
    outcome = None
    if receiver.poll(CHILD_TIMEOUT_S):
        with contextlib.suppress(EOFError):  # the child died without answering
            outcome = receiver.recv()
    elapsed = time.monotonic() - started
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
        outcome = outcome or ("timeout", f"no answer in {CHILD_TIMEOUT_S} s")
    outcome = outcome or ("killed", f"exit code {child.exitcode}")
    return outcome[0], outcome[1], elapsed


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")


# --- size bombs ------------------------------------------------------------------------------------------------

STEP_BOMB = """techniques: [timesteps]
dimensions:
  timesteps.steps: {type: int, low: 3, high: 100000000}
  timesteps.gap: {type: schedule, count_from: timesteps.steps, low: 0.1, high: 1.0}
"""


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" as one YAML flow list: its last element has ``width ** levels`` leaves (9 ** 9 is
    387 million), written in under 700 bytes through anchors and aliases."""
    anchors = [f"&l0 [{', '.join(['ddim'] * width)}]"]
    anchors += [f"&l{level} [{', '.join([f'*l{level - 1}'] * width)}]" for level in range(1, levels)]
    return f"[{', '.join(anchors)}]"


@needs_proc
def test_huge_step_count_is_refused_before_the_schedule_expands(tmp_path):
    path = _write(tmp_path, STEP_BOMB)
    assert path.stat().st_size < 200
    outcome, detail, seconds = load_under_memory_limit(path)
    assert outcome == "config", detail
    assert str(path) in detail
    assert "dimensions.timesteps.steps.high=100000000" in detail
    assert "an int in [1, 1000]" in detail
    assert seconds < CHILD_TIMEOUT_S


@needs_proc
def test_schedule_counted_by_another_int_dimension_is_limited_before_expanding(tmp_path):
    path = _write(
        tmp_path,
        "techniques: [pruning, timesteps]\n"
        "dimensions:\n"
        "  pruning.recovery_steps: {type: int, low: 0, high: 100000000}\n"
        "  timesteps.gap: {type: schedule, count_from: pruning.recovery_steps, low: 0.1, high: 1.0}\n",
    )
    outcome, detail, _ = load_under_memory_limit(path)
    assert outcome == "config", detail
    assert str(path) in detail and "dimensions.timesteps.gap" in detail
    assert "at most 999" in detail


@needs_proc
def test_alias_bomb_in_choices_is_refused(tmp_path):
    path = _write(
        tmp_path, f"techniques: [solver]\ndimensions:\n  solver.name: {{type: categorical, choices: {_alias_bomb()}}}\n"
    )
    assert path.stat().st_size < 800
    outcome, detail, _ = load_under_memory_limit(path)
    assert outcome == "config", detail
    assert str(path) in detail
    assert "dimensions.solver.name.choices" in detail
    assert "choices are strings, numbers, true/false or null" in detail
    assert len(detail) < 1000  # the bad value is shown briefly, not expanded


STEPS = "  timesteps.steps: {type: int, low: 3, high: 10}\n"


@pytest.mark.parametrize(
    "template",
    [
        "name: BOMB\n",
        "description: BOMB\n",
        "fixed:\n  solver.name: BOMB\n",
        "fixed:\n  timesteps.gaps: BOMB\n",
        "dimensions:\n  solver.guidance: {type: float, low: BOMB, high: 2.0}\n",
        "dimensions:\n  solver.guidance: {type: float, low: 1.0, high: 2.0, log: BOMB}\n",
        "dimensions:\n  solver.name: {type: BOMB, choices: [ddim]}\n",
        "dimensions:\n  solver.name: {type: categorical, choices: [ddim], requires: BOMB}\n",
        "dimensions:\n" + STEPS + "  solver.name: {type: categorical, choices: [ddim], when: BOMB}\n",
        "dimensions:\n"
        + STEPS
        + "  solver.name: {type: categorical, choices: [ddim], when: {timesteps.steps: BOMB}}\n",
        "dimensions:\n" + STEPS + "  timesteps.gap: {type: schedule, count_from: BOMB, low: 0.1, high: 1.0}\n",
    ],
)
@needs_proc
def test_alias_bomb_anywhere_is_a_short_quick_config_error(tmp_path, template):
    path = _write(tmp_path, "techniques: [solver, timesteps]\n" + template.replace("BOMB", _alias_bomb()))
    outcome, detail, seconds = load_under_memory_limit(path)
    assert outcome == "config", detail
    assert str(path) in detail and "\n" not in detail
    assert len(detail) < 1000  # the bad value is shown briefly, not expanded
    assert seconds < 10


def test_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = _write(tmp_path, "techniques: [solver]\n# " + "x" * MAX_FILE_BYTES + "\n")
    message = _one_line_config_error(path)
    assert f"more than a space file may have ({MAX_FILE_BYTES} bytes)" in message


def test_categorical_with_too_many_choices(tmp_path):
    choices = ", ".join(str(1.0 + index / 1000) for index in range(MAX_CHOICES + 1))
    path = _write(
        tmp_path, f"techniques: [solver]\ndimensions:\n  solver.guidance: {{type: categorical, choices: [{choices}]}}\n"
    )
    message = _one_line_config_error(path)
    assert "dimensions.solver.guidance.choices" in message
    assert f"at most {MAX_CHOICES}" in message


def test_too_many_choices_in_all(tmp_path):
    choices = ", ".join(str(0.1 + index / 1000) for index in range(MAX_CHOICES))
    count = MAX_TOTAL_CHOICES // MAX_CHOICES + 1
    lines = "".join(f"  timesteps.gap_{index}: {{type: categorical, choices: [{choices}]}}\n" for index in range(count))
    path = _write(tmp_path, "techniques: [timesteps]\ndimensions:\n" + lines)
    message = _one_line_config_error(path)
    assert f"at most {MAX_TOTAL_CHOICES}" in message


def test_long_strings_are_refused(tmp_path):
    path = _write(tmp_path, f"name: {'n' * (MAX_TEXT + 1)}\ntechniques: [solver]\n")
    message = _one_line_config_error(path)
    assert "name=" in message and f"at most {MAX_TEXT} characters" in message


def test_dimension_limit_is_checked_before_a_schedule_expands(tmp_path, monkeypatch):
    import autoaccel.space.spaces

    monkeypatch.setattr(autoaccel.space.spaces, "MAX_DIMENSIONS", 8)
    text = (
        "techniques: [timesteps]\ndimensions:\n  timesteps.steps: {type: int, low: 3, high: 10}\n"
        "  timesteps.gap: {type: schedule, count_from: timesteps.steps, low: 0.1, high: 1.0}\n"
    )
    message = _one_line_config_error(_write(tmp_path, text))
    assert "dimensions.timesteps.gap" in message and "9 schedule dimensions; at most 7" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("techniques: [solver]\nname: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
        ("techniques: [solver]\nfixed: {solver.order: " + "9" * 5000 + "}\n", "not valid YAML"),
    ],
    ids=["nesting_deeper_than_the_stack", "int_of_5000_digits"],
)
def test_yaml_python_cannot_build_is_one_line(tmp_path, text, expected):
    assert expected in _one_line_config_error(_write(tmp_path, text))


def test_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_bytes(b"techniques: [solver]\nname: \xff\xfe\n")
    assert "not UTF-8" in _one_line_config_error(path)


# --- keys and values checked against what each technique declares ---------------------------------------------

HEAD = "techniques: [solver, timesteps]\ndimensions:\n  timesteps.steps: {type: int, low: 3, high: 10}\n"

BAD_VALUES = {
    # case: (text, key named in the error, what is valid)
    "misspelt_dimension": (
        HEAD + "  timesteps.step: {type: int, low: 3, high: 10}\n",
        "'timesteps.step' is not a setting of timesteps",
        "timesteps.steps",
    ),
    "misspelt_fixed": (HEAD + "fixed: {solver.nmae: ddim}\n", "fixed.solver.nmae", "solver.name"),
    "unknown_solver_choice": (
        HEAD + "  solver.name: {type: categorical, choices: [ddim, warp_drive]}\n",
        "dimensions.solver.name.choices: 'warp_drive' is not valid",
        "one of ['ddim', 'dpmsolver++'",
    ),
    "bad_fixed_value": (
        HEAD + "fixed: {solver.final_sigma: banana}\n",
        "fixed.solver.final_sigma='banana' is not valid",
        "one of ['zero', 'sigma_min']",
    ),
    "fixed_string_for_a_number": (
        HEAD + "fixed: {solver.guidance: lots}\n",
        "fixed.solver.guidance='lots'",
        "solver.guidance takes a float",
    ),
    "fixed_float_for_an_int": (HEAD + "fixed: {timesteps.steps: 4.5}\n", "fixed.timesteps.steps=4.5", "an int"),
    "fixed_bool_for_a_number": (HEAD + "fixed: {solver.guidance: true}\n", "fixed.solver.guidance=True", "a float"),
    "range_beyond_the_technique": (
        HEAD + "  solver.guidance: {type: float, low: 0.5, high: 2.0}\n",
        "dimensions.solver.guidance.low=0.5 is not valid",
        "solver.guidance takes a float",
    ),
    "int_range_beyond_the_technique": (
        "techniques: [quantization]\ndimensions:\n  quantization.weight_bits: {type: int, low: 2, high: 12}\n",
        "dimensions.quantization.weight_bits.high=12",
        "an int in [2, 8]",
    ),
    "open_bound": (
        "techniques: [pruning]\ndimensions:\n  pruning.ratio: {type: float, low: 0.0, high: 0.9}\n",
        "dimensions.pruning.ratio.high=0.9",
        "a float in [0.0, 0.9)",
    ),
    "int_range_over_a_set_of_values": (
        "techniques: [quantization]\ndimensions:\n  quantization.activation_bits: {type: int, low: 8, high: 16}\n",
        "dimensions.quantization.activation_bits: 9 (within low..high) is not valid",
        "one of [null, 8, 16]",
    ),
    "float_dimension_for_an_int_setting": (
        "techniques: [timesteps]\ndimensions:\n  timesteps.steps: {type: float, low: 3, high: 10}\n",
        "dimensions.timesteps.steps.type=float",
        "use type int or categorical",
    ),
    "int_dimension_for_a_bool_setting": (
        HEAD + "  solver.lower_order_final: {type: int, low: 0, high: 1}\n",
        "dimensions.solver.lower_order_final.type=int",
        "true or false",
    ),
    "bool_choice_for_an_int_setting": (
        "techniques: [pruning]\ndimensions:\n  pruning.recovery_steps: {type: categorical, choices: [0, true]}\n",
        "dimensions.pruning.recovery_steps.choices: True",
        "an int >= 0",
    ),
    "schedule_below_zero": (
        HEAD + "  timesteps.gap: {type: schedule, count_from: timesteps.steps, low: 0.0, high: 1.0}\n",
        "dimensions.timesteps.gap",
        "need low > 0",
    ),
    "schedule_on_a_plain_setting": (
        HEAD + "  timesteps.rho: {type: schedule, count_from: timesteps.steps, low: 0.1, high: 1.0}\n",
        "dimensions.timesteps.rho: 'timesteps.rho' cannot be a schedule",
        "['timesteps.gap']",
    ),
    "list_setting_without_a_schedule": (
        HEAD + "  timesteps.gaps: {type: float, low: 0.1, high: 1.0}\n",
        "dimensions.timesteps.gaps: timesteps.gaps is a list",
        "schedule dimension named timesteps.gap",
    ),
    "gap_defined_twice": (
        HEAD
        + "  timesteps.gap: {type: schedule, count_from: timesteps.steps, low: 0.1, high: 1.0}\n"
        + "  timesteps.gap_3: {type: float, low: 0.1, high: 1.0}\n",
        "dimensions.timesteps.gap_3 is defined twice",
        "define each parameter once",
    ),
    "gap_beyond_the_longest_schedule": (
        HEAD + "  timesteps.gap_999: {type: float, low: 0.1, high: 1.0}\n",
        "'timesteps.gap_999' is not a setting of timesteps",
        "timesteps.gaps",
    ),
    "fixed_gaps_with_a_bad_element": (
        HEAD + "fixed: {timesteps.gaps: [0.5, -1.0]}\n",
        "fixed.timesteps.gaps=[0.5, -1.0] is not valid",
        "each a float > 0.0",
    ),
    "log_not_a_bool": (
        HEAD + "  solver.guidance: {type: float, low: 1.0, high: 2.0, log: maybe}\n",
        "dimensions.solver.guidance.log='maybe'",
        "true, false",
    ),
    "progressive_start_steps_that_do_not_halve_to_steps": (
        "techniques: [distillation]\nfixed: {distillation.steps: 3, distillation.start_steps: 64}\n"
        "dimensions:\n  distillation.method: {type: categorical, choices: [none, progressive]}\n",
        "the space can propose distillation.method='progressive'",
        "start_steps must be steps times a power of two",
    ),
    "progressive_step_range_with_steps_that_do_not_halve": (
        "techniques: [distillation]\nfixed: {distillation.method: progressive, distillation.start_steps: 64}\n"
        "dimensions:\n  distillation.steps: {type: int, low: 1, high: 8}\n",
        "distillation.steps=3",
        "so every combination is valid",
    ),
    "consistency_steps_beyond_its_original_steps": (
        "techniques: [distillation]\nfixed: {distillation.method: consistency}\ndimensions:\n"
        "  distillation.original_steps: {type: categorical, choices: [50, 2]}\n"
        "  distillation.steps: {type: categorical, choices: [1, 4]}\n",
        "distillation.original_steps=2, distillation.steps=4",
        "it must be in [1, 2]",
    ),
    "solver_order_its_solver_lacks": (
        HEAD + "  solver.name: {type: categorical, choices: [dpmsolver++, ddim]}\nfixed: {solver.order: 2}\n",
        "the space can propose solver.name='ddim'",
        "solver.order=2 is not valid for solver 'ddim'; valid: [1]",
    ),
    "training_without_end": (
        "techniques: [distillation]\nfixed: {distillation.iterations: 1000000000000, distillation.batch_size: 4096}\n",
        "fixed.distillation.iterations=1000000000000 is not valid",
        "an int in [0, 100000]",
    ),
    "training_range_without_end": (
        "techniques: [distillation]\n"
        "dimensions:\n  distillation.iterations: {type: int, low: 100, high: 1000000000000}\n",
        "dimensions.distillation.iterations.high=1000000000000 is not valid",
        "an int in [0, 100000]",
    ),
    "technique_not_a_name": ("techniques: [solver, [timesteps]]\n", "techniques: ['timesteps']", "known:"),
    "technique_listed_twice": ("techniques: [solver, solver]\n", "'solver' is listed twice", "list each once"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_key_or_value_is_one_line_naming_file_key_and_what_is_valid(tmp_path, case):
    text, key, valid = BAD_VALUES[case]
    message = _one_line_config_error(_write(tmp_path, text, f"{case}.yaml"))
    assert key in message
    assert valid in message


def test_good_values_of_every_kind_load(tmp_path):
    path = _write(
        tmp_path,
        "techniques: [pruning, quantization, solver, timesteps]\n"
        "fixed: {solver.order: null, timesteps.gaps: [0.5, 1.0], pruning.prune_heads: false, pruning.seed: 7}\n"
        "dimensions:\n"
        "  pruning.ratio: {type: float, low: 0, high: 0.89}\n"  # an int bound for a float setting
        "  quantization.activation_bits: {type: categorical, choices: [null, 8, 16]}\n"
        "  quantization.enabled: {type: categorical, choices: [true, false]}\n"
        "  timesteps.steps: {type: int, low: 1, high: 1000}\n"
        "  timesteps.gap_0: {type: float, low: 0.1, high: 1.0}\n"
        "  solver.order: {type: int, low: 1, high: 3}\n",
    )
    space = load_space(str(path))
    assert space.fixed["timesteps.gaps"] == [0.5, 1.0]
    assert "timesteps.gap_0" in space.names


@pytest.mark.parametrize(
    "name",
    ["joint", "compressed", "distilled", "pruned_sampler", "quantized_sampler", "sampler", "solver", "timesteps"],
)
def test_every_bundled_space_passes_the_checks(name):
    space = load_space(name)
    assert space.names
    capable = space.for_target(set(TARGET_CAPABILITIES), num_train_timesteps=1000)
    assert capable.names == space.names


def test_every_technique_declares_exactly_its_config_fields():
    for technique in registered_techniques():
        assert set(technique.params) == {field.name for field in fields(technique.config_cls)}, technique.name


def test_every_declared_choice_and_bound_makes_a_valid_config_alone():
    """The declarations agree with the configs' own checks where a setting does not depend on another."""
    dependent = {"solver.order", "solver.variant", "timesteps.family", "timesteps.gaps"}
    for technique in registered_techniques():
        for setting, spec in technique.params.items():
            if f"{technique.name}.{setting}" in dependent:
                continue
            values = list(spec.choices) if spec.kind == "choice" else [True, False] if spec.kind == "bool" else []
            closed_bounds = ((spec.low, spec.low_open), (spec.high, spec.high_open))
            values += [bound for bound, is_open in closed_bounds if bound is not None and not is_open]
            for value in values:
                technique.config_cls(**{setting: value})


# --- the step count against the target's trained timesteps --------------------------------------------------------


def _steps_space(tmp_path, steps: str, fixed: str = "") -> Path:
    return _write(tmp_path, f"techniques: [solver, timesteps]\n{fixed}dimensions:\n  timesteps.steps: {steps}\n")


def test_step_count_beyond_the_trained_timesteps_names_file_key_and_range(tmp_path):
    path = _steps_space(tmp_path, "{type: int, low: 3, high: 200}")
    space = load_space(str(path))
    with pytest.raises(ConfigError) as info:
        space.for_target(set(), num_train_timesteps=100)
    message = str(info.value)
    assert message.startswith(f"{path}: dimensions.timesteps.steps.high=200 is beyond")
    assert "num_train_timesteps=100" in message and "an int in [1, 100]" in message
    assert space.for_target(set(), num_train_timesteps=200).names == ["timesteps.steps"]


@pytest.mark.parametrize(
    ("steps", "fixed", "key"),
    [
        ("{type: categorical, choices: [4, 8, 150]}", "", "dimensions.timesteps.steps.choices=150"),
        ("{type: int, low: 3, high: 10}", "fixed: {timesteps.gaps: [1.0]}\n", None),
    ],
)
def test_step_choices_and_fixed_steps_are_checked_against_the_target(tmp_path, steps, fixed, key):
    space = load_space(str(_steps_space(tmp_path, steps, fixed)))
    if key is None:
        assert space.for_target(set(), num_train_timesteps=100).names == ["timesteps.steps"]
        return
    with pytest.raises(ConfigError, match=key):
        space.for_target(set(), num_train_timesteps=100)


def test_fixed_step_count_beyond_the_trained_timesteps(tmp_path):
    path = _write(tmp_path, "techniques: [timesteps]\nfixed: {timesteps.steps: 500}\n")
    with pytest.raises(ConfigError, match=r"fixed\.timesteps\.steps=500 is beyond .* an int in \[1, 100\]"):
        load_space(str(path)).for_target(set(), num_train_timesteps=100)


def test_a_run_refuses_more_steps_than_its_model_was_trained_with(fast_overrides, tmp_path):
    from autoaccel.config import compose_config
    from autoaccel.search.run import prepare_run

    path = _steps_space(tmp_path, "{type: int, low: 3, high: 101}")  # the tiny model has 100 timesteps
    config = compose_config([*fast_overrides, f"space={path}", "study_name=too-many-steps"])
    with pytest.raises(ConfigError) as info:
        prepare_run(config)
    assert str(path) in str(info.value) and "timesteps.steps" in str(info.value) and "[1, 100]" in str(info.value)
    assert not (tmp_path / "reports" / "too-many-steps").exists()


# --- the space= value itself -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_space_value_is_one_line(value):
    with pytest.raises(ConfigError) as info:
        load_space(value)
    message = str(info.value)
    assert f"space={value!r} is empty" in message
    assert "sampler" in message and "YAML file" in message and "\n" not in message


def test_space_value_naming_a_directory_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_space(str(tmp_path))
    message = str(info.value)
    assert f"space={str(tmp_path)!r} is a directory" in message
    assert "sampler" in message and "YAML file" in message


def test_parse_space_checks_documents_too():
    with pytest.raises(ConfigError, match=r"<memory>: fixed\.solver\.final_sigma='banana'"):
        parse_space({"techniques": ["solver"], "fixed": {"solver.final_sigma": "banana"}})


@pytest.mark.parametrize("name", ["distilled", "joint"])
def test_a_bundled_space_never_hands_the_teacher_every_step_of_a_student(name):
    """``assignment.teacher_steps`` is searched only where the student has a step left to run: a 1-step student
    whose one step the teacher takes trains for minutes and then fails."""
    space = load_space(name)
    teacher = space.dimension("assignment.teacher_steps")
    for method in space.dimension("distillation.method").choices:
        for steps in space.dimension("distillation.steps").choices:
            params = {"distillation.method": method, "distillation.steps": steps, "caching.method": "none"}
            if teacher.is_active(params):
                assert steps > max(teacher.choices), (method, steps)
