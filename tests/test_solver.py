"""Solvers (autoaccel/techniques/solver.py) and the sampling loop (autoaccel/pipeline/sampling.py) on a tiny unet.

The key property: ``set_exact_timesteps`` makes a scheduler run exactly the steps it is given, so running our
loop on a scheduler's own native timesteps reproduces that scheduler's native output.
"""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.sampling import SamplerPipeline, set_exact_timesteps
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.solver import SOLVERS, SolverConfig, build_scheduler, scheduler_settings
from autoaccel.testing.pipelines import build_tiny_pipeline_folder


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    folder = build_tiny_pipeline_folder(tmp_path_factory.mktemp("solver") / "tiny")
    return load_pipeline_folder(folder, device="cpu")


@pytest.fixture(scope="module")
def base_config(tiny_target):
    """The tiny checkpoint's scheduler config: it asks for clip_sample=True and leading spacing."""
    config = dict(tiny_target.scheduler_config)
    assert config["clip_sample"] is True and config["timestep_spacing"] == "leading"
    return config


@pytest.fixture(scope="module")
def noise_and_labels():
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(3, 1, 8, 8, generator=generator), torch.tensor([0, 1, 2])


def _native_loop(unet, scheduler, noise, labels, **step_options):
    """The plain diffusers loop on a scheduler whose timesteps are already set."""
    sample = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            prediction = unet(scheduler.scale_model_input(sample, timestep), timestep, class_labels=labels).sample
            sample = scheduler.step(prediction, timestep, sample, **step_options).prev_sample
    return sample


def _ours(unet, scheduler, timesteps, noise, labels):
    pipeline = SamplerPipeline(denoiser=unet, scheduler=scheduler)
    pipeline.plan.timesteps = [int(step) for step in timesteps]
    return pipeline(noise, labels).images


# --- SolverConfig ----------------------------------------------------------------------------------------------


def test_unknown_solver_name_lists_valid_solvers():
    with pytest.raises(ConfigError) as info:
        SolverConfig(name="plms")
    assert "solver.name='plms'" in str(info.value)
    for name in SOLVERS:
        assert name in str(info.value)


@pytest.mark.parametrize(("name", "order"), [("ddim", 2), ("heun", 1), ("euler", 3), ("dpmsolver++", 4), ("deis", 0)])
def test_invalid_order_for_solver_lists_valid_orders(name, order):
    with pytest.raises(ConfigError) as info:
        SolverConfig(name=name, order=order)
    message = str(info.value)
    assert f"solver.order={order}" in message and repr(name) in message
    assert f"valid: {list(SOLVERS[name].orders)}" in message


@pytest.mark.parametrize(("name", "variant"), [("dpmsolver++", "bh1"), ("unipc", "sde"), ("ddim", "sde")])
def test_unknown_variant_lists_valid_variants(name, variant):
    with pytest.raises(ConfigError) as info:
        SolverConfig(name=name, variant=variant)
    assert f"solver.variant={variant!r}" in str(info.value)
    assert f"valid: {list(SOLVERS[name].variants)}" in str(info.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"final_sigma": "one"}, "solver.final_sigma"), ({"guidance": 0.5}, "solver.guidance")],
)
def test_other_bad_settings_name_the_field(options, field):
    with pytest.raises(ConfigError, match=field):
        SolverConfig(**options)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ddim", 1), ("euler", 1), ("heun", 2), ("ddpm", 1), ("dpmsolver++", 2), ("unipc", 2), ("deis", 2)],
)
def test_order_none_resolves_to_the_solvers_default(name, expected):
    assert SolverConfig(name=name, order=None).order == expected
    assert SolverConfig(name=name).order == expected


# --- build_scheduler ---------------------------------------------------------------------------------------------

ALL_CONFIGS = [
    SolverConfig(name=name, order=order, variant=variant)
    for name, spec in SOLVERS.items()
    for order in spec.orders
    for variant in spec.variants
]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda config: f"{config.name}-{config.order}-{config.variant}")
def test_build_scheduler_gives_the_solvers_class_with_neutral_settings(config, base_config):
    checkpoint = {**base_config, "thresholding": True, "steps_offset": 1}
    scheduler = build_scheduler(config, checkpoint)
    expected_class = SOLVERS[config.name].scheduler_class
    assert type(scheduler).__name__ == expected_class
    accepted = inspect.signature(type(scheduler).__init__).parameters
    # the checkpoint asks for clipping, thresholding, leading spacing and an offset: all undone
    expected = {"clip_sample": False, "thresholding": False, "timestep_spacing": "trailing", "steps_offset": 0}
    for key, value in expected.items():
        if key in accepted:
            assert scheduler.config[key] == value, key
    # the model's own settings carry through
    assert scheduler.config.num_train_timesteps == 100
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.beta_schedule == "linear"
    if "solver_order" in accepted:
        assert scheduler.config.solver_order == config.order
    for key, value in {**SOLVERS[config.name].fixed, **SOLVERS[config.name].variants[config.variant]}.items():
        assert scheduler.config[key] == value


