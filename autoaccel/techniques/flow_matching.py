"""Flow-matching schedules and solvers, placed in the model's own time variable: sigma in (0, 1].

Flow-matching models (SD3, Flux) are trained on x_sigma = (1 - sigma) * x0 + sigma * noise, predict the velocity
noise - x0, and are conditioned on timestep = sigma * num_train_timesteps. Their schedulers warp sigmas with a
``shift`` s: sigma -> s*sigma / (1 + (s-1)*sigma) (or a resolution-dependent one from ``mu``), which multiplies
the noise-to-signal ratio sigma/(1-sigma) by s. Two such warps compose into one whose shift is the product.

Two pieces, each mirroring its DDPM-family counterpart (``autoaccel.schedules`` holds the solver table,
``FLOW_SOLVERS``, and ``set_exact_sigmas``, which runs a sigma list exactly):

- ``flow_sigmas``: the ``timesteps`` technique's families as sigma schedules (plus ``logit_normal``).
- ``build_flow_scheduler``: solver names -> diffusers schedulers configured for flow models.
"""

from __future__ import annotations

import inspect
import math
from statistics import NormalDist
from typing import TYPE_CHECKING

import diffusers
import numpy as np
import torch

from autoaccel.errors import TechniqueError
from autoaccel.schedules.exact import FLOW_NEUTRAL_SETTINGS
from autoaccel.schedules.schedulers import scheduler_from_settings
from autoaccel.schedules.solvers import FLOW_SOLVERS

if TYPE_CHECKING:
    from autoaccel.techniques.timesteps import TimestepsConfig

FLOW_FAMILIES = (
    "uniform_trailing",
    "uniform_leading",
    "uniform_linspace",
    "power",
    "karras",
    "logsnr",
    "free",
    "logit_normal",
)
_STANDARD_NORMAL = NormalDist()


# --- schedules ----------------------------------------------------------------------------------------------------


def shift_sigmas(fraction: np.ndarray, shift: float) -> np.ndarray:
    """diffusers' flow shift s*f / (1 + (s-1)*f): scales the noise-to-signal ratio f/(1-f) by ``shift``."""
    return shift * fraction / (1 + (shift - 1) * fraction)


def flow_sigmas(
    config: TimestepsConfig,
    shift: float = 1.0,
    *,
    num_train_timesteps: int = 1000,
    dynamic_shifting: bool = False,
) -> list[float]:
    """``config.steps`` strictly decreasing sigmas in (0, 1] for a flow-matching model whose scheduler shifts by
    ``shift`` (for dynamic shifting: exp(mu), or mu for ``time_shift_type="linear"``).

    The uniform families ignore ``config.shift``/``start``/``end``/``rho`` (as they do for DDPM models) and use
    the model's own shift, so that ``uniform_trailing`` is exactly the schedule of the model's saved
    FlowMatchEulerDiscreteScheduler: its ``set_timesteps(steps)`` sigmas, N = ``num_train_timesteps``. That grid
    runs evenly from 1 to the scheduler's smallest trained sigma, which with a fixed shift is already shifted (so
    its last sigma is shifted twice) and with dynamic shifting is 1/N: pass ``dynamic_shifting=True`` for a model
    whose scheduler shifts dynamically. ``uniform_linspace`` is ``linspace(1, 1/steps, steps)`` shifted, the grid
    FluxPipeline passes: equal steps whose last also lands on 0. ``uniform_leading`` is DDPM's leading spacing
    on the trained grid sigma = t/N (like DDPM's, it starts below the top).

    The other families place ``steps`` points between ``start`` and ``end`` (fractions of the trained range
    [1/N, 1]) and then shift them by ``shift * config.shift``: the search's shift acts on top of the model's own
    (1.0 keeps the model's calibration), as two shifts compose into their product.

    - ``power``: (1 - position)^rho of the range. ``free``: the range cut by ``config.gaps``.
    - ``karras``: Karras's rho-spacing of the noise-to-signal ratio r = sigma/(1-sigma). ``logsnr``: uniform in
      log r. Both need a finite r at the top, so their range stops at the highest finite trained point (N-1)/N.
    - ``logit_normal``: sigmas at evenly spaced quantiles of the logit-normal distribution SD3 trains its
      sigmas on (logit(sigma) ~ Normal(log(shift * config.shift), rho); SD3 uses location 0, scale 1), the first
      at ``start`` and each step covering an equal share of the training mass, the last share ending at sigma 0.
      Steps then sit where the model saw most training, and a shift moves the distribution's location as it
      moves every other family.
    """
    if not (math.isfinite(shift) and shift > 0):
        raise TechniqueError(f"flow shift={shift} is not valid; it must be a finite number > 0")
    if config.family not in FLOW_FAMILIES:
        raise TechniqueError(
            f"timesteps.family={config.family!r} is not valid for a flow-matching model; valid: "
            f"{', '.join(FLOW_FAMILIES)}"
        )
    if config.steps > num_train_timesteps:
        raise TechniqueError(f"timesteps.steps={config.steps} exceeds the {num_train_timesteps} trained timesteps")
    if config.family == "uniform_trailing":
        sigmas = _model_grid(config.steps, shift, num_train_timesteps, dynamic_shifting)
    elif config.family in ("uniform_leading", "uniform_linspace"):
        sigmas = shift_sigmas(_uniform_fractions(config.family, config.steps, num_train_timesteps), shift)
    else:
        sigmas = _ranged_sigmas(config, shift * config.shift, num_train_timesteps)
    return _checked(sigmas, config)


