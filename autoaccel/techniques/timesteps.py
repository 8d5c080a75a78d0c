"""Technique ``timesteps``: how many denoising steps, and where on the trained noise range they sit.

Parametric families (uniform with diffusers' three spacings, power, Karras, logSNR-uniform, each with a time
shift where it applies) and a free per-step schedule whose gaps are search dimensions (AutoDiffusion style).
For DDPM-family models every schedule comes out as strictly decreasing integer timesteps inside
[0, num_train_timesteps - 1]; for flow-matching models as strictly decreasing sigmas in (0, 1], the same
families placed in the flow time variable (``autoaccel.techniques.flow_matching``), plus a logit-normal family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.sampling import dynamic_shift_mu
from autoaccel.targets.layouts import family_named
from autoaccel.techniques.base import ParamSpec, Technique, register
from autoaccel.techniques.flow_matching import flow_sigmas

DDPM_FAMILIES = ("uniform_trailing", "uniform_leading", "uniform_linspace", "power", "karras", "logsnr", "free")
FAMILIES = (*DDPM_FAMILIES, "logit_normal")  # logit_normal: flow-matching models (autoaccel.techniques.flow_matching)
UNIFORM_FAMILIES = FAMILIES[:3]
MAX_STEPS = 1000  # what a space may search or fix; a model's own trained timesteps may bound it lower


@dataclass(frozen=True)
class TimestepsConfig:
    """``steps`` solver steps placed by ``family``; ``start``/``end`` bound the non-uniform families.

    ``start`` and ``end`` are fractions of the trained range (1.0 = timestep ``num_train_timesteps - 1``), so
    one space serves models trained with any number of timesteps.

    ``rho`` shapes power (exponent on the time fraction) and Karras (sigma exponent); ``shift`` warps the time
    fraction as s*f / (1 + (s-1)*f), pushing steps towards high noise for s > 1; ``gaps`` are the free
    family's relative step sizes (``steps - 1`` positive weights).
    """

    steps: int = 10
    family: str = "uniform_trailing"
    rho: float = 1.0
    shift: float = 1.0
    start: float = 1.0
    end: float = 0.0
    gaps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"timesteps.family={self.family!r} is not valid; valid: {', '.join(FAMILIES)}")
        if not isinstance(self.steps, int | np.integer) or self.steps < 1:
            raise ConfigError(f"timesteps.steps={self.steps!r} is not valid; it must be an integer >= 1")
        if not self.rho > 0:
            raise ConfigError(f"timesteps.rho={self.rho} is not valid; it must be > 0")
        if not self.shift > 0:
            raise ConfigError(f"timesteps.shift={self.shift} is not valid; it must be > 0")
        if self.family == "free" and len(self.gaps) != self.steps - 1:
            raise ConfigError(
                f"timesteps.gaps has {len(self.gaps)} values; the free family with steps={self.steps} needs "
                f"{self.steps - 1} (gap_0 .. gap_{self.steps - 2})"
            )
        if not 0.0 <= self.end < self.start <= 1.0:
            raise ConfigError(
                f"timesteps.start={self.start}, timesteps.end={self.end} are not valid; need 0 <= end < start <= 1 "
                "(fractions of the trained timestep range)"
            )
        if any(not gap > 0 for gap in self.gaps):
            raise ConfigError(f"timesteps.gaps={list(self.gaps)} is not valid; every gap must be > 0")


# What a space may set; ``gaps`` is searched per step gap by a schedule dimension ``timesteps.gap``.
TIMESTEPS_PARAMS = {
    "steps": ParamSpec("int", low=1, high=MAX_STEPS, target_limit="num_train_timesteps"),
    "family": ParamSpec("choice", choices=FAMILIES),
    "rho": ParamSpec("float", low=0.0, low_open=True),
    "shift": ParamSpec("float", low=0.0, low_open=True),
    "start": ParamSpec("float", low=0.0, high=1.0, low_open=True),
    "end": ParamSpec("float", low=0.0, high=1.0, high_open=True),
    "gaps": ParamSpec("float", low=0.0, low_open=True, item_name="gap", max_length=MAX_STEPS - 1),
}


def _warp(fraction: np.ndarray, shift: float) -> np.ndarray:
    return shift * fraction / (1 + (shift - 1) * fraction)


def _sigma_to_timestep(sigmas: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """Continuous timesteps whose noise level is ``sigmas``, by interpolation in log sigma."""
    all_sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    return np.interp(np.log(sigmas), np.log(all_sigmas), np.arange(len(all_sigmas)))


def continuous_schedule(config: TimestepsConfig, alphas_cumprod: np.ndarray) -> np.ndarray:
    """The schedule before rounding: ``steps`` decreasing real timesteps."""
    total = len(alphas_cumprod)
    n = config.steps
    if config.family == "uniform_trailing":
        return np.round(np.arange(total, 0, -total / n))[:n] - 1  # diffusers rounds, then subtracts 1
    if config.family == "uniform_leading":
        return (np.arange(0, n) * (total // n))[::-1].astype(float)
    if config.family == "uniform_linspace":
        return np.linspace(0, total - 1, n)[::-1]
    t_start = int(round(config.start * (total - 1)))
    t_end = int(round(config.end * (total - 1)))
    if t_end >= t_start:
        raise TechniqueError(
            f"timesteps.start={config.start} and end={config.end} fall on the same timestep of {total}"
        )
    position = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)  # 0 at t_start, 1 at t_end
    if config.family == "power":
        fraction = _warp((1 - position) ** config.rho, config.shift)
        return t_end + (t_start - t_end) * fraction
    if config.family == "free":
        cumulative = np.concatenate([[0.0], np.cumsum(config.gaps)])
        fraction = _warp(1 - cumulative / cumulative[-1], config.shift) if n > 1 else np.ones(1)
        return t_end + (t_start - t_end) * fraction
    sigma_max = np.sqrt((1 - alphas_cumprod[t_start]) / alphas_cumprod[t_start])
    sigma_min = np.sqrt((1 - alphas_cumprod[t_end]) / alphas_cumprod[t_end])
    if config.family == "karras":
        inverse_rho = 1.0 / config.rho
        sigmas = (sigma_max**inverse_rho + position * (sigma_min**inverse_rho - sigma_max**inverse_rho)) ** config.rho
    else:  # logsnr: uniform in log signal-to-noise ratio, i.e. in -2 log sigma
        sigmas = np.exp(np.log(sigma_max) + position * (np.log(sigma_min) - np.log(sigma_max)))
    return _sigma_to_timestep(sigmas, alphas_cumprod)


def build_timesteps(config: TimestepsConfig, alphas_cumprod: np.ndarray | torch.Tensor) -> list[int]:
    """Rounds the schedule to integers and keeps it strictly decreasing (a collision moves the later step down)."""
    alphas = np.asarray(alphas_cumprod, dtype=np.float64)
    total = len(alphas)
    if config.steps > total:
        raise TechniqueError(f"timesteps.steps={config.steps} exceeds the {total} trained timesteps")
    rounded = np.clip(np.round(continuous_schedule(config, alphas)), 0, total - 1).astype(int).tolist()
    for index in range(1, len(rounded)):
        rounded[index] = min(rounded[index], rounded[index - 1] - 1)
    if rounded[-1] < 0:
        raise TechniqueError(f"{config.steps} distinct steps do not fit in {config}")
    return rounded


def _group_gaps(params: dict) -> dict:
    gap_keys = sorted((key for key in params if re.fullmatch(r"gap_\d+", key)), key=lambda key: int(key[4:]))
    grouped = {key: value for key, value in params.items() if key not in gap_keys}
    if gap_keys:
        grouped["gaps"] = tuple(float(params[key]) for key in gap_keys)
    if "gaps" in grouped:
        grouped["gaps"] = tuple(grouped["gaps"])[: max(0, int(grouped.get("steps", 0)) - 1)]
    return grouped


def model_shift(target) -> float:
    """The shift a flow-matching model's own scheduler applies at its resolution (a fixed ``shift``, or the
    dynamic one diffusers derives from the image's token count): what the uniform families reproduce."""
    import math

    config = target.scheduler_config
    if config.get("use_dynamic_shifting"):
        mu = dynamic_shift_mu(SimpleNamespace(**config), target.denoiser)
        return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu
    return float(config.get("shift", 1.0))


