"""Flow-matching schedules and solvers (autoaccel/techniques/flow_matching.py).

Key properties: ``set_exact_sigmas`` on a scheduler's own native sigmas reproduces that scheduler's native run
bit for bit; ``uniform_trailing`` is the model's own FlowMatchEuler schedule; and on a flow whose exact solution
is known (Gaussian data), Euler converges at first order while Heun, UniPC and DPM-Solver++ beat it at equal
denoiser calls.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch

from autoaccel.errors import TechniqueError
from autoaccel.schedules.exact import model_calls, set_exact_sigmas
from autoaccel.schedules.solvers import FLOW_SOLVERS
from autoaccel.techniques.flow_matching import FLOW_FAMILIES, build_flow_scheduler, flow_sigmas, shift_sigmas
from autoaccel.techniques.solver import SolverConfig
from autoaccel.techniques.timesteps import TimestepsConfig

TOTAL = 1000  # num_train_timesteps of SD3 and Flux
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": TOTAL, "shift": 3.0}
FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": TOTAL,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# Data x0 ~ Normal(MEAN, SPREAD^2) per pixel: then x_sigma = (1 - sigma) x0 + sigma noise is Gaussian, the flow's
# velocity E[noise - x0 | x_sigma] is affine in x_sigma, and the ODE carries noise z to MEAN + SPREAD * z exactly.
MEAN, SPREAD = 2.0, 0.5
NOISE = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
EXACT = MEAN + SPREAD * NOISE


def velocity(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The exact velocity of the Gaussian flow at ``timestep`` (sigma = timestep / N), as a denoiser sees it."""
    sigma = float(timestep) / TOTAL
    alpha = 1.0 - sigma
    gain = (sigma - alpha * SPREAD**2) / (alpha**2 * SPREAD**2 + sigma**2)
    return -MEAN + gain * (sample - alpha * MEAN)


def run_loop(scheduler, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """The sampling loop as autoaccel runs it: one denoiser call per entry of ``scheduler.timesteps``.

    FlowMatch schedulers have no ``init_noise_sigma`` (nor ``scale_model_input``): the noise is the sample at 1.
    """
    sample, calls = NOISE.clone() * getattr(scheduler, "init_noise_sigma", 1.0), 0
    for timestep in scheduler.timesteps:
        calls += 1
        extra = {"generator": generator} if generator is not None else {}
        sample = scheduler.step(velocity(sample, timestep), timestep, sample, **extra).prev_sample
    return sample, calls


def rms_error(sample: torch.Tensor) -> float:
    return (sample - EXACT).pow(2).mean().sqrt().item()


def solve(solver: SolverConfig, sigmas: list[float]) -> tuple[float, int]:
    scheduler = build_flow_scheduler(solver, SD3_SCHEDULER)
    set_exact_sigmas(scheduler, sigmas)
    sample, calls = run_loop(scheduler)
    return rms_error(sample), calls


def equal_steps(steps: int) -> list[float]:
    return flow_sigmas(TimestepsConfig(steps=steps, family="uniform_linspace"))


def config(family: str, steps: int, **options) -> TimestepsConfig:
    if family == "free" and "gaps" not in options:
        options["gaps"] = tuple(0.5 + 0.25 * (index % 3) for index in range(steps - 1))
    return TimestepsConfig(steps=steps, family=family, **options)


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# --- flow_sigmas ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0, 1.15, 0.5, 6.0])
def test_uniform_trailing_is_the_models_own_flow_match_euler_schedule(shift):
    for steps in (1, 2, 4, 10, 28, 50):
        native = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=TOTAL, shift=shift)
        native.set_timesteps(steps)
        assert flow_sigmas(config("uniform_trailing", steps), shift=shift) == native.sigmas[:-1].tolist()


@pytest.mark.parametrize(("time_shift_type", "mu"), [("exponential", 0.5), ("exponential", 1.15), ("linear", 2.5)])
def test_uniform_trailing_reproduces_dynamic_shifting(time_shift_type, mu):
    shift = math.exp(mu) if time_shift_type == "exponential" else mu
    for steps in (1, 4, 28):
        native = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=time_shift_type)
        native.set_timesteps(steps, mu=mu)
        ours = flow_sigmas(config("uniform_trailing", steps), shift=shift, dynamic_shifting=True)
        assert ours == native.sigmas[:-1].tolist()


