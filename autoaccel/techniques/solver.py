"""Technique ``solver``: which diffusers scheduler integrates the sampling ODE/SDE, with its order and variants.

Every solver here runs an exact custom timestep list (see ``autoaccel.sampling.set_exact_timesteps``), so the
``timesteps`` technique can hand any schedule to any solver. DDIM is DPM-Solver++ of order 1 without
clipping (the same update); diffusers' DDIMScheduler only knows evenly spaced steps.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

import diffusers

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.techniques.base import ParamSpec, Technique, register


@dataclass(frozen=True)
class SolverSpec:
    """How a solver name maps to a diffusers scheduler and which settings it accepts."""

    scheduler_class: str
    orders: tuple[int, ...]
    variants: dict[str, dict] = field(default_factory=lambda: {"default": {}})
    fixed: dict = field(default_factory=dict)
    stochastic: bool = False


SOLVERS: dict[str, SolverSpec] = {
    "ddim": SolverSpec("DPMSolverMultistepScheduler", (1,), fixed={"algorithm_type": "dpmsolver++"}),
    "dpmsolver++": SolverSpec(
        "DPMSolverMultistepScheduler",
        (1, 2, 3),
        variants={"default": {"algorithm_type": "dpmsolver++"}, "sde": {"algorithm_type": "sde-dpmsolver++"}},
    ),
    "dpmsolver_single": SolverSpec("DPMSolverSinglestepScheduler", (1, 2, 3), fixed={"algorithm_type": "dpmsolver++"}),
    "unipc": SolverSpec(
        "UniPCMultistepScheduler",
        (1, 2, 3),
        variants={"default": {"solver_type": "bh2"}, "bh1": {"solver_type": "bh1"}},
    ),
    "deis": SolverSpec("DEISMultistepScheduler", (1, 2, 3)),
    "euler": SolverSpec("EulerDiscreteScheduler", (1,)),
    "heun": SolverSpec("HeunDiscreteScheduler", (2,)),
    "ddpm": SolverSpec("DDPMScheduler", (1,), stochastic=True),
}

FINAL_SIGMAS = ("zero", "sigma_min")
MAX_GUIDANCE = 100.0  # far beyond any useful classifier-free scale; larger ones only saturate the images

# Settings that a checkpoint's saved scheduler config may carry and that would silently change the solver.
NEUTRAL_OVERRIDES = {"clip_sample": False, "thresholding": False, "timestep_spacing": "trailing", "steps_offset": 0}


@dataclass(frozen=True)
class SolverConfig:
    """``name`` picks the scheduler; ``order``/``variant`` its method; ``guidance`` the classifier-free scale.

    ``order=None`` means the solver's default (its only order, else 2).
    """

    name: str = "dpmsolver++"
    order: int | None = None
    variant: str = "default"
    lower_order_final: bool = True
    final_sigma: str = "zero"
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SOLVERS:
            raise ConfigError(f"solver.name={self.name!r} is not a known solver; valid: {', '.join(SOLVERS)}")
        spec = SOLVERS[self.name]
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
        if not 1.0 <= self.guidance <= MAX_GUIDANCE:
            raise ConfigError(
                f"solver.guidance={self.guidance} is not valid; it must be in [1.0, {MAX_GUIDANCE}] (1.0 = no guidance)"
            )


# What a space may set; which order and variant go with which solver is checked by SolverConfig per candidate.
ORDERS = tuple(sorted({order for spec in SOLVERS.values() for order in spec.orders}))
VARIANTS = tuple(dict.fromkeys(variant for spec in SOLVERS.values() for variant in spec.variants))
SOLVER_PARAMS = {
    "name": ParamSpec("choice", choices=tuple(SOLVERS)),
    "order": ParamSpec("choice", choices=(None, *ORDERS)),  # None: the solver's own default
    "variant": ParamSpec("choice", choices=VARIANTS),
    "lower_order_final": ParamSpec("bool"),
    "final_sigma": ParamSpec("choice", choices=FINAL_SIGMAS),
    "guidance": ParamSpec("float", low=1.0, high=MAX_GUIDANCE),
}


def scheduler_settings(config: SolverConfig) -> tuple[str, dict]:
    """The scheduler class name and the settings that differ from the model's own scheduler config."""
    spec = SOLVERS[config.name]
    settings = dict(NEUTRAL_OVERRIDES)
    settings.update(spec.fixed)
    settings.update(spec.variants[config.variant])
    settings.update(
        solver_order=config.order, lower_order_final=config.lower_order_final, final_sigmas_type=config.final_sigma
    )
    accepted = inspect.signature(getattr(diffusers, spec.scheduler_class).__init__).parameters
    return spec.scheduler_class, {key: value for key, value in settings.items() if key in accepted}


def build_scheduler(config: SolverConfig, base_scheduler_config: dict):
    """A fresh scheduler of the solver's class, starting from the model's own scheduler config."""
    class_name, settings = scheduler_settings(config)
    scheduler_class = getattr(diffusers, class_name)
    base = {key: value for key, value in base_scheduler_config.items() if not key.startswith("_")}
    try:
        scheduler = scheduler_class.from_config({**base, **settings})
    except (ValueError, NotImplementedError) as error:
        raise TechniqueError(f"{class_name} refused solver settings {settings}: {error}") from error
    # Some schedulers quietly rewrite a combination they do not support (DPM-Solver++ forces
    # lower_order_final=True with a zero final sigma); that would be a different plan than the one recorded.
    changed = {
        key: (value, scheduler.config[key])
        for key, value in settings.items()
        if key in scheduler.config and scheduler.config[key] != value
    }
    if changed:
        details = ", ".join(f"{key}={wanted!r} (it uses {used!r})" for key, (wanted, used) in changed.items())
        raise TechniqueError(f"{class_name} does not support {details}")
    return scheduler


def apply_solver(pipeline, config: SolverConfig, target) -> None:
    """Swaps in the solver's scheduler and sets the guidance scale."""
    if config.guidance != 1.0 and target.null_class is None:
        raise TechniqueError(
            f"solver.guidance={config.guidance} needs a class-conditional model with a null class; "
            f"{target.name} has none, so only 1.0 is valid"
        )
    pipeline.scheduler = build_scheduler(config, target.scheduler_config)
    pipeline.plan.guidance_scale = config.guidance
    pipeline.plan.null_class = target.null_class


def describe(config: SolverConfig) -> dict:
    return asdict(config)


def solver_cost(config: SolverConfig) -> dict:
    """The scheduler class (how many unet calls a step takes) and whether guidance doubles each call's batch.

    The guidance scale's value, the order, the variant and the final sigma change only the scheduler's own
    arithmetic, which is negligible beside a unet call: plans differing only there share one timing.
    """
    return {"scheduler": SOLVERS[config.name].scheduler_class, "guided": config.guidance != 1.0}


SOLVER = register(
    Technique(
        name="solver",
        order=10,
        config_cls=SolverConfig,
        apply=apply_solver,
        params=SOLVER_PARAMS,
        cost_key=solver_cost,
    )
)
