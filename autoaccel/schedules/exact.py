"""Making a flow-matching scheduler run exactly a given sigma list, with no further shift: what the sampling
loop, the ``timesteps`` technique and recipes rely on so that any schedule runs on any flow solver."""

from __future__ import annotations

import numpy as np
import torch

from autoaccel.errors import TechniqueError
from autoaccel.schedules.schedulers import refuse_switched_settings

# UniPC's own guard: a sigma of 1 has alpha 0 and an infinite log noise-to-signal ratio, which its updates take
# the log of; DPM-Solver singlestep returns NaN there. Both run a first sigma of 1 as 1 - 1e-6.
TOP_SIGMA_EPS = 1e-6


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