@pytest.mark.parametrize("family", FLOW_FAMILIES)
@pytest.mark.parametrize("steps", [1, 2, 4, 50])
def test_every_family_gives_strictly_decreasing_sigmas_in_range(family, steps):
    for model_shift in (0.5, 1.0, 3.0):
        for options in ({}, {"rho": 3.0, "shift": 2.0}, {"rho": 0.7, "start": 0.9, "end": 0.05}):
            sigmas = flow_sigmas(config(family, steps, **options), shift=model_shift)
            assert len(sigmas) == steps and all(type(sigma) is float for sigma in sigmas)
            as_run = np.array(sigmas, dtype=np.float32)
            assert np.all(np.diff(as_run) < 0) and as_run[-1] > 0 and sigmas[0] <= 1.0, (options, sigmas)


@pytest.mark.parametrize("family", ["power", "free", "logit_normal", "karras", "logsnr"])
def test_non_uniform_families_span_start_to_end_then_shift(family):
    options = {"start": 0.8, "end": 0.1, "rho": 2.0, "shift": 1.5}
    sigmas = flow_sigmas(config(family, 8, **options), shift=2.0)
    top, bottom = (1 + 0.8 * (TOTAL - 1)) / TOTAL, (1 + 0.1 * (TOTAL - 1)) / TOTAL
    assert sigmas[0] == pytest.approx(shift_sigmas(top, 3.0), rel=1e-12)
    if family != "logit_normal":  # its last step covers a share of the training mass down to sigma 0
        assert sigmas[-1] == pytest.approx(shift_sigmas(bottom, 3.0), rel=1e-12)


def test_the_searched_shift_acts_on_top_of_the_models():
    for family in ("power", "free", "karras", "logsnr", "logit_normal"):
        stacked = flow_sigmas(config(family, 9, shift=2.0, rho=2.0), shift=3.0)
        combined = flow_sigmas(config(family, 9, shift=6.0, rho=2.0), shift=1.0)
        assert stacked == pytest.approx(combined, rel=1e-12)
    for family in ("uniform_trailing", "uniform_leading", "uniform_linspace"):  # the model's shift only
        assert flow_sigmas(config(family, 9, shift=2.0), shift=3.0) == flow_sigmas(config(family, 9), shift=3.0)
    plain, shifted = flow_sigmas(config("power", 6), shift=1.0), flow_sigmas(config("power", 6), shift=3.0)
    assert all(high > low for high, low in zip(shifted[1:-1], plain[1:-1]))  # shift > 1: towards high noise


def test_karras_and_logsnr_space_the_noise_to_signal_ratio():
    def ratios(sigmas):
        return np.array(sigmas) / (1 - np.array(sigmas))

    logsnr = np.log(ratios(flow_sigmas(config("logsnr", 12, start=0.95), shift=3.0)))
    assert np.allclose(np.diff(logsnr), np.diff(logsnr)[0], rtol=1e-9)
    karras = ratios(flow_sigmas(config("karras", 12, rho=7.0, start=0.95), shift=3.0)) ** (1 / 7)
    assert np.allclose(np.diff(karras), np.diff(karras)[0], rtol=1e-9)
    top = flow_sigmas(config("karras", 5, rho=7.0), shift=1.0)[0]  # start=1 stops at the top finite point
    assert top == pytest.approx((TOTAL - 1) / TOTAL, rel=1e-12)


@pytest.mark.parametrize(("scale", "shift"), [(1.0, 1.0), (1.0, 3.0), (0.6, 2.0)])
def test_logit_normal_steps_cover_equal_training_mass(scale, shift):
    steps = 8
    sigmas = flow_sigmas(config("logit_normal", steps, rho=scale), shift=shift)
    assert sigmas[0] == 1.0
    mass_above = [1 - NormalDist(math.log(shift), scale).cdf(math.log(s / (1 - s))) for s in sigmas[1:]]
    assert mass_above == pytest.approx([index / steps for index in range(1, steps)], abs=1e-9)


