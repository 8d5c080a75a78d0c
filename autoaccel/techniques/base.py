"""The one interface every technique implements, and the registry that orders and stacks them.

A technique is a config dataclass, a way to build it from a candidate's parameters (its own namespace of the
space, e.g. ``solver.*``), and ``apply(pipeline, config, target)``. It declares each setting a space may name
(``params``: setting -> ParamSpec), so a space file is checked when it loads, not when every trial fails.
Each technique also says which of its settings change what a deployment costs (``cost_key``): latency is measured
once per cost structure and reused, so a technique that changes cost without changing the parameter count or the
number of unet calls (a cache, a compiled graph, a distilled student) still gets a timing of its own.
Adding a technique is one new module that calls ``register``; nothing else changes.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

from autoaccel.errors import ConfigError

PARAM_KINDS = ("int", "float", "bool", "choice")
SAMPLER_PARTS = ("scheduler", "schedule")  # what of the sampler a technique may decide (``Technique.decides``)
TRAIN_MINUTES = "train_minutes"  # set on a model a technique trained: the plan's search cost, recorded per trial
# set on a model that torch.compile compiles (0.0 before its first call): seconds spent compiling, search cost too
COMPILE_SECONDS = "compile_seconds"


@dataclass(frozen=True)
class ParamSpec:
    """What one setting accepts: an ``int`` or ``float`` within ``low``/``high`` (inclusive unless ``low_open``/
    ``high_open``; None is unbounded), a ``bool``, or a ``choice`` among ``choices`` (type and value must match).

    ``item_name`` marks a list setting searched one element at a time: a schedule dimension ``<technique>.<item>``
    expands into ``<item>_0, <item>_1, ...``, each element checked by this spec, at most ``max_length`` of them.
    ``target_limit`` names a limit of the model (``num_train_timesteps``, ``Target.limits``, or one a technique
    reads off the denoiser's layout, ``Technique.target_limits``) that bounds ``high`` further for a model;
    with ``narrows_to_target`` a space's dimension is cut to that bound for each model (what a space shared by
    models of different depth needs) instead of being refused, while a fixed value beyond it still is.
    """

    kind: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    item_name: str | None = None
    max_length: int | None = None
    target_limit: str | None = None
    narrows_to_target: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"ParamSpec.kind={self.kind!r}; valid: {', '.join(PARAM_KINDS)}")

    def item(self) -> ParamSpec:
        """The spec of one element of a list setting."""
        return replace(self, item_name=None, max_length=None)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is valid for this setting; never looks deeper than one list level."""
        if self.item_name is not None:
            if not isinstance(value, list | tuple) or len(value) > (self.max_length or math.inf):
                return False
            return all(self.item().accepts(element) for element in value)
        if self.kind == "choice":
            return any(type(value) is type(choice) and value == choice for choice in self.choices)
        if self.kind == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else int | float):
            return False
        return _finite(value) and self._within(value)

    def _within(self, value: int | float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """What is valid, in words: ``an int in [1, 1000]``, ``one of ['zero', 'sigma_min']``."""
        if self.item_name is not None:
            return f"a list of at most {self.max_length} values, each {self.item().describe()}"
        if self.kind == "choice":
            return "one of [" + ", ".join("null" if choice is None else repr(choice) for choice in self.choices) + "]"
        if self.kind == "bool":
            return "true or false"
        noun = "an int" if self.kind == "int" else "a float"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high}"
        return noun


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float range
        return False


@dataclass(frozen=True)
class SearchWork:
    """What applying a config computes while its trial runs, besides sampling and scoring the plan's images, in
    rows (a row: one sample through a network once; a guided call of the denoiser is two rows): what the search's
    estimate multiplies by a timed call (``autoaccel.search.estimate``).

    ``trained``: denoiser rows with a backward pass (a student's training step, a rollout a schedule is fitted
    through); ``teacher``: denoiser rows without one that training runs (the teacher's targets, its samples);
    ``calibration``: denoiser rows without one that calibration runs (replays, an uncached pass); ``decoded``:
    rows through the model's VAE decoder (a tiny decoder's targets); ``shared``: what is made once per model and
    kept for every trial that uses it (teacher samples, trajectories, a kept decoder), by a name saying what it
    is, counted once per search."""

    trained: float = 0.0
    teacher: float = 0.0
    calibration: float = 0.0
    decoded: float = 0.0
    shared: Mapping[str, SearchWork] = field(default_factory=dict)

    def __add__(self, other: SearchWork) -> SearchWork:
        return SearchWork(
            self.trained + other.trained,
            self.teacher + other.teacher,
            self.calibration + other.calibration,
            self.decoded + other.decoded,
            {**self.shared, **other.shared},
        )

    def scaled(self, factor: float) -> SearchWork:
        """This trial's own work times ``factor`` (its shared work left out)."""
        return SearchWork(
            self.trained * factor, self.teacher * factor, self.calibration * factor, self.decoded * factor
        )


