"""The sampling loop every candidate runs: a diffusers pipeline whose schedule, solver and guidance are a plan.

diffusers' pipelines take a step count, not an exact schedule, and each calls its denoiser its own way, so a
plan needs a loop of its own. It is deliberately plain: (encode prompts) -> scheduler.set (exact schedule) ->
for each t: denoiser (once, or on a doubled batch under guidance) -> scheduler.step -> VAE decode.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from autoaccel.errors import TargetError, TechniqueError
from autoaccel.pipeline.call_control import call_controller
from autoaccel.schedules.exact import set_exact_sigmas
from autoaccel.schedules.schedulers import build_scheduler_from, model_schedulers, refuse_switched_settings
from autoaccel.targets.conditions import CLASS, Conditions, concat_keywords
from autoaccel.targets.denoisers import decode, execution_device, predict, sample_shape
from autoaccel.targets.layouts import layout_of
from autoaccel.util.imaging import to_pil_images
from autoaccel.util.interrupts import raise_if_cancelled


def set_exact_timesteps(scheduler, timesteps: list[int], device: torch.device | str = "cpu") -> None:
    """Makes ``scheduler`` run exactly ``timesteps`` (strictly decreasing ints), whatever its API allows.

    Schedulers whose ``set_timesteps`` takes ``timesteps=`` get them directly. Sigma-based multistep schedulers
    that only take a count (UniPC, DEIS) are set for that count, then their ``timesteps`` and ``sigmas`` are
    replaced by the values at the requested steps, keeping the scheduler's own final sigma. Tests check this
    against each scheduler's native output on its own uniform schedule.
    """
    config_before = dict(scheduler.config)
    accepted = inspect.signature(scheduler.set_timesteps).parameters
    if "timesteps" in accepted:
        scheduler.set_timesteps(timesteps=list(timesteps), device=device)
    else:
        _set_sigma_timesteps(scheduler, timesteps, device)
    refuse_switched_settings(scheduler, config_before, len(timesteps))


def _set_sigma_timesteps(scheduler, timesteps: list[int], device) -> None:
    scheduler.set_timesteps(len(timesteps), device=device)
    if not isinstance(getattr(scheduler, "sigmas", None), torch.Tensor):
        raise TechniqueError(f"{type(scheduler).__name__} cannot run a custom timestep schedule")
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    index = torch.tensor(timesteps, dtype=torch.long)
    sigmas = ((1 - alphas_cumprod[index]) / alphas_cumprod[index]).sqrt().to(torch.float32)
    final_sigma = scheduler.sigmas[-1:].to("cpu", torch.float32)
    # where the scheduler keeps them (UniPC and DEIS keep sigmas on the CPU; DEIS's higher orders need that)
    scheduler.sigmas = torch.cat([sigmas, final_sigma]).to(scheduler.sigmas.device)
    scheduler.timesteps = index.to(device=device, dtype=scheduler.timesteps.dtype)


@dataclass
class SamplerSettings:
    """What the sampling loop needs beyond the denoiser and the scheduler.

    The schedule is one of: ``timesteps`` (DDPM-family models: exact integer timesteps), ``sigmas`` (flow-matching
    models: exact sigmas in (0, 1], the scheduler appends the final 0), or ``native_steps`` (the scheduler's own
    ``set_timesteps(n)``, as the pipeline's default call runs it).
    """

    timesteps: list[int] = field(default_factory=list)
    guidance_scale: float = 1.0
    null_class: int | None = None
    sigmas: list[float] = field(default_factory=list)
    native_steps: int | None = None
    # (technique, config) pairs applied to this pipeline, in order: what its latency is cached by
    techniques: list[tuple[Any, Any]] = field(default_factory=list)
    # technique name -> sha256 of the artifact its model was stored as (in the run's artifacts/), if any
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def scheduled(self) -> bool:
        return bool(self.timesteps or self.sigmas or self.native_steps)

    def schedule(self) -> list:
        """The schedule as recorded: timesteps, or sigmas for a flow-matching plan."""
        return list(self.sigmas) if self.sigmas else list(self.timesteps)


class SamplerPipeline(DiffusionPipeline):
    """A denoiser (UNet or transformer, pixel or latent) + any scheduler, run on an exact schedule with optional
    classifier-free guidance, its latents decoded by the model's own VAE.

    ``autoaccel.apply_recipe`` returns one of these around a loaded pipeline's denoiser. Calling it with the same
    noise seed and condition indices (class labels, or indices into the target's prompts) reproduces the images
    a recipe was scored on. ``unet`` is another name for ``denoiser``.
    """

    def __init__(self, denoiser, scheduler, vae=None, conditions: Conditions | None = None) -> None:
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler, vae=vae)
        self.plan = SamplerSettings()
        self.conditions = conditions or _class_conditions_of(denoiser)
        # denoiser evaluations in full-forward equivalents (the NFE: a cached call counts as its share of a full
        # one), and the calls themselves
        self.denoiser_calls: float = 0
        self.model_calls = 0
        self.stage_ms: dict[str, float] = {}  # the last call's time per stage: encode, denoise, decode

    @property
    def unet(self):
        return self.denoiser

    @unet.setter
    def unet(self, module) -> None:
        self.denoiser = module

    @property
    def unet_calls(self) -> int:
        return self.denoiser_calls

    @unet_calls.setter
    def unet_calls(self, count: int) -> None:
        self.denoiser_calls = count

    @property
    def active_conditions(self) -> Conditions:
        """The conditions, with the plan's null class where a plan or recipe names one, and the plan's guidance
        scale where the model takes it as an input."""
        if self.conditions.kind == CLASS and self.plan.null_class is not None:
            return replace(self.conditions, null_class=self.plan.null_class)
        if self.conditions.guidance_keyword is not None:
            return replace(self.conditions, embedded_guidance=self.plan.guidance_scale)
        return self.conditions

    @property
    def guided(self) -> bool:
        return self.plan.guidance_scale != 1.0 and self.active_conditions.paired_guidance

    def _predict(self, sample: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor | None, encoded):
        """The denoiser's prediction in float32, whatever the model's dtype: its input and conditioning are cast to
        the model's dtype (a plan's runtime precision), the latents and the scheduler's arithmetic stay float32."""
        prediction = self._predict_in_model_dtype(sample.to(self.denoiser.dtype), timestep, labels, encoded)
        return prediction.to(sample.dtype)

    def _predict_in_model_dtype(self, sample: torch.Tensor, timestep: torch.Tensor, labels, encoded):
        device = sample.device
        conditions = self.active_conditions
        keywords = _cast_floats(conditions.keywords(labels, False, device, encoded), sample.dtype)
        controller = call_controller(self.denoiser)
        share = controller.last_call_share if controller is not None else (lambda: 1.0)  # a cached call: a share
        if not self.guided or labels is None:
            prediction = predict(self.denoiser, sample, timestep, keywords)
            # a model that runs another inside some calls (a teacher on assigned steps) says how many it made
            evaluations = getattr(self.denoiser, "evaluations", None)
            self.denoiser_calls += evaluations(timestep) if evaluations is not None else share()
            self.model_calls += 1
            return prediction
        null = _cast_floats(conditions.keywords(labels, True, device, encoded), sample.dtype)
        both = predict(self.denoiser, torch.cat([sample, sample]), timestep, concat_keywords(keywords, null))
        self.denoiser_calls += 2 * share()
        self.model_calls += 2
        conditional, unconditional = both.chunk(2)
        return unconditional + self.plan.guidance_scale * (conditional - unconditional)

    def set_schedule(self, device) -> None:
        """Sets the scheduler to the plan's schedule."""
        if self.plan.sigmas:
            set_exact_sigmas(self.scheduler, self.plan.sigmas, device=device)
        elif self.plan.timesteps:
            set_exact_timesteps(self.scheduler, self.plan.timesteps, device=device)
        else:
            set_native_steps(self.scheduler, self.plan.native_steps, self.denoiser, device)

    @torch.no_grad()
    def __call__(
        self,
        noise: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pt",
        encode: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ):
        """Denoises ``noise`` (N, C, H, W) along the plan; returns images in [-1, 1] (``pt``) or PIL images.

        ``class_labels``: one condition index per sample (its class, or its prompt's index). ``encode``: encode
        the prompts with the text encoder(s) on this call, as a deployment does, instead of using the cached
        embeddings (the same values): what latency measures. ``on_step(done, steps)``: called after each
        denoising step (progress of a long call).
        """
        if not self.plan.scheduled:
            raise TechniqueError("the pipeline has no schedule: apply a plan or recipe first")
        device = execution_device(self.denoiser)
        controller = call_controller(self.denoiser)
        if controller is not None:  # e.g. a cache calibrated per schedule runs its calibration pass first, untimed
            self.set_schedule(device)
            controller.prepare(self)
        timer = StageTimer(device)
        labels = class_labels.to(device) if class_labels is not None else None
        with timer("encode"):
            encoded = self.conditions.encode(labels) if encode else None
        with timer("denoise"):
            self.set_schedule(device)
            takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
            # flow-matching schedulers start from unscaled noise and take unscaled inputs
            sample = noise.to(device=device, dtype=torch.float32) * getattr(self.scheduler, "init_noise_sigma", 1.0)
            scale_input = getattr(self.scheduler, "scale_model_input", None)
            self.denoiser_calls, self.model_calls = 0, 0
            # which calls reuse features is decided per call of this run
            with controller.running(self) if controller is not None else contextlib.nullcontext():
                steps = len(self.scheduler.timesteps)
                for index, timestep in enumerate(self.scheduler.timesteps):
                    raise_if_cancelled()  # an interrupted run stops here, within one step
                    model_input = scale_input(sample, timestep) if scale_input is not None else sample
                    prediction = self._predict(model_input, timestep, labels, encoded)
                    extra = {"generator": generator} if takes_generator else {}
                    sample = self.scheduler.step(prediction, timestep, sample, **extra).prev_sample
                    if on_step is not None:
                        on_step(index + 1, steps)
        with timer("decode"):
            images = decode(self.vae, sample).float()
        self.stage_ms = timer.finish()
        images = images.cpu()
        if output_type == "pt":
            return ImagePipelineOutput(images=images)

        return ImagePipelineOutput(images=to_pil_images(images))


def _cast_floats(keywords: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """The denoiser's keyword arguments with their floating-point tensors (prompt embeddings) in ``dtype``."""
    return {
        key: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for key, value in keywords.items()
    }


def _class_conditions_of(denoiser) -> Conditions:
    """A pipeline built around a bare denoiser: class labels where it has class embeddings (its null class,
    if any, comes from the plan), else unconditional."""
    classes = getattr(getattr(denoiser, "config", None), "num_class_embeds", None)
    return Conditions(CLASS, int(classes)) if classes else Conditions()


def set_native_steps(scheduler, steps: int | None, denoiser, device) -> None:
    """The scheduler's own ``set_timesteps(steps)``, as its pipeline calls it (with the resolution-dependent
    shift a flow scheduler with dynamic shifting takes, computed as diffusers' pipelines do)."""
    if not steps:
        raise TechniqueError("the pipeline has no schedule: apply a plan or recipe first")
    extra = {}
    if getattr(scheduler.config, "use_dynamic_shifting", False):
        extra["mu"] = dynamic_shift_mu(scheduler.config, denoiser)
    native_sigmas = layout_of(denoiser).native_sigmas
    if native_sigmas is not None and not getattr(scheduler.config, "use_flow_sigmas", False):
        scheduler.set_timesteps(sigmas=native_sigmas(steps), device=device, **extra)  # as FluxPipeline passes them
    else:
        scheduler.set_timesteps(steps, device=device, **extra)


def dynamic_shift_mu(config, denoiser) -> float:
    """diffusers' resolution-dependent shift: linear in the image's token count between the scheduler's
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)."""
    _, height, width = sample_shape(denoiser)
    patch = (getattr(denoiser.config, "patch_size", 1) or 1) * layout_of(denoiser).packing
    tokens = (height // patch) * (width // patch)
    base_len, max_len = config.base_image_seq_len, config.max_image_seq_len
    slope = (config.max_shift - config.base_shift) / (max_len - base_len)
    return tokens * slope + config.base_shift - slope * base_len


class StageTimer:
    """Wall time per stage of one call (CUDA-synchronised on a GPU, so a stage's kernels count in it)."""

    def __init__(self, device) -> None:
        self.cuda = str(device).startswith("cuda")
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        if self.cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - started) * 1000

    def finish(self) -> dict[str, float]:
        return dict(self.ms)


def sampler_pipeline(target) -> SamplerPipeline:
    """A fresh pipeline around ``target``'s denoiser and VAE (shared, not copied: sampler techniques leave them
    alone), running the model's own scheduler until a technique swaps it (a class a model may come with:
    ``autoaccel.schedules.schedulers``)."""
    where = f"model {target.name}'s scheduler"
    scheduler = build_scheduler_from(
        target.scheduler_class, target.scheduler_config, where, f"{where} config", model_schedulers(), TargetError
    )
    pipeline = SamplerPipeline(
        denoiser=target.denoiser, scheduler=scheduler, vae=target.vae, conditions=target.conditions
    )
    pipeline.plan.null_class = target.null_class
    return pipeline
