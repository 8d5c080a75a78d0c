"""How a solver name maps to a diffusers scheduler: shared by the DDPM-family and the flow-matching solver tables."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SolverSpec:
    """How a solver name maps to a diffusers scheduler and which settings it accepts."""

    scheduler_class: str
    orders: tuple[int, ...]
    variants: dict[str, dict] = field(default_factory=lambda: {"default": {}})
    fixed: dict = field(default_factory=dict)
    stochastic: bool = False


def scheduler_from_settings(class_name: str, base: dict, settings: dict, what: str = "solver"):
    """A scheduler of ``class_name`` built from the model's ``base`` config overridden by ``settings``.

    Some schedulers quietly rewrite a combination they do not support (DPM-Solver++ forces lower_order_final=True
    with a zero final sigma); that would be a different plan than the one recorded, so it is refused.
    """
    from autoaccel.errors import TechniqueError
    from autoaccel.schedulers import sampler_schedulers, scheduler_class

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
    from autoaccel.errors import TechniqueError

    changed = {
        key: (value, scheduler.config.get(key)) for key, value in before.items() if scheduler.config.get(key) != value
    }
    if changed:
        details = ", ".join(f"{key}={wanted!r} (it switched to {used!r})" for key, (wanted, used) in changed.items())
        raise TechniqueError(f"{type(scheduler).__name__} does not support {details} with {steps} steps")
