"""Technique ``solver``: which diffusers scheduler integrates the sampling ODE/SDE, with its order and variants.

Every solver here runs an exact custom timestep list (see ``autoaccel.pipeline.sampling.set_exact_timesteps``), so the
``timesteps`` technique can hand any schedule to any solver. DDIM is DPM-Solver++ of order 1 without
clipping (the same update); diffusers' DDIMScheduler only knows evenly spaced steps.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

import diffusers

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.schedules.schedulers import scheduler_from_settings
from autoaccel.schedules.solvers import FLOW_SOLVERS, MAX_GUIDANCE, SOLVERS, SolverSpec, all_solver_names
from autoaccel.targets.layouts import family_named
from autoaccel.techniques.base import ParamSpec, Technique, register
from autoaccel.techniques.flow_matching import build_flow_scheduler

FINAL_SIGMAS = ("zero", "sigma_min")

# Settings that a checkpoint's saved scheduler config may carry and that would silently change the solver.
NEUTRAL_OVERRIDES = {"clip_sample": False, "thresholding": False, "timestep_spacing": "trailing", "steps_offset": 0}


@dataclass(frozen=True)
class SolverConfig:
    """``name`` picks the scheduler; ``order``/``variant`` its method; ``guidance`` the classifier-free scale.

    ``order=None`` means the solver's default (its only order, else 2); ``guidance=None`` the scale of the model's
    default call (e.g. 7.5 for Stable Diffusion), 1.0 for a model without guidance.
    """

    name: str = "dpmsolver++"
    order: int | None = None
    variant: str = "default"
    lower_order_final: bool = True
    final_sigma: str = "zero"
    guidance: float | None = 1.0

    def __post_init__(self) -> None:
        if self.name not in all_solver_names():
            raise ConfigError(
                f"solver.name={self.name!r} is not a known solver; valid: {', '.join(all_solver_names())}"
            )
        spec = solver_spec(self.name)
        if self.order is None:  # the solver's own default: its only order, else 2
            object.__setattr__(self, "order", spec.orders[0] if len(spec.orders) == 1 else 2)
        if self.order not in spec.orders:
            raise ConfigError(
                f"solver.order={self.order} is not valid for solver {self.name!r}; valid: {list(spec.orders)}"
            )
        if self.variant not in spec.variants:
            raise ConfigError(
                f"solver.variant={self.variant!r} is not valid for solver {self.name!r}; valid: {list(spec.variants)}"
            )
        if self.final_sigma not in FINAL_SIGMAS:
            raise ConfigError(f"solver.final_sigma={self.final_sigma!r} is not valid; valid: {list(FINAL_SIGMAS)}")
        if self.guidance is not None and not 1.0 <= self.guidance <= MAX_GUIDANCE:
            raise ConfigError(
                f"solver.guidance={self.guidance} is not valid; it must be in [1.0, {MAX_GUIDANCE}] "
                "(1.0 = no guidance), or null for the model's default call's scale"
            )


def flow_solvers() -> dict[str, SolverSpec]:
    """Solvers for flow-matching models: same names where the method is the same."""
    return FLOW_SOLVERS


def solvers_for(family: str) -> dict[str, SolverSpec]:
    """The solvers a model of this schedule family (``ddpm`` or ``flow``) can run."""
    return flow_solvers() if family_named(family).places_sigmas else SOLVERS


def solver_spec(name: str, family: str | None = None) -> SolverSpec:
    """The spec of ``name`` for ``family`` (DDPM-family first where the family is not known)."""
    if family is not None:
        return solvers_for(family)[name]
    return SOLVERS[name] if name in SOLVERS else flow_solvers()[name]


# What a space may set; which order and variant go with which solver is checked by SolverConfig per candidate.
_ALL_SPECS = [*SOLVERS.values(), *flow_solvers().values()]
ORDERS = tuple(sorted({order for spec in _ALL_SPECS for order in spec.orders}))
VARIANTS = tuple(dict.fromkeys(variant for spec in _ALL_SPECS for variant in spec.variants))
SOLVER_PARAMS = {
    "name": ParamSpec("choice", choices=all_solver_names()),
    "order": ParamSpec("choice", choices=(None, *ORDERS)),  # None: the solver's own default
    "variant": ParamSpec("choice", choices=VARIANTS),
    "lower_order_final": ParamSpec("bool"),
    "final_sigma": ParamSpec("choice", choices=FINAL_SIGMAS),
    "guidance": ParamSpec("float", low=1.0, high=MAX_GUIDANCE),
}


def scheduler_settings(config: SolverConfig) -> tuple[str, dict]:
    """The scheduler class name and the settings that differ from the model's own scheduler config."""
    if config.name not in SOLVERS:
        raise TechniqueError(f"solver.name={config.name!r} is a flow-matching solver; this is a DDPM-family model")
    spec = SOLVERS[config.name]
    settings = dict(NEUTRAL_OVERRIDES)
    settings.update(spec.fixed)
    settings.update(spec.variants[config.variant])
    settings.update(
        solver_order=config.order, lower_order_final=config.lower_order_final, final_sigmas_type=config.final_sigma
    )
    accepted = inspect.signature(getattr(diffusers, spec.scheduler_class).__init__).parameters
    return spec.scheduler_class, {key: value for key, value in settings.items() if key in accepted}