def test_bad_schedule_inputs_are_refused_in_one_line():
    with pytest.raises(TechniqueError) as error:
        flow_sigmas(config("power", 1001))
    assert_one_line(error, "steps=1001", "1000 trained timesteps")
    for bad_shift in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(TechniqueError) as error:
            flow_sigmas(config("power", 4), shift=bad_shift)
        assert_one_line(error, "shift")
    cosine = SimpleNamespace(steps=4, family="cosine", rho=1.0, shift=1.0, start=1.0, end=0.0, gaps=())
    with pytest.raises(TechniqueError) as error:
        flow_sigmas(cosine)
    assert_one_line(error, "'cosine'", "logit_normal")
    with pytest.raises(TechniqueError) as error:  # its last steps differ by ~1e-12: one float32 value
        flow_sigmas(config("power", 50, rho=7.0))
    assert_one_line(error, "50 distinct sigmas")
    with pytest.raises(TechniqueError) as error:  # above the highest finite noise-to-signal ratio
        flow_sigmas(config("logsnr", 4, start=1.0, end=0.9995))
    assert_one_line(error, "finite noise-to-signal")


# --- set_exact_sigmas against each scheduler's native schedule -------------------------------------------------------

# solver -> (the setting that carries the model's shift, diffusers' own float64 formula for its native sigmas)
_NATIVE = {
    "FlowMatchEulerDiscreteScheduler": "shift",
    "FlowMatchHeunDiscreteScheduler": "shift",
    "UniPCMultistepScheduler": "flow_shift",
    "DPMSolverMultistepScheduler": "flow_shift",
    "DPMSolverSinglestepScheduler": "flow_shift",
}


def native_float64_sigmas(class_name: str, shift: float, steps: int, native) -> np.ndarray:
    """The float64 sigmas each scheduler's set_timesteps derives its float32 sigmas and int timesteps from."""
    if class_name.startswith("FlowMatch"):  # their timesteps come from the float32 sigmas
        step_sigmas = native.sigmas[:-1] if class_name.endswith("EulerDiscreteScheduler") else native.sigmas[:-1:2]
        return step_sigmas.to(torch.float64).numpy()
    if class_name == "UniPCMultistepScheduler":
        return shift_sigmas(np.linspace(1, 1 / TOTAL, steps + 1)[:-1], shift)
    return np.flip(shift_sigmas(1.0 - np.linspace(1, 1 / TOTAL, steps + 1), shift))[:-1].copy()


@pytest.mark.parametrize(
    "solver",
    [
        SolverConfig(name="flow_euler"),
        SolverConfig(name="flow_heun"),
        SolverConfig(name="unipc", order=2),
        SolverConfig(name="unipc", order=3),
        SolverConfig(name="dpmsolver++", order=2),
        SolverConfig(name="dpmsolver++", order=3),
        SolverConfig(name="dpmsolver_single", order=2),
    ],
    ids=lambda solver: f"{solver.name}-{solver.order}",
)
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 10])
def test_exact_sigmas_reproduce_each_schedulers_native_run(solver, shift, steps):
    exact = build_flow_scheduler(solver, SD3_SCHEDULER)
    class_name = type(exact).__name__
    native = type(exact).from_config({**exact.config, _NATIVE[class_name]: shift})
    native.set_timesteps(steps)
    requested = native_float64_sigmas(class_name, shift, steps, native)
    set_exact_sigmas(exact, requested.tolist())
    assert exact.timesteps.dtype == native.timesteps.dtype
    assert torch.equal(exact.timesteps, native.timesteps)
    assert torch.equal(exact.sigmas, native.sigmas)
    assert exact.sigmas[-1].item() == 0.0
    (ours, our_calls), (theirs, their_calls) = run_loop(exact), run_loop(native)
    assert torch.equal(ours, theirs)
    assert our_calls == their_calls == model_calls(class_name, steps)


def test_a_flow_match_heun_step_costs_two_calls_except_the_last():
    assert model_calls("FlowMatchHeunDiscreteScheduler", 6) == 11
    assert model_calls("FlowMatchEulerDiscreteScheduler", 6) == 6
    ddpm_heun = diffusers.HeunDiscreteScheduler()
    ddpm_heun.set_timesteps(6)
    assert len(ddpm_heun.timesteps) == model_calls("HeunDiscreteScheduler", 6)
    for name in FLOW_SOLVERS:
        scheduler = build_flow_scheduler(SolverConfig(name=name), SD3_SCHEDULER)
        set_exact_sigmas(scheduler, equal_steps(6))
        assert len(scheduler.timesteps) == model_calls(type(scheduler).__name__, 6)