def apply_timesteps(pipeline, config: TimestepsConfig, target) -> None:
    """Places the plan's steps in the model's own time variable: integer timesteps, or flow-matching sigmas."""
    if target.schedule.places_sigmas:
        sigmas = flow_sigmas(
            config,
            shift=model_shift(target),
            num_train_timesteps=target.num_train_timesteps,
            dynamic_shifting=bool(target.scheduler_config.get("use_dynamic_shifting")),
        )
        pipeline.plan.sigmas, pipeline.plan.timesteps = sigmas, []
        return
    if config.family not in DDPM_FAMILIES:
        raise TechniqueError(
            f"timesteps.family={config.family!r} is for flow-matching models; valid for {target.name}: "
            f"{', '.join(DDPM_FAMILIES)}"
        )
    pipeline.plan.timesteps, pipeline.plan.sigmas = build_timesteps(config, pipeline.scheduler.alphas_cumprod), []


def timesteps_cost(config: TimestepsConfig) -> dict:
    """Only the step count: where the steps sit (family, shape, gaps) costs the same per step."""
    return {"steps": int(config.steps)}


def _family_choices(family: str) -> dict[str, tuple]:
    """A DDPM-family model places its steps by any of the DDPM families; a flow-matching model's schedule is
    checked where it is placed (``autoaccel.techniques.flow_matching``)."""
    return {} if family_named(family).places_sigmas else {"family": DDPM_FAMILIES}


TIMESTEPS = register(
    Technique(
        name="timesteps",
        order=20,
        config_cls=TimestepsConfig,
        apply=apply_timesteps,
        group_params=_group_gaps,
        params=TIMESTEPS_PARAMS,
        cost_key=timesteps_cost,
        decides=("schedule",),
        label_param="family",
        # the model's own uniform grid at each step count (trailing spacing)
        standard_settings=lambda family, steps: [(None, {"steps": steps, "family": "uniform_trailing"})],
        family_choices=_family_choices,
        steps_param="steps",
    )
)
