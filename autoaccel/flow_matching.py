"""Flow-matching schedules and solvers, placed in the model's own time variable: sigma in (0, 1].

Flow-matching models (SD3, Flux) are trained on x_sigma = (1 - sigma) * x0 + sigma * noise, predict the velocity
noise - x0, and are conditioned on timestep = sigma * num_train_timesteps. Their schedulers warp sigmas with a
``shift`` s: sigma -> s*sigma / (1 + (s-1)*sigma) (or a resolution-dependent one from ``mu``), which multiplies
the noise-to-signal ratio sigma/(1-sigma) by s. Two such warps compose into one whose shift is the product.

Three pieces, each mirroring its DDPM-family counterpart:

- ``flow_sigmas``: the ``timesteps`` technique's families as sigma schedules (plus ``logit_normal``).
- ``set_exact_sigmas``: makes a flow scheduler run exactly a given sigma list, with no further shift.
- ``FLOW_SOLVERS`` / ``build_flow_scheduler``: solver names -> diffusers schedulers configured for flow models.
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
from autoaccel.techniques.solver_spec import SolverSpec, refuse_switched_settings, scheduler_from_settings

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
# UniPC's own guard: a sigma of 1 has alpha 0 and an infinite log noise-to-signal ratio, which its updates take
# the log of; DPM-Solver singlestep returns NaN there. Both run a first sigma of 1 as 1 - 1e-6.
TOP_SIGMA_EPS = 1e-6
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


# --- running an exact sigma list ----------------------------------------------------------------------------------

# Settings that make a scheduler change the sigmas it is given (or, for the final sigma, end above 0). A scheduler
# must carry these values for set_exact_sigmas; build_flow_scheduler sets them.
FLOW_NEUTRAL_SETTINGS = {
    "shift": 1.0,
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "invert_sigmas": False,
    "final_sigmas_type": "zero",
}
# How each supported scheduler takes a custom list: its own set_timesteps(sigmas=...), or set for the count and
# its sigmas/timesteps replaced; "heun" is the latter with FlowMatchHeun's interleaved second-stage entries.
_EXACT_PATHS = {
    "FlowMatchEulerDiscreteScheduler": "sigmas",
    "FlowMatchHeunDiscreteScheduler": "heun",
    "UniPCMultistepScheduler": "sigmas",
    "DPMSolverMultistepScheduler": "replace",
    "DPMSolverSinglestepScheduler": "replace",
}
_LOG_SNR_SCHEDULERS = ("UniPCMultistepScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler")
# diffusers 0.42 ends their flow schedules at the last sigma instead of 0 (the sample keeps that much noise), and
# a final sigma of 0 makes their updates NaN.
_NO_FINAL_ZERO = ("DEISMultistepScheduler", "SASolverScheduler")


def set_exact_sigmas(scheduler, sigmas: list[float], device: torch.device | str = "cpu") -> None:
    """Makes a flow-matching ``scheduler`` run exactly ``sigmas`` (strictly decreasing, in (0, 1]) then 0.

    The scheduler must not shift: build it with ``build_flow_scheduler`` (shift 1, no dynamic shifting); one
    that would shift, stretch or re-space the sigmas it is given is refused, not undone. FlowMatchEuler and UniPC
    take the list through their own ``set_timesteps(sigmas=...)``; FlowMatchHeun and DPM-Solver are set for the
    step count and their sigmas/timesteps replaced with what their own ``set_timesteps`` computes from sigmas
    (tests check both against each scheduler's native schedule). For UniPC and DPM-Solver a first sigma of 1 runs
    as 1 - 1e-6 (UniPC's own guard), and their timesteps are int64 (sigma * N truncated), as diffusers makes them.
    The scheduler's step index starts at 0 explicitly, so timesteps that coincide after truncation stay in order.
    """
    name = type(scheduler).__name__
    requested = _validated_request(sigmas)
    _refuse_unsupported(scheduler)
    config_before = dict(scheduler.config)
    path = _EXACT_PATHS[name]
    expected = requested.copy()
    if name in _LOG_SNR_SCHEDULERS and abs(expected[0] - 1) < TOP_SIGMA_EPS:
        expected[0] -= TOP_SIGMA_EPS
    if path == "sigmas":
        scheduler.set_timesteps(sigmas=requested.copy(), device=device)  # UniPC applies the 1 - 1e-6 guard itself
    elif path == "heun":
        _replace_heun(scheduler, expected, device)
    else:
        _replace_log_snr(scheduler, expected, device)
    refuse_switched_settings(scheduler, config_before, len(requested))
    _verify(scheduler, expected)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)


def _validated_request(sigmas) -> np.ndarray:
    values = np.asarray(list(sigmas), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise TechniqueError("the sigma schedule must be a non-empty flat list of sigmas in (0, 1]")
    as_run = values.astype(np.float32)
    if not (np.all(np.isfinite(values)) and np.all(as_run > 0) and np.all(values <= 1) and np.all(np.diff(as_run) < 0)):
        raise TechniqueError(
            f"sigmas {np.array2string(values, precision=6, threshold=8)} are not valid: they must be strictly "
            "decreasing (as float32) and in (0, 1]"
        )
    return values


def _refuse_unsupported(scheduler) -> None:
    name = type(scheduler).__name__
    config = scheduler.config
    if name in _NO_FINAL_ZERO and config.get("use_flow_sigmas"):
        raise TechniqueError(f"{name} ends a flow-matching schedule at its last sigma instead of 0 and cannot end at 0")
    if name not in _EXACT_PATHS:
        raise TechniqueError(
            f"{name} cannot run an exact flow-matching sigma schedule; supported: {', '.join(_EXACT_PATHS)}"
        )
    if name in _LOG_SNR_SCHEDULERS and not (
        config.get("use_flow_sigmas") and config.get("prediction_type") == "flow_prediction"
    ):
        raise TechniqueError(
            f"{name} is not set up for a flow-matching model: it needs use_flow_sigmas=True and "
            f"prediction_type='flow_prediction' (it has {config.get('use_flow_sigmas')!r}, "
            f"{config.get('prediction_type')!r})"
        )
    active = {
        key: config[key] for key, neutral in FLOW_NEUTRAL_SETTINGS.items() if key in config and config[key] != neutral
    }
    if "shift_terminal" in active and not active["shift_terminal"]:
        del active["shift_terminal"]  # 0 disables it like None
    own_shift = vars(scheduler).get("_shift", 1.0)  # FlowMatchEuler's set_shift() changes it outside the config
    if own_shift != 1.0 and "shift" not in active:
        active["shift (set_shift)"] = own_shift
    if active:
        details = ", ".join(f"{key}={value!r}" for key, value in active.items())
        raise TechniqueError(
            f"{name} has {details}, so it would change the sigmas it is given; build it with build_flow_scheduler "
            "(shift 1, no dynamic shifting, final sigma 0)"
        )


def _replace_heun(scheduler, sigmas: np.ndarray, device) -> None:
    """FlowMatchHeun's own layout: each step after the first is listed twice (its Euler and correction stage)."""
    scheduler.set_timesteps(len(sigmas), device=device)
    steps = torch.from_numpy(sigmas).to(dtype=torch.float32, device=scheduler.sigmas.device)
    timesteps = steps * scheduler.config.num_train_timesteps
    scheduler.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]).to(device)
    with_final = torch.cat([steps, torch.zeros(1, device=steps.device)])
    scheduler.sigmas = torch.cat([with_final[:1], with_final[1:-1].repeat_interleave(2), with_final[-1:]])