def _model_grid(steps: int, shift: float, total: int, dynamic_shifting: bool) -> np.ndarray:
    """diffusers' FlowMatchEulerDiscreteScheduler grid, computed by diffusers itself so it matches bit for bit."""
    if dynamic_shifting:  # mu / (mu + (1/t - 1)): the same arithmetic as exp(mu) with the exponential type
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=total, use_dynamic_shifting=True, time_shift_type="linear"
        )
        scheduler.set_timesteps(steps, mu=shift)
    else:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=total, shift=shift)
        scheduler.set_timesteps(steps)
    return scheduler.sigmas[:-1].to(torch.float64).numpy()


def _uniform_fractions(family: str, steps: int, total: int) -> np.ndarray:
    if family == "uniform_linspace":
        return 1.0 - np.arange(steps) / steps
    # uniform_leading: DDPM's arange(steps) * (N // steps) on the grid t = 0..N-1, read as sigma = (t + 1) / N
    return ((steps - 1 - np.arange(steps)) * (total // steps) + 1) / total


def _trained_fraction(fraction: float, total: int) -> float:
    """A fraction of the trained range [1/N, 1], as the DDPM families read start/end on timesteps 0..N-1."""
    return (1 + fraction * (total - 1)) / total


def _ranged_sigmas(config: TimestepsConfig, shift: float, total: int) -> np.ndarray:
    steps = config.steps
    top, bottom = _trained_fraction(config.start, total), _trained_fraction(config.end, total)
    position = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)  # 0 at start, 1 at end
    if config.family == "power":
        return shift_sigmas(bottom + (top - bottom) * (1 - position) ** config.rho, shift)
    if config.family == "free":
        cumulative = np.concatenate([[0.0], np.cumsum(config.gaps)])
        fraction = 1 - cumulative / cumulative[-1] if steps > 1 else np.ones(1)
        return shift_sigmas(bottom + (top - bottom) * fraction, shift)
    if config.family == "logit_normal":
        return _logit_normal_sigmas(steps, top, bottom, config.rho, shift)
    top = min(top, (total - 1) / total)  # the noise-to-signal ratio is infinite at sigma 1
    if not top > bottom:
        raise TechniqueError(
            f"timesteps.start={config.start} and end={config.end} leave no range with a finite noise-to-signal "
            f"ratio for family {config.family!r}"
        )
    ratio_max, ratio_min = shift * top / (1 - top), shift * bottom / (1 - bottom)  # shifting scales the ratio
    if config.family == "karras":
        inverse_rho = 1.0 / config.rho
        ratios = (ratio_max**inverse_rho + position * (ratio_min**inverse_rho - ratio_max**inverse_rho)) ** config.rho
    else:  # logsnr: uniform in log(sigma / (1 - sigma)), i.e. in -log SNR / 2
        ratios = np.exp(np.log(ratio_max) + position * (np.log(ratio_min) - np.log(ratio_max)))
    return ratios / (1 + ratios)


def _logit_normal_sigmas(steps: int, top: float, bottom: float, scale: float, shift: float) -> np.ndarray:
    """Equal-mass quantiles of logit(sigma) ~ Normal(log shift, scale) between the quantiles of ``top``/``bottom``."""

    def quantile_of(fraction: float) -> float:
        return 1.0 if fraction >= 1.0 else _STANDARD_NORMAL.cdf(math.log(fraction / (1 - fraction)) / scale)

    high, low = quantile_of(top), quantile_of(bottom)
    sigmas = []
    for index in range(steps):
        quantile = high - index * (high - low) / steps
        if quantile >= 1.0:
            sigmas.append(1.0)
            continue
        logit = scale * _STANDARD_NORMAL.inv_cdf(quantile) + math.log(shift)
        sigmas.append(1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0)
    return np.array(sigmas)


def _checked(sigmas: np.ndarray, config: TimestepsConfig) -> list[float]:
    """The schedule as floats, refused where the scheduler (float32) could not tell its steps apart."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    as_run = sigmas.astype(np.float32)
    if not (np.all(np.isfinite(sigmas)) and np.all(as_run > 0) and np.all(sigmas <= 1) and np.all(np.diff(as_run) < 0)):
        raise TechniqueError(
            f"{config.steps} distinct sigmas in (0, 1] do not fit in {config}: float32 steps "
            f"{np.array2string(as_run, precision=6, threshold=8)}"
        )
    return sigmas.tolist()


# --- solvers ------------------------------------------------------------------------------------------------------


def flow_scheduler_settings(solver_config) -> tuple[str, dict]:
    """The scheduler class name and the settings a flow solver runs with (only those its class accepts).

    ``solver_config`` is a SolverConfig (its ``name``, ``order``, ``variant``, ``lower_order_final`` and
    ``final_sigma`` are read); a flow schedule always ends at sigma 0, so ``final_sigma`` must be ``"zero"``.
    """
    name = solver_config.name
    if name not in FLOW_SOLVERS:
        raise TechniqueError(f"solver.name={name!r} is not a flow-matching solver; valid: {', '.join(FLOW_SOLVERS)}")
    spec = FLOW_SOLVERS[name]
    order = solver_config.order if solver_config.order is not None else (spec.orders[0] if len(spec.orders) == 1 else 2)
    if order not in spec.orders:
        raise TechniqueError(f"solver.order={order} is not valid for flow solver {name!r}; valid: {list(spec.orders)}")
    if solver_config.variant not in spec.variants:
        raise TechniqueError(
            f"solver.variant={solver_config.variant!r} is not valid for flow solver {name!r}; "
            f"valid: {list(spec.variants)}"
        )
    if solver_config.final_sigma != "zero":
        raise TechniqueError(
            f"solver.final_sigma={solver_config.final_sigma!r} is not valid for a flow-matching model: its schedule "
            "ends at sigma 0 ('zero')"
        )
    settings = {"thresholding": False, **FLOW_NEUTRAL_SETTINGS, **spec.fixed, **spec.variants[solver_config.variant]}
    settings.update(solver_order=order, lower_order_final=solver_config.lower_order_final)
    accepted = inspect.signature(getattr(diffusers, spec.scheduler_class).__init__).parameters
    return spec.scheduler_class, {key: value for key, value in settings.items() if key in accepted}


def build_flow_scheduler(solver_config, base_scheduler_config: dict):
    """A fresh scheduler for a flow solver, from the model's saved (FlowMatchEuler) scheduler config.

    Keys the solver's class does not accept are dropped; the model's shift is not carried (shift 1, no dynamic
    shifting): the schedule's sigmas are already shifted (``flow_sigmas``) and are run as given.
    """
    class_name, settings = flow_scheduler_settings(solver_config)
    if base_scheduler_config.get("invert_sigmas"):
        raise TechniqueError(
            "the model's scheduler has invert_sigmas=True (its sigmas run from 0 to 1); autoaccel's flow "
            "schedules need sigmas that run from 1 to 0"
        )
    if class_name == "DPMSolverSinglestepScheduler" and not solver_config.lower_order_final:
        raise TechniqueError(
            f"{class_name} does not support lower_order_final=False with a final sigma of 0 (it switches to True)"
        )
    accepted = inspect.signature(getattr(diffusers, class_name).__init__).parameters
    base = {key: value for key, value in base_scheduler_config.items() if key in accepted and not key.startswith("_")}
    return scheduler_from_settings(class_name, base, settings, "flow solver")