def guided_rows(target: Any) -> int:
    """Rows of one call of ``target``'s teacher at its default guidance: 2 where it guides (both branches)."""
    guides = float(getattr(target, "reference_guidance", 1.0)) != 1.0 and target.conditions.guidable
    return 2 if guides else 1


@dataclass(frozen=True)
class Technique:
    """A named way to change a pipeline; ``order`` fixes where it applies when several are stacked."""

    name: str
    order: int
    config_cls: type
    apply: Callable[..., None]
    version: int = 1
    modifies_model: bool = False  # replaces the pipeline's unet: a recipe must re-apply it to reproduce images
    simulated: bool = False  # scored by simulation (fake quantization): trials, reports and recipes say so
    # changes how the plan's model runs (precision, compiler, kernels), not what the plan computes: the report
    # splits a plan's speed-up into this part and the algorithmic rest, timing the plan without it
    runtime_only: bool = False
    # (config, target) -> whether the config runs the target's model as loaded, for a ``runtime_only`` technique
    # whose unchanged settings depend on the target (its loaded precision); None: its ``unchanged_params``
    runs_as_loaded: Callable[[Any, Any], bool] | None = None
    # (target, or None for a float32 model) -> settings (without the prefix) naming the model as loaded where the
    # unchanged value (None: as loaded) is no choice a space offers: a baseline takes them where a space searches them
    loaded_params: Callable[[Any], Mapping[str, Any]] | None = None
    # config -> whether that config is simulated, for a ``simulated`` technique whose configs may run for real
    # (quantization on a backend's kernels); None: every config of a ``simulated`` technique is
    simulates: Callable[[Any], bool] | None = None
    # what of the sampler applying it sets (SAMPLER_PARTS): ``scheduler`` (its class, settings and the guidance
    # scale), ``schedule`` (the timesteps or sigmas); what none decides is the model's default call (build_pipeline)
    decides: tuple[str, ...] = ()
    group_params: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # settings (without the ``name.`` prefix) that leave the model unchanged: what baselines use in a joint space
    unchanged_params: Mapping[str, Any] = field(default_factory=dict)
    # every setting a space may name (without the ``name.`` prefix) and what it accepts
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    # config -> the settings that change deployment cost (plain, JSON-serialisable values); {} when the config
    # leaves the deployment as it is. None: every setting is taken to change cost (never a wrongly shared timing)
    cost_key: Callable[[Any], Mapping[str, Any]] | None = None
    # (unet, config) -> the Artifact of the model this technique produced, or None when there is nothing worth
    # storing (pruning ratio 0): recipes name it and applying rebuilds from it instead of training again
    artifact_state: Callable[[Any, Any], Any] | None = None
    # (pipeline, config, target, artifact) -> None: the model rebuilt from its artifact, without training
    from_artifact: Callable[[Any, Any, Any, Any], None] | None = None
    # config -> what applying it without its artifact runs again, in words ("pruning with 200 recovery steps"),
    # or None when that costs nothing worth saying
    recompute: Callable[[Any], str | None] | None = None
    # what ``recompute`` names runs on a float32 copy of the model (training, calibration): refused on a target
    # loaded in another precision (``target.dtype``), with the way to the same plan; or (config, target) -> whether
    # that config does (a LoRA student trains an adapter on the model as loaded)
    float32_copy: bool | Callable[[Any, Any], bool] = False
    # (pipeline, config) -> what applying computed from the pipeline that its recipe records beside the config
    # (a cache's calibration at the plan's schedule), or None
    recipe_record: Callable[[Any, Any], dict[str, Any] | None] | None = None
    # config -> whether the model it produces must be sampled its own way (a distilled student): its prescribed
    # scheduler, timesteps and guidance override the sampler techniques' (autoaccel.pipeline.prescribed)
    prescribes_sampler: Callable[[Any], bool] | None = None
    # the setting (without the ``name.`` prefix) capping this technique's training in minutes, for a technique
    # that trains: ``budget.max_train_minutes`` fills it where a space leaves it free
    max_minutes_param: str | None = None
    # the setting (without the prefix) giving the share of this technique's training a lower fidelity level does
    # (``fidelity.train_shares``); the technique continues a promoted candidate from its checkpoint
    train_share_param: str | None = None
    # target -> limits this technique reads off the model (``ParamSpec.target_limit`` names them): the cache
    # depths and methods a denoiser's layout takes
    target_limits: Callable[[Any], Mapping[str, int | tuple]] | None = None
    # (a trial's candidate parameters, all techniques') -> a few words for this technique's part of the plan in the
    # progress log, or None where it adds none. A technique that prescribes the sampler (``prescribes_sampler``)
    # names the whole plan when it gives words; otherwise the words of the others are joined with "/"
    label: Callable[[Mapping[str, Any]], str | None] | None = None
    # the setting (without the prefix) whose value names this technique's part of every plan (the solver's name,
    # the schedule family): its label where it has no ``label``, and a column of the report's failed trials
    label_param: str | None = None
    # (schedule family, step count) -> this technique's settings (without the prefix) in the configurations users
    # run by default, each with its name (None: it adds no name): the baselines the report measures the search's
    # gain against. Every combination of the techniques' lists is one baseline; techniques without it stay as the
    # space leaves them
    standard_settings: Callable[[str, int], list[tuple[str | None, dict[str, Any]]]] | None = None
    # (schedule family) -> the values a setting (without the prefix) can take on a model of that family, for the
    # settings where the family decides: a space naming others is refused when the run starts
    family_choices: Callable[[str], Mapping[str, tuple]] | None = None
    # the setting (without the prefix) holding the number of sampling steps, and the one holding the guidance
    # scale: what a call's denoiser evaluations follow (estimates) and what baselines set
    steps_param: str | None = None
    guidance_param: str | None = None
    # (model) -> what this technique simulates on the model, in words (a quantization plan), or None where it
    # simulates nothing there; only for a ``simulated`` technique: trials record what was simulated
    simulation: Callable[[Any], str | None] | None = None
    # (model) -> parameter name -> the bytes a deployment stores for it, for the parameters this technique stores
    # otherwise than at their dtype (quantized weights); the others count at their dtype
    stored_bytes: Callable[[Any], Mapping[str, int]] | None = None
    # (model) -> how this technique's model runs when deployed (``Deployment``), or None where it runs as it is:
    # latency is timed on what a deployment runs, never on a simulation
    deployment: Callable[[Any], Deployment | None] | None = None
    # (a call's sampler name, or None for the model's own scheduler, and that scheduler's class name) -> whether
    # the call adds fresh noise at every step (ancestral DDPM), for the techniques that know samplers
    adds_noise: Callable[[str | None, str], bool] | None = None
    # (config, target, denoiser calls per image of the plan's sampling) -> what applying the config trains and
    # calibrates (``SearchWork``), for a technique that does either: what the search's estimate counts for it
    search_work: Callable[[Any, Any, float], SearchWork] | None = None

    def simulated_by(self, config: Any) -> bool:
        """Whether ``config`` is scored by simulation: what its recipe section and the recipe's list say."""
        return self.simulated and (self.simulates is None or bool(self.simulates(config)))

    def prescribes(self, config: Any) -> bool:
        return self.prescribes_sampler is not None and bool(self.prescribes_sampler(config))

    def cost_settings(self, config: Any) -> dict[str, Any]:
        """What of ``config`` a latency measurement depends on: plans that agree here share one timing."""
        if self.cost_key is None:
            return asdict(config)
        return dict(self.cost_key(config))

    def param_spec(self, setting: str) -> ParamSpec | None:
        """The spec a space's ``name.<setting>`` is checked against; ``gap_3`` is one element of the list setting
        whose ``item_name`` is ``gap``. None for a setting this technique does not have."""
        if setting in self.params:
            return self.params[setting]
        for spec in self.params.values():
            matched = spec.item_name and re.fullmatch(rf"{re.escape(spec.item_name)}_(\d+)", setting)
            if matched and int(matched.group(1)) < (spec.max_length or math.inf):
                return spec.item()
        return None

    def list_spec(self, item_name: str) -> tuple[str, ParamSpec] | None:
        """The list setting a schedule dimension ``name.<item_name>`` searches, with its spec."""
        for setting, spec in self.params.items():
            if spec.item_name == item_name:
                return setting, spec
        return None

    def describe_params(self) -> str:
        """The settings a space may name, for error messages."""
        names = []
        for setting, spec in self.params.items():
            names.append(f"{self.name}.{setting}")
            if spec.item_name:
                names[-1] += f" (searched per element as a schedule {self.name}.{spec.item_name})"
        return ", ".join(names) or "none declared"

    def config_from_params(self, params: Mapping[str, Any]):
        """Builds this technique's config from the ``name.*`` entries of a candidate's parameters.

        ``group_params`` lets a technique fold flat dimensions (``gap_0``, ``gap_1``, ...) into one field.
        """
        prefix = f"{self.name}."
        own = {key[len(prefix) :]: value for key, value in params.items() if key.startswith(prefix)}
        if self.group_params is not None:
            own = self.group_params(own)
        known = {field.name for field in fields(self.config_cls)}
        unknown = sorted(set(own) - known)
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(prefix + key for key in unknown)}; "
                f"{self.name} takes: {', '.join(sorted(prefix + key for key in known))}"
            )
        return self.config_cls(**own)