def test_a_sigma_of_one_runs_as_one_minus_1e6_on_log_snr_solvers():
    for name in ("unipc", "dpmsolver++", "dpmsolver_single"):
        scheduler = build_flow_scheduler(SolverConfig(name=name), SD3_SCHEDULER)
        set_exact_sigmas(scheduler, [1.0, 0.5])
        assert scheduler.sigmas.tolist() == [np.float32(1 - 1e-6), 0.5, 0.0]
        assert scheduler.timesteps.tolist() == [999, 500]
        sample, _ = run_loop(scheduler)
        assert torch.isfinite(sample).all()
        # int timesteps truncate sigma * N from the float64 sigmas, as diffusers does (float32 0.9 gives 899)
        set_exact_sigmas(scheduler, [0.9, 0.3])
        assert scheduler.timesteps.tolist() == [900, 300]
    euler = build_flow_scheduler(SolverConfig(name="flow_euler"), SD3_SCHEDULER)
    set_exact_sigmas(euler, [1.0, 0.5])
    assert euler.sigmas.tolist() == [1.0, 0.5, 0.0] and euler.timesteps.tolist() == [1000.0, 500.0]


def test_sigmas_that_share_an_integer_timestep_still_run_in_order():
    """DPM-Solver truncates sigma * N to int64: 0.9995 and 0.9991 both become 999, which diffusers' timestep
    lookup would resolve to the second entry, skipping the first step."""
    scheduler = build_flow_scheduler(SolverConfig(name="dpmsolver++", order=2), SD3_SCHEDULER)
    set_exact_sigmas(scheduler, [0.9995, 0.9991, 0.5])
    assert scheduler.timesteps.tolist() == [999, 999, 500]
    sample, calls = run_loop(scheduler)
    assert calls == 3 and scheduler.step_index == 3 and torch.isfinite(sample).all()


# --- accuracy on the Gaussian flow ----------------------------------------------------------------------------------


def test_euler_error_shrinks_at_first_order():
    euler = SolverConfig(name="flow_euler")
    errors = [solve(euler, equal_steps(steps))[0] for steps in (4, 8, 16, 32)]
    ratios = [coarse / fine for coarse, fine in zip(errors, errors[1:])]
    assert all(1.6 < ratio < 2.6 for ratio in ratios), (errors, ratios)


def test_heun_error_shrinks_at_second_order():
    heun = SolverConfig(name="flow_heun")
    errors = [solve(heun, equal_steps(steps))[0] for steps in (4, 8, 16)]
    ratios = [coarse / fine for coarse, fine in zip(errors, errors[1:])]
    assert all(3.0 < ratio < 5.5 for ratio in ratios), (errors, ratios)


@pytest.mark.parametrize("steps", [8, 10])
def test_second_order_solvers_beat_euler_at_equal_denoiser_calls(steps):
    """Heun's steps take two calls (but the last): it is compared with Euler on as many calls, not steps."""
    euler = SolverConfig(name="flow_euler")
    for solver, margin in (
        (SolverConfig(name="flow_heun"), 0.5),
        (SolverConfig(name="unipc", order=2), 0.5),
        (SolverConfig(name="unipc", order=3), 0.5),
        (SolverConfig(name="dpmsolver++", order=2), 0.5),
        (SolverConfig(name="dpmsolver++", order=3), 0.5),
        (SolverConfig(name="dpmsolver_single", order=2), 0.9),
    ):
        error, calls = solve(solver, equal_steps(steps))
        euler_error, euler_calls = solve(euler, equal_steps(calls))
        assert calls == euler_calls
        assert error < margin * euler_error, (solver, error, euler_error)


def test_sde_dpmsolver_samples_the_data_distribution():
    scheduler = build_flow_scheduler(SolverConfig(name="dpmsolver++", variant="sde"), SD3_SCHEDULER)
    set_exact_sigmas(scheduler, equal_steps(16))
    sample, _ = run_loop(scheduler, torch.Generator().manual_seed(3))
    assert not torch.allclose(sample, EXACT, atol=0.05)  # stochastic: not the ODE's sample...
    assert sample.mean().item() == pytest.approx(MEAN, abs=0.05)  # ...but the data's distribution
    assert sample.std().item() == pytest.approx(SPREAD, abs=0.05)


# --- build_flow_scheduler -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [SD3_SCHEDULER, FLUX_SCHEDULER], ids=["sd3", "flux"])
@pytest.mark.parametrize("name", list(FLOW_SOLVERS))
def test_build_flow_scheduler_gives_an_unshifted_flow_scheduler(base, name):
    before = dict(base)
    scheduler = build_flow_scheduler(SolverConfig(name=name), base)
    assert base == before
    spec = FLOW_SOLVERS[name]
    assert type(scheduler).__name__ == spec.scheduler_class
    config_ = scheduler.config
    assert config_.get("shift", 1.0) == 1.0 and config_.get("flow_shift", 1.0) == 1.0
    assert not config_.get("use_dynamic_shifting", False)
    assert config_["num_train_timesteps"] == TOTAL
    for key, value in spec.fixed.items():
        assert config_[key] == value
    set_exact_sigmas(scheduler, equal_steps(3))  # runs without the dynamic shift's mu


