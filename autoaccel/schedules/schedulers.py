"""The diffusers scheduler classes autoaccel builds by name, and the bounds on settings read from a file.

A recipe (its ``scheduler`` and its ``base_model``), a distilled model's artifact (its prescribed sampler) and a
pipeline folder (``scheduler/scheduler_config.json``) each name a scheduler class and its settings, and diffusers
builds the class of that name. Every such name goes through ``scheduler_class``: only a listed scheduler is looked
up, so a file cannot make autoaccel build a model or reach a module. Every count in the settings is bounded by
``check_scheduler_settings`` before a scheduler allocates tables that long.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.schedules.solvers import FLOW_SOLVERS, SOLVERS

MAX_TRAIN_TIMESTEPS = 1_000_000  # schedulers allocate tables of this length; real models train on about 1000
MAX_INFERENCE_STEPS = 10_000  # sampling steps a file may ask for: real default calls run at most a few thousand
MAX_SETTING = MAX_TRAIN_TIMESTEPS  # any other int setting (solver_order allocates a list that long) and list length
# Counts with a range of their own: (lowest, highest)
COUNTS = {
    "num_train_timesteps": (1, MAX_TRAIN_TIMESTEPS),
    "original_inference_steps": (1, MAX_INFERENCE_STEPS),
}
# What the supported pipelines ship with besides the schedulers a plan runs (a model's own default call)
NATIVE_SCHEDULERS = frozenset(
    {
        "PNDMScheduler",
        "LMSDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
    }
)


@functools.cache
def sampler_schedulers() -> frozenset[str]:
    """The schedulers a plan runs: every solver's class, DDPM and DDIM, and LCM (consistency-distilled students)."""
    solvers = [*SOLVERS.values(), *FLOW_SOLVERS.values()]
    return frozenset(spec.scheduler_class for spec in solvers) | {"DDPMScheduler", "DDIMScheduler", "LCMScheduler"}


@functools.cache
def model_schedulers() -> frozenset[str]:
    """The schedulers a model may come with: those a plan runs and those the supported pipelines ship with."""
    return sampler_schedulers() | NATIVE_SCHEDULERS


def scheduler_class(name: Any, where: str, allowed: frozenset[str], error: type[Exception] = ConfigError) -> type:
    """The diffusers class ``name`` if it is one of ``allowed``; else ``error`` naming it (``where``: e.g.
    ``recipe r.yaml: base_model.scheduler_class``) and what is allowed. Nothing else is looked up."""
    if not isinstance(name, str) or name not in allowed:
        raise error(f"{where}={name!r} is not allowed; allowed: {sorted(allowed)}")
    import diffusers

    return getattr(diffusers, name)


def check_scheduler_settings(settings: Any, where: str, error: type[Exception] = ConfigError) -> dict:
    """``settings`` (a scheduler config read from a file) if it is a mapping of names to values whose counts are
    within bounds; else ``error`` naming the setting (``where``: e.g. ``recipe r.yaml: scheduler.config``)."""
    if not isinstance(settings, dict):
        raise error(f"{where} must be a mapping of setting names to values; got {_short(settings)}")
    for key, value in settings.items():
        if not isinstance(key, str):
            raise error(f"{where} key {_short(key)} is not a setting name")
        if key in COUNTS:
            low, high = COUNTS[key]
            if not _is_int(value) or not low <= value <= high:
                raise error(f"{where} {key}={_short(value)} must be an int in [{low}, {high}]")
        elif _is_int(value) and abs(value) > MAX_SETTING:
            valid = f"int settings are in [-{MAX_SETTING}, {MAX_SETTING}]"
            raise error(f"{where} {key}={_short(value)} is out of range; {valid}")
        elif isinstance(value, list | tuple) and len(value) > MAX_SETTING:
            raise error(f"{where} {key} lists {len(value)} values; at most {MAX_SETTING}")
    return settings


def is_timestep_schedule(timesteps: Any, num_train_timesteps: int) -> bool:
    """Whether ``timesteps`` (read from a file) is a schedule a scheduler can run exactly: a strictly decreasing list
    of 1 to MAX_INFERENCE_STEPS ints in [0, num_train_timesteps)."""
    return (
        isinstance(timesteps, list)
        and 1 <= len(timesteps) <= MAX_INFERENCE_STEPS
        and all(_is_int(step) for step in timesteps)
        and all(later < earlier for earlier, later in zip(timesteps, timesteps[1:]))
        and timesteps[-1] >= 0
        and timesteps[0] < num_train_timesteps
    )


def build_scheduler_from(
    name: Any,
    settings: Any,
    class_key: str,
    settings_key: str,
    allowed: frozenset[str],
    error: type[Exception] = ConfigError,
):
    """The scheduler ``name`` with ``settings``, both read from a file where ``class_key`` and ``settings_key``
    name them: checked by ``scheduler_class`` and ``check_scheduler_settings`` first; settings diffusers refuses
    are ``error`` in one line."""
    cls = scheduler_class(name, class_key, allowed, error)
    check_scheduler_settings(settings, settings_key, error)
    try:
        return cls.from_config(settings)
    except Exception as failure:  # diffusers raises anything from TypeError to NotImplementedError on a bad value
        reason = " ".join(f"{type(failure).__name__}: {failure}".split())
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise error(f"{settings_key} is not accepted by {name}: {reason}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 80) -> str:
    """A bad value for a message: a file may hold a huge list or an int too long to print."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python prints
        return f"<an int of about {value.bit_length() * 3 // 10} digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scheduler_from_settings(class_name: str, base: dict, settings: dict, what: str = "solver"):
    """A scheduler of ``class_name`` built from the model's ``base`` config overridden by ``settings``.

    Some schedulers quietly rewrite a combination they do not support (DPM-Solver++ forces lower_order_final=True
    with a zero final sigma); that would be a different plan than the one recorded, so it is refused.
    """
    chosen = scheduler_class(class_name, f"{what} scheduler", sampler_schedulers(), TechniqueError)
    accepted = inspect.signature(chosen.__init__).parameters
    base = {key: value for key, value in base.items() if key in accepted}  # the rest diffusers would drop, noisily
    try:
        scheduler = chosen.from_config({**base, **settings})
    except (ValueError, NotImplementedError) as error:
        raise TechniqueError(f"{class_name} refused {what} settings {settings}: {error}") from error
    changed = {
        key: (value, scheduler.config[key])
        for key, value in settings.items()
        if key in scheduler.config and scheduler.config[key] != value
    }
    if changed:
        details = ", ".join(f"{key}={wanted!r} (it uses {used!r})" for key, (wanted, used) in changed.items())
        raise TechniqueError(f"{class_name} does not support {details}")
    return scheduler


def refuse_switched_settings(scheduler, before: dict, steps: int) -> None:
    """Raises TechniqueError when setting a schedule made ``scheduler`` rewrite a setting it cannot honour for it
    (DPM-Solver singlestep forces lower_order_final=True): the plan would then not be what was recorded."""
    changed = {
        key: (value, scheduler.config.get(key)) for key, value in before.items() if scheduler.config.get(key) != value
    }
    if changed:
        details = ", ".join(f"{key}={wanted!r} (it switched to {used!r})" for key, (wanted, used) in changed.items())
        raise TechniqueError(f"{type(scheduler).__name__} does not support {details} with {steps} steps")