class Deployment(Protocol):
    """What a technique that simulates on a model tells latency measurement (``autoaccel.measure.kernels``)."""

    label: str  # the kernels a timing runs, for the trial's details
    real_kernels: bool  # whether they are the deployment's own kernels (else its latency is "not measured")
    key: str  # the part of a cost-cache key the kernels decide: empty where they are float kernels

    def running(self, pipeline: Any, real_kernels: bool) -> AbstractContextManager[None]:
        """The pipeline runs what a deployment would for the duration (the simulation off, real kernels where
        ``real_kernels`` and the machine has them)."""
        ...


def require_types(config: Any, prefix: str, types: Mapping[str, type | tuple[type, ...]]) -> None:
    """Raises ConfigError naming ``prefix.field`` if a field is not of its type (bool never counts as a number,
    NaN and infinity never as a float): configs come from recipes users may edit."""
    import math

    for name, kind in types.items():
        value = getattr(config, name)
        numeric = kind in (int, float) or kind == (int, float)
        if (numeric and isinstance(value, bool)) or not isinstance(value, kind):
            wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(f"{prefix}.{name}={value!r} is not valid; it must be a {wanted}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}.{name}={value!r} is not valid; it must be finite")


_REGISTRY: dict[str, Technique] = {}
# The built-in techniques, imported by name the first time the registry is read (as the optimizer backends are):
# this module depends on none of them, and importing one technique does not import the others.
BUILTIN_MODULES = tuple(
    f"autoaccel.techniques.{name}"
    for name in (
        "assignment",
        "caching",
        "decoder",
        "distillation",
        "pruning",
        "quantization",
        "runtime",
        "solver",
        "timesteps",
    )
)