def test_build_scheduler_does_not_mutate_the_base_config(base_config):
    before = dict(base_config)
    build_scheduler(SolverConfig(name="unipc"), base_config)
    assert base_config == before


def test_scheduler_settings_only_pass_what_the_class_accepts():
    class_name, settings = scheduler_settings(SolverConfig(name="heun"))
    assert class_name == "HeunDiscreteScheduler"
    assert "solver_order" not in settings and "final_sigmas_type" not in settings
    assert settings["clip_sample"] is False


def test_dpmsolver_single_quiet_lower_order_final_rewrite_is_refused(base_config):
    """DPM-Solver singlestep switches lower_order_final to True inside set_timesteps; the plan must fail instead."""
    config = SolverConfig(name="dpmsolver_single", order=2, lower_order_final=False, final_sigma="zero")
    scheduler = build_scheduler(config, base_config)
    with pytest.raises(TechniqueError, match="lower_order_final=False"):
        set_exact_timesteps(scheduler, [99, 75, 50, 25])


# --- set_exact_timesteps against native schedules -------------------------------------------------------------


@pytest.mark.parametrize("class_name", ["UniPCMultistepScheduler", "DEISMultistepScheduler"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [3, 5, 10])
def test_count_only_schedulers_reproduce_their_native_output(
    class_name, order, steps, tiny_target, base_config, noise_and_labels
):
    scheduler_class = getattr(diffusers, class_name)
    config = {**base_config, "timestep_spacing": "trailing", "clip_sample": False, "solver_order": order}
    assert "timesteps" not in inspect.signature(scheduler_class.set_timesteps).parameters
    native = scheduler_class.from_config(config)
    native.set_timesteps(steps)
    native_timesteps = [int(step) for step in native.timesteps]
    assert len(native_timesteps) == steps
    noise, labels = noise_and_labels
    expected = _native_loop(tiny_target.denoiser, native, noise, labels)
    ours = _ours(tiny_target.denoiser, scheduler_class.from_config(config), native_timesteps, noise, labels)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("class_name", ["UniPCMultistepScheduler", "DEISMultistepScheduler"])
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
@pytest.mark.parametrize("steps", [4, 7])
def test_count_only_schedulers_run_timesteps_they_would_not_pick_themselves(
    class_name, spacing, steps, tiny_target, base_config, noise_and_labels
):
    """Our scheduler is set up for trailing spacing; asked for another spacing's steps, it must run those."""
    scheduler_class = getattr(diffusers, class_name)
    native = scheduler_class.from_config({**base_config, "timestep_spacing": spacing, "clip_sample": False})
    native.set_timesteps(steps)
    wanted = [int(step) for step in native.timesteps]
    noise, labels = noise_and_labels
    expected = _native_loop(tiny_target.denoiser, native, noise, labels)
    ours_scheduler = scheduler_class.from_config({**base_config, "timestep_spacing": "trailing"})
    ours_scheduler.set_timesteps(steps)
    assert [int(step) for step in ours_scheduler.timesteps] != wanted  # really a different schedule
    ours = _ours(
        tiny_target.denoiser,
        scheduler_class.from_config({**base_config, "timestep_spacing": "trailing"}),
        wanted,
        noise,
        labels,
    )
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["default", "sde"])
@pytest.mark.parametrize("steps", [3, 6, 10])
def test_dpmsolver_multistep_reproduces_its_native_output(
    order, variant, steps, tiny_target, base_config, noise_and_labels
):
    scheduler = build_scheduler(SolverConfig(name="dpmsolver++", order=order, variant=variant), base_config)
    native = type(scheduler).from_config(scheduler.config)
    native.set_timesteps(steps)
    noise, labels = noise_and_labels
    step_options = {}
    if variant == "sde":  # the SDE variant draws noise at each step: the same seed on both sides
        step_options = {"generator": torch.Generator().manual_seed(7)}
    expected = _native_loop(tiny_target.denoiser, native, noise, labels, **step_options)
    pipeline = SamplerPipeline(denoiser=tiny_target.denoiser, scheduler=scheduler)
    pipeline.plan.timesteps = [int(step) for step in native.timesteps]
    ours = pipeline(noise, labels, generator=torch.Generator().manual_seed(7)).images
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_custom_timesteps_and_sigmas_are_the_requested_ones(base_config):
    wanted = [90, 61, 33, 12, 4]
    for class_name, final_sigma in [("UniPCMultistepScheduler", "zero"), ("DEISMultistepScheduler", "own")]:
        scheduler = getattr(diffusers, class_name).from_config({**base_config, "timestep_spacing": "trailing"})
        native_final = None
        if final_sigma == "own":
            scheduler.set_timesteps(len(wanted))
            native_final = float(scheduler.sigmas[-1])
        set_exact_timesteps(scheduler, wanted)
        assert scheduler.timesteps.tolist() == wanted
        alphas = scheduler.alphas_cumprod.double()
        expected_sigmas = ((1 - alphas[wanted]) / alphas[wanted]).sqrt().float()
        torch.testing.assert_close(scheduler.sigmas[:-1], expected_sigmas)
        if final_sigma == "zero":
            assert float(scheduler.sigmas[-1]) == 0.0
        else:  # DEIS ends at its own final sigma, the noise level of timestep 0
            assert float(scheduler.sigmas[-1]) == pytest.approx(native_final)
            assert native_final == pytest.approx(float(((1 - alphas[0]) / alphas[0]).sqrt()))