def _replace_log_snr(scheduler, sigmas: np.ndarray, device) -> None:
    """What DPM-Solver's set_timesteps computes for flow sigmas, from ``sigmas`` instead of its own grid."""
    scheduler.set_timesteps(len(sigmas), device=device)
    final = scheduler.sigmas[-1:].to("cpu", torch.float32)
    home = scheduler.sigmas.device
    scheduler.sigmas = torch.cat([torch.from_numpy(sigmas).to(torch.float32), final]).to(home)
    timesteps = torch.from_numpy(sigmas * scheduler.config.num_train_timesteps)
    scheduler.timesteps = timesteps.to(device=device, dtype=scheduler.timesteps.dtype)


def _verify(scheduler, expected: np.ndarray) -> None:
    """Reads back what the scheduler will step through: exactly ``expected`` (as float32), then 0."""
    name = type(scheduler).__name__
    sigmas = scheduler.sigmas.detach().to("cpu", torch.float32)
    steps = torch.cat([sigmas[:1], sigmas[1:-1:2]]) if _EXACT_PATHS[name] == "heun" else sigmas[:-1]
    wanted = torch.from_numpy(expected).to(torch.float32)
    if steps.shape != wanted.shape or not torch.equal(steps, wanted) or sigmas[-1].item() != 0.0:
        raise TechniqueError(
            f"{name} did not take the sigma schedule as given: it runs {sigmas.tolist()[:8]} for {wanted.tolist()[:8]}"
        )
    if len(scheduler.timesteps) != model_calls(name, len(expected)):
        raise TechniqueError(f"{name} set {len(scheduler.timesteps)} timesteps for {len(expected)} sigmas")


def model_calls(scheduler_class_name: str, steps: int) -> int:
    """Denoiser calls for ``steps`` solver steps: Heun makes two per step except the last (whose second stage
    would evaluate at sigma 0), every other solver here one. The sampling loop calls the denoiser once per entry
    of ``scheduler.timesteps``, so counting its calls gives the same number."""
    if scheduler_class_name in ("FlowMatchHeunDiscreteScheduler", "HeunDiscreteScheduler"):
        return 2 * steps - 1
    return steps


# --- solvers ------------------------------------------------------------------------------------------------------

# UniPC and DPM-Solver integrate in log SNR with these; the sigmas come from set_exact_sigmas, unshifted.
_FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}

# Same names as the DDPM-family table where the method is the same. Not here: DDIM and DPM-Solver++ of order 1
# (the same update as flow_euler for a velocity model), UniPC's bh1 (NaN on flow sigmas in diffusers 0.42), DEIS
# and SA-Solver (their flow schedules end above sigma 0), FlowMatchEuler's stochastic_sampling (re-noises from
# the x0 estimate: a sampler for distilled models that shrinks the sample's spread on an ordinary one).
FLOW_SOLVERS: dict[str, SolverSpec] = {
    "flow_euler": SolverSpec("FlowMatchEulerDiscreteScheduler", (1,), fixed={"stochastic_sampling": False}),
    "flow_heun": SolverSpec("FlowMatchHeunDiscreteScheduler", (2,)),
    "unipc": SolverSpec(
        "UniPCMultistepScheduler", (1, 2, 3), variants={"default": {"solver_type": "bh2"}}, fixed=_FLOW_SIGMAS
    ),
    "dpmsolver++": SolverSpec(
        "DPMSolverMultistepScheduler",
        (1, 2, 3),
        variants={"default": {"algorithm_type": "dpmsolver++"}, "sde": {"algorithm_type": "sde-dpmsolver++"}},
        fixed=_FLOW_SIGMAS,
    ),
    "dpmsolver_single": SolverSpec(
        "DPMSolverSinglestepScheduler", (1, 2, 3), fixed={**_FLOW_SIGMAS, "algorithm_type": "dpmsolver++"}
    ),
}


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