def register(technique: Technique) -> Technique:
    if technique.name in _REGISTRY:
        raise ValueError(f"a technique named {technique.name!r} is already registered")
    _REGISTRY[technique.name] = technique
    return technique


def get_technique(name: str) -> Technique:
    _load_builtin_techniques()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown technique {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_techniques() -> list[Technique]:
    """All techniques, in the order they apply."""
    _load_builtin_techniques()
    return sorted(_REGISTRY.values(), key=lambda technique: technique.order)


def unchanged_model_params() -> dict[str, Any]:
    """Settings of every registered technique that leave the model as it is (no pruning, no quantization)."""
    return {
        f"{technique.name}.{key}": value
        for technique in registered_techniques()
        for key, value in technique.unchanged_params.items()
    }


def loaded_model_params(target: Any = None) -> dict[str, Any]:
    """The settings that name ``target``'s model as loaded (None: a float32 model), for the techniques whose
    unchanged value is no choice of a space (``Technique.loaded_params``)."""
    return {
        f"{technique.name}.{key}": value
        for technique in registered_techniques()
        if technique.loaded_params is not None
        for key, value in technique.loaded_params(target).items()
    }


def without_runtime(params: Mapping[str, Any], techniques: Iterable[str], target: Any) -> dict[str, Any] | None:
    """``params`` with the settings of every ``runtime_only`` technique among ``techniques`` put back to the
    model as loaded: the plan's algorithmic part alone. None where no runtime setting changes ``target``'s plan."""
    plain, changed = dict(params), False
    for name in techniques:
        technique = get_technique(name)
        if not technique.runtime_only:
            continue
        unchanged = {f"{name}.{key}": value for key, value in technique.unchanged_params.items()}
        config = technique.config_from_params(plain)
        if technique.runs_as_loaded is not None:
            changed |= not technique.runs_as_loaded(config, target)
        else:
            changed |= config != technique.config_from_params(unchanged)
        plain.update(unchanged)
    return plain if changed else None


def target_limits(target) -> dict[str, int | tuple]:
    """Everything that bounds a space's settings for ``target``: the model's own limits and those each technique
    reads off its denoiser (what ``SearchSpace.for_target`` takes)."""
    limits = dict(target.limits)
    for technique in registered_techniques():
        if technique.target_limits is not None:
            limits.update(technique.target_limits(target))
    return limits


def candidate_work(
    params: Mapping[str, Any], techniques: Iterable[str], target: Any, calls_per_image: float
) -> SearchWork:
    """What a candidate's techniques train and calibrate while its trial runs (``Technique.search_work``); a
    technique that refuses the candidate's settings adds nothing (the trial fails before it trains)."""
    total = SearchWork()
    for name in techniques:
        technique = get_technique(name)
        if technique.search_work is None:
            continue
        try:
            config = technique.config_from_params(params)
        except ConfigError:
            continue
        total = total + technique.search_work(config, target, calls_per_image)
    return total


def setting_with(role: str) -> str | None:
    """The full name (``technique.setting``) of the setting a technique declares for ``role``
    (``steps_param``, ``guidance_param``), or None when no technique declares one."""
    for technique in registered_techniques():
        setting = getattr(technique, role)
        if setting is not None:
            return f"{technique.name}.{setting}"
    return None


def standard_settings(family: str, steps: int) -> list[tuple[list[str], dict[str, Any]]]:
    """The configurations users run by default at ``steps`` steps on a model of schedule ``family``: every
    combination of the techniques' ``standard_settings``, each as its names and its settings (full names)."""
    combined: list[tuple[list[str], dict[str, Any]]] = [([], {})]
    for technique in registered_techniques():
        if technique.standard_settings is None:
            continue
        combined = [
            ([*names, name] if name is not None else names, {**settings, **_prefixed(technique.name, own)})
            for names, settings in combined
            for name, own in technique.standard_settings(family, steps)
        ]
    return combined


def family_choices(family: str) -> dict[str, tuple]:
    """Setting (full name) -> the values it can take on a model of schedule ``family``, where the family decides."""
    return {
        f"{technique.name}.{setting}": allowed
        for technique in registered_techniques()
        if technique.family_choices is not None
        for setting, allowed in technique.family_choices(family).items()
    }


def _prefixed(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{name}.{key}": value for key, value in settings.items()}


def plan_label(candidate: Mapping[str, Any]) -> str:
    """A few words for a trial's plan in the progress log, from the techniques' ``label``s: the sampler's words
    (solver and schedule family), or those of a technique that prescribes its own sampler (a distilled model);
    ``default call`` for a plan that changes nothing the labels name."""
    labelled = [technique for technique in registered_techniques() if technique.label or technique.label_param]
    for technique in labelled:
        if technique.prescribes_sampler is not None and (words := _words(technique, candidate)) is not None:
            return words
    words = (_words(technique, candidate) for technique in labelled if technique.prescribes_sampler is None)
    return "/".join(word for word in words if word is not None) or "default call"


def _words(technique: Technique, candidate: Mapping[str, Any]) -> str | None:
    """The technique's words for the plan; None where the candidate does not name it (a plan without a solver
    runs the model's default call's)."""
    if technique.label is not None:
        return technique.label(candidate)
    value = candidate.get(f"{technique.name}.{technique.label_param}")
    return None if value is None else str(value)


def label_settings() -> list[str]:
    """The settings (full names) whose values name every plan (``Technique.label_param``), in technique order."""
    techniques = registered_techniques()
    return [f"{technique.name}.{technique.label_param}" for technique in techniques if technique.label_param]


def simulations(model: Any) -> dict[str, str]:
    """Technique name -> what it simulates on ``model``, for the simulated techniques that simulate there."""
    found = {}
    for technique in registered_techniques():
        if technique.simulated and technique.simulation is not None:
            described = technique.simulation(model)
            if described is not None:
                found[technique.name] = described
    return found


def stored_bytes(model: Any) -> dict[str, int]:
    """Parameter name -> bytes stored, for the parameters a technique stores otherwise than at their dtype."""
    found: dict[str, int] = {}
    for technique in registered_techniques():
        if technique.stored_bytes is not None:
            found.update(technique.stored_bytes(model))
    return found


def deployment(model: Any) -> Deployment | None:
    """How ``model`` runs when deployed, where a technique runs it otherwise than as it is (None: as it is)."""
    for technique in registered_techniques():
        if technique.deployment is not None:
            found = technique.deployment(model)
            if found is not None:
                return found
    return None


def sampler_adds_noise(sampler: str | None, scheduler_class: str) -> bool:
    """Whether a call with ``sampler`` (None: the model's own scheduler, of class ``scheduler_class``) adds fresh
    noise at every step, as the techniques that know samplers say (``Technique.adds_noise``)."""
    return any(
        technique.adds_noise(sampler, scheduler_class)
        for technique in registered_techniques()
        if technique.adds_noise is not None
    )


def _load_builtin_techniques() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