def test_scheduler_without_custom_timesteps_is_a_technique_error(base_config):
    scheduler = diffusers.DDIMScheduler.from_config(base_config)
    with pytest.raises(TechniqueError, match="DDIMScheduler cannot run a custom timestep schedule"):
        set_exact_timesteps(scheduler, [80, 40, 10])


# --- DDIM is DPM-Solver++ of order 1 ----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 10])
def test_ddim_solver_matches_diffusers_ddim(steps, tiny_target, base_config, noise_and_labels):
    """Our ``ddim`` (DPM-Solver++ 1, final sigma zero) against DDIMScheduler (eta=0, final alpha 1).

    Only step counts dividing num_train_timesteps: DDIMScheduler always steps from t to t - T // n, which on
    trailing spacing with T % n != 0 is not the next timestep of its own list (T=100, n=3: it runs 99, 66, 32
    but steps 66 -> 33), a quirk of DDIMScheduler that a schedule of exact steps does not share.
    """
    reference = diffusers.DDIMScheduler.from_config(
        {**base_config, "timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": True}
    )
    reference.set_timesteps(steps)
    noise, labels = noise_and_labels
    expected = _native_loop(tiny_target.denoiser, reference, noise, labels, eta=0.0)
    scheduler = build_scheduler(SolverConfig(name="ddim"), base_config)
    ours = _ours(tiny_target.denoiser, scheduler, reference.timesteps.tolist(), noise, labels)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


# --- the sampling loop ---------------------------------------------------------------------------------------


def test_pipeline_without_timesteps_is_a_technique_error(tiny_target, noise_and_labels):
    pipeline = SamplerPipeline(denoiser=tiny_target.denoiser, scheduler=build_scheduler(SolverConfig(), {}))
    with pytest.raises(TechniqueError, match="no schedule"):
        pipeline(*noise_and_labels)


def test_guidance_combines_conditional_and_null_predictions(tiny_target, base_config, noise_and_labels):
    noise, labels = noise_and_labels
    timesteps = [99, 66, 33]
    scale, null_class = 1.5, tiny_target.null_class
    assert null_class == 3

    reference = build_scheduler(SolverConfig(name="ddim"), base_config)
    set_exact_timesteps(reference, timesteps)
    sample = noise.clone()
    unet = tiny_target.denoiser
    with torch.no_grad():
        for timestep in reference.timesteps:
            conditional = unet(sample, timestep, class_labels=labels).sample
            unconditional = unet(sample, timestep, class_labels=torch.full_like(labels, null_class)).sample
            prediction = unconditional + scale * (conditional - unconditional)
            sample = reference.step(prediction, timestep, sample).prev_sample

    pipeline = SamplerPipeline(denoiser=unet, scheduler=build_scheduler(SolverConfig(name="ddim"), base_config))
    pipeline.plan.timesteps = timesteps
    pipeline.plan.guidance_scale = scale
    pipeline.plan.null_class = null_class
    guided = pipeline(noise, labels).images
    assert pipeline.unet_calls == 2 * len(timesteps)
    torch.testing.assert_close(guided, sample, atol=1e-5, rtol=0)

    pipeline.plan.guidance_scale = 1.0
    unguided = pipeline(noise, labels).images
    assert pipeline.unet_calls == len(timesteps)
    assert not torch.allclose(unguided, guided, atol=1e-4)


def test_pipeline_is_repeatable(tiny_target, base_config, noise_and_labels):
    pipeline = SamplerPipeline(
        denoiser=tiny_target.denoiser, scheduler=build_scheduler(SolverConfig(name="unipc", order=3), base_config)
    )
    pipeline.plan.timesteps = [95, 70, 41, 17, 3]
    first = pipeline(*noise_and_labels).images
    second = pipeline(*noise_and_labels).images
    assert torch.equal(first, second)
    assert first.shape == (3, 1, 8, 8)