def test_build_flow_scheduler_refuses_what_a_flow_model_cannot_run():
    cases = [
        (SolverConfig(name="ddim"), SD3_SCHEDULER, ["'ddim'", "flow_euler"]),
        (SolverConfig(name="unipc", variant="bh1"), SD3_SCHEDULER, ["variant='bh1'", "['default']"]),
        (SolverConfig(name="dpmsolver++", final_sigma="sigma_min"), SD3_SCHEDULER, ["final_sigma='sigma_min'"]),
        (SolverConfig(name="flow_euler"), {**SD3_SCHEDULER, "invert_sigmas": True}, ["invert_sigmas"]),
        (SolverConfig(name="dpmsolver_single", lower_order_final=False), SD3_SCHEDULER, ["lower_order_final"]),
    ]
    for solver, base, fragments in cases:
        with pytest.raises(TechniqueError) as error:
            build_flow_scheduler(solver, base)
        assert_one_line(error, *fragments)


# --- set_exact_sigmas refusals --------------------------------------------------------------------------------------


def _flow(class_name: str, **settings):
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    return getattr(diffusers, class_name)(**{**flow, **settings})


def test_a_scheduler_that_would_shift_the_sigmas_is_refused():
    shifted = diffusers.FlowMatchEulerDiscreteScheduler()
    shifted.set_shift(2.0)
    cases = [
        (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), "shift=3.0"),
        (shifted, "set_shift"),
        (diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "use_dynamic_shifting=True"),
        (diffusers.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1), "shift_terminal=0.1"),
        (diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0), "shift=3.0"),
        (_flow("UniPCMultistepScheduler", flow_shift=3.0), "flow_shift=3.0"),
        (_flow("UniPCMultistepScheduler", final_sigmas_type="sigma_min"), "final_sigmas_type='sigma_min'"),
        (_flow("DPMSolverMultistepScheduler", use_karras_sigmas=True), "use_karras_sigmas=True"),
    ]
    for scheduler, fragment in cases:
        with pytest.raises(TechniqueError) as error:
            set_exact_sigmas(scheduler, [1.0, 0.5])
        assert_one_line(error, fragment, "build_flow_scheduler")


def test_schedulers_without_an_exact_flow_path_are_refused():
    cases = [
        (diffusers.EulerDiscreteScheduler(), "cannot run an exact flow-matching sigma schedule"),
        (diffusers.UniPCMultistepScheduler(), "use_flow_sigmas=True"),
        (_flow("DPMSolverMultistepScheduler", prediction_type="epsilon"), "prediction_type='flow_prediction'"),
        (_flow("DEISMultistepScheduler"), "instead of 0"),
        (_flow("SASolverScheduler"), "instead of 0"),
    ]
    for scheduler, fragment in cases:
        with pytest.raises(TechniqueError) as error:
            set_exact_sigmas(scheduler, [1.0, 0.5])
        assert_one_line(error, type(scheduler).__name__, fragment)


def test_a_singlestep_scheduler_that_switches_lower_order_final_is_refused():
    scheduler = _flow("DPMSolverSinglestepScheduler", lower_order_final=False)
    with pytest.raises(TechniqueError) as error:
        set_exact_sigmas(scheduler, equal_steps(4))
    assert_one_line(error, "lower_order_final=False")


@pytest.mark.parametrize(
    "sigmas",
    [[], [0.5, 0.7], [1.2, 0.5], [0.5, 0.0], [0.5, -0.1], [0.5, float("nan")], [0.5, 0.5], [0.5, 0.5 - 1e-12]],
    ids=["empty", "increasing", "above-one", "zero", "negative", "nan", "repeated", "same-float32"],
)
def test_bad_sigma_lists_are_refused_in_one_line(sigmas):
    scheduler = build_flow_scheduler(SolverConfig(name="flow_euler"), SD3_SCHEDULER)
    with pytest.raises(TechniqueError) as error:
        set_exact_sigmas(scheduler, sigmas)
    assert_one_line(error, "sigma")