def build_scheduler(config: SolverConfig, base_scheduler_config: dict, family: str = "ddpm"):
    """A fresh scheduler of the solver's class, starting from the model's own scheduler config."""
    if family_named(family).places_sigmas:
        return build_flow_scheduler(config, base_scheduler_config)
    class_name, settings = scheduler_settings(config)
    base = {key: value for key, value in base_scheduler_config.items() if not key.startswith("_")}
    return scheduler_from_settings(class_name, base, settings)


def guidance_for(config: SolverConfig, target) -> float:
    """The scale a plan runs: the config's, or (None) the model's default call's where the model takes guidance."""
    if config.guidance is not None:
        return float(config.guidance)
    return float(target.reference_call.guidance_scale) if target.conditions.guidable else 1.0


def apply_solver(pipeline, config: SolverConfig, target) -> None:
    """Swaps in the solver's scheduler and sets the guidance scale."""
    family = target.schedule_family
    valid = solvers_for(family)
    if config.name not in valid:
        raise TechniqueError(
            f"solver.name={config.name!r} does not apply to {target.name}, {target.schedule.words}; valid: "
            f"{', '.join(valid)}"
        )
    guidance = guidance_for(config, target)
    if guidance != 1.0 and not target.conditions.guidable:
        raise TechniqueError(
            f"solver.guidance={config.guidance} needs a model with a null class or a negative prompt; "
            f"{target.name} has none, so only 1.0 is valid"
        )
    pipeline.scheduler = build_scheduler(config, target.scheduler_config, family)
    pipeline.plan.guidance_scale = guidance
    pipeline.plan.null_class = target.null_class


def describe(config: SolverConfig) -> dict:
    return asdict(config)


def solver_cost(config: SolverConfig) -> dict:
    """The scheduler class (how many unet calls a step takes) and whether guidance doubles each call's batch.

    The guidance scale's value, the order, the variant and the final sigma change only the scheduler's own
    arithmetic, which is negligible beside a unet call: plans differing only there share one timing.
    """
    guided = "default" if config.guidance is None else config.guidance != 1.0  # None: the model's default scale
    return {"scheduler": solver_spec(config.name).scheduler_class, "guided": guided}


def adds_noise(solver: str | None, scheduler_class: str) -> bool:
    """Whether a call with ``solver`` (None: the model's own scheduler, of ``scheduler_class``) adds fresh noise at
    every step (ancestral DDPM)."""
    if solver is not None:
        return solver_spec(solver).stochastic
    return scheduler_class in {entry.scheduler_class for entry in SOLVERS.values() if entry.stochastic}


def standard_solvers(family: str, steps: int) -> list[tuple[str | None, dict[str, Any]]]:
    """The solvers users run by default: DDPM-family models DDIM, DPM-Solver++ 2M and UniPC; flow-matching models
    Euler (what their pipelines run), DPM-Solver++ 2M and UniPC on flow sigmas."""
    order_two = {"order": 2, "final_sigma": "zero", "lower_order_final": True}
    baseline = family_named(family).baseline_solver
    first = (baseline, {"name": baseline})
    return [
        first,
        ("dpmsolver++2m", {"name": "dpmsolver++", "variant": "default", **order_two}),
        ("unipc", {"name": "unipc", **order_two}),
    ]


SOLVER = register(
    Technique(
        name="solver",
        order=10,
        config_cls=SolverConfig,
        apply=apply_solver,
        params=SOLVER_PARAMS,
        cost_key=solver_cost,
        decides=("scheduler",),
        label_param="name",
        standard_settings=standard_solvers,
        family_choices=lambda family: {"name": tuple(solvers_for(family))},
        guidance_param="guidance",
        adds_noise=adds_noise,
    )
)
