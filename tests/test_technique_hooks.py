"""What modules outside ``techniques/`` know of a technique, they learn from the technique itself: a technique
registered with its own hooks shows up in plan labels, baselines, simulation records, stored sizes and timed
kernels with no other change."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from autoaccel.cli.search_command import plan_label
from autoaccel.measure.kernels import NOT_APPLICABLE, NOT_MEASURED, deployment_kernels, kernel_choice, kernel_key
from autoaccel.measure.size import model_bytes
from autoaccel.search.loop import standard_configurations
from autoaccel.space.spaces import load_space, parse_space
from autoaccel.techniques import base
from autoaccel.techniques.base import Technique, simulations


@dataclass(frozen=True)
class ProbeConfig:
    level: int = 0


def _register(monkeypatch, **hooks) -> Technique:
    technique = Technique(name="probe", order=30, config_cls=ProbeConfig, apply=lambda *args: None, **hooks)
    base.registered_techniques()  # the built-in techniques first, so the probe is only added
    monkeypatch.setitem(base._REGISTRY, "probe", technique)
    return technique


def test_a_technique_with_a_label_shows_in_plan_labels(monkeypatch):
    candidate = {"solver.name": "ddim", "timesteps.family": "karras", "probe.level": 3}
    assert plan_label(candidate) == "ddim/karras"
    _register(monkeypatch, label=lambda params: f"probe{params['probe.level']}")
    assert plan_label(candidate) == "ddim/karras/probe3"


def test_a_technique_that_prescribes_its_sampler_names_the_whole_plan_when_it_labels_it(monkeypatch):
    _register(
        monkeypatch,
        prescribes_sampler=lambda config: config.level > 0,
        label=lambda params: f"own-{params['probe.level']}" if params.get("probe.level") else None,
    )
    assert plan_label({"solver.name": "ddim", "timesteps.family": "karras", "probe.level": 2}) == "own-2"
    assert plan_label({"solver.name": "ddim", "timesteps.family": "karras"}) == "ddim/karras"
    distilled = {"distillation.method": "progressive", "distillation.steps": 4, "assignment.teacher_steps": 1}
    assert plan_label(distilled) == "progressive-4+teacher1"  # the earlier technique in order names it


def test_a_technique_with_standard_settings_multiplies_the_baselines(monkeypatch):
    space = load_space("sampler")
    plain = [tag for tag, _ in standard_configurations(space, [4])]
    assert plain == ["ddim-4", "dpmsolver++2m-4", "unipc-4"]
    _register(
        monkeypatch,
        standard_settings=lambda family, steps: [("low", {"level": 1}), ("high", {"level": 2})],
        params={"level": base.ParamSpec("choice", choices=(0, 1, 2))},
    )
    document = yaml.safe_load(Path(space.source).read_text())
    document["techniques"] = [*document["techniques"], "probe"]
    document["dimensions"]["probe.level"] = {"type": "categorical", "choices": [0, 1, 2]}
    configurations = standard_configurations(parse_space(document), [4])
    tags = [tag for tag, _ in configurations]
    assert tags == [f"{solver}-{level}-4" for solver in ("ddim", "dpmsolver++2m", "unipc") for level in ("low", "high")]
    assert [searched["probe.level"] for _, searched in configurations] == [1, 2] * 3
    # a space without the technique runs it unchanged: each solver's baseline once, not once per level
    assert len(standard_configurations(space, [4])) == 3


def test_the_flow_family_baselines_start_from_euler():
    tags = [tag for tag, _ in standard_configurations(load_space("flow_sampler"), [4], family="flow")]
    assert tags == ["flow_euler-4", "dpmsolver++2m-4", "unipc-4"]


def test_a_simulated_technique_is_reported_simulated_and_an_unsimulated_one_is_not(monkeypatch):
    model = torch.nn.Linear(4, 4)
    _register(monkeypatch, simulated=True, simulation=lambda unet: "probe plan" if unet is model else None)
    assert simulations(model) == {"probe": "probe plan"}
    assert simulations(torch.nn.Linear(4, 4)) == {}
    monkeypatch.setitem(
        base._REGISTRY, "probe", Technique("probe", 30, ProbeConfig, lambda *args: None, simulation=lambda unet: "x")
    )
    assert simulations(model) == {}  # only a technique declared ``simulated`` simulates


def test_a_technique_that_stores_parameters_otherwise_changes_the_model_size(monkeypatch):
    model = torch.nn.Linear(8, 4)  # 32 weights and 4 biases, float32
    assert model_bytes(model) == 36 * 4
    _register(monkeypatch, stored_bytes=lambda unet: {"weight": 5})
    assert model_bytes(model) == 5 + 4 * 4


@dataclass
class _ProbeDeployment:
    label: str = "probe kernels"
    real_kernels: bool = False
    key: str = "|probe"
    running_now: bool = False

    @contextlib.contextmanager
    def running(self, pipeline, real_kernels: bool):
        self.running_now = True
        try:
            yield
        finally:
            self.running_now = False


def test_a_technique_with_a_deployment_decides_what_a_timing_runs(monkeypatch):
    model = torch.nn.Linear(4, 4)
    pipeline = type("Pipeline", (), {"denoiser": model})()
    assert kernel_choice(model).quantized_latency == NOT_APPLICABLE and kernel_key(model) == ""
    deployed = _ProbeDeployment()
    _register(monkeypatch, deployment=lambda unet: deployed if unet is model else None)
    assert kernel_key(model) == "|probe"
    assert (kernel_choice(model).label, kernel_choice(model).quantized_latency) == ("probe kernels", NOT_MEASURED)
    with deployment_kernels(pipeline) as choice:
        assert deployed.running_now and choice.label == "probe kernels"
    assert not deployed.running_now


@pytest.mark.parametrize("folder", ["measure"])
def test_measurement_imports_no_technique_module_but_the_interface(folder):
    import ast
    from pathlib import Path

    import autoaccel

    package = Path(autoaccel.__file__).parent
    for path in sorted((package / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("autoaccel.techniques"):
                    assert name == "autoaccel.techniques.base", f"{path.name} imports {name}"


def test_a_technique_naming_plans_by_a_setting_labels_them_and_heads_the_failed_trials(monkeypatch):
    from autoaccel.techniques.base import label_settings

    assert label_settings() == ["solver.name", "timesteps.family"]
    _register(monkeypatch, label_param="level")
    assert label_settings() == ["solver.name", "timesteps.family", "probe.level"]
    assert plan_label({"solver.name": "unipc", "timesteps.family": "power", "probe.level": 2}) == "unipc/power/2"
    assert plan_label({"solver.name": "unipc"}) == "unipc"  # what the plan does not name is not shown


def test_no_module_outside_the_techniques_names_a_techniques_setting():
    """The search, the space, measurement, plans and reports learn what they need of a technique from its
    declarations: a setting name (``solver.name``, ``caching.method``) written anywhere else would be knowledge of
    one technique leaking out (the techniques' own modules, their training code in ``distill/`` and the test kit's
    examples may name them)."""
    import re
    from pathlib import Path

    import autoaccel
    from autoaccel.techniques.base import registered_techniques

    settings = [f"{technique.name}.{setting}" for technique in registered_techniques() for setting in technique.params]
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, settings)) + r")(?![\w])")
    package = Path(autoaccel.__file__).parent
    named = [
        f"{path.relative_to(package)}:{number}: {found.group(1)}"
        for path in sorted(package.rglob("*.py"))
        if not path.relative_to(package).as_posix().startswith(("techniques/", "distill/", "testing/"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for found in [pattern.search(line)]
        if found
    ]
    assert named == []


def test_a_plan_that_names_no_sampler_is_labelled_by_what_it_changes_or_as_the_default_call():
    assert plan_label({"runtime.dtype": "bfloat16", "runtime.compile": "default"}) == "bfloat16 compiled"
    assert plan_label({"runtime.dtype": "float32"}) == "default call"
    assert plan_label({"solver.name": "ddim", "runtime.dtype": "bfloat16"}) == "ddim/bfloat16"
