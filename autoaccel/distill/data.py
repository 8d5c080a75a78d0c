"""What the teacher gives a distillation: its guided prediction at any noised sample, its own clean samples, and
its ODE end points from known noise. No external data: a user's model is distilled from itself.

Clean samples are the deterministic ODE reference's (``autoaccel.reference.calibration``), on seeds of their
own, away from the seeds candidates are scored on; they are generated once per target and reused.
"""

from __future__ import annotations

import threading

import torch

from autoaccel.distill.diffusion import alpha_sigma, alphas_cumprod, prediction_to_x0
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.reference.calibration import clean_samples as reference_samples
from autoaccel.reference.sampling import ode_reference_pipeline
from autoaccel.targets.conditions import concat_keywords
from autoaccel.targets.denoisers import predict

DATA_SEED_OFFSET = 30_000  # distillation data seeds: apart from scoring, calibration and noised-batch seeds
_ENDPOINTS: dict[tuple, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
_LOCK = threading.Lock()


class Teacher:
    """A denoiser as a function of (sample, per-row timestep, condition) -> its clean estimate, guided at
    ``guidance``: the target's model at its default guidance (``of_target``), or an earlier student (unguided:
    students are trained on the guided estimate, so they run without a second branch)."""

    def __init__(self, target, denoiser, prediction: str, guidance: float) -> None:
        self.denoiser = denoiser
        self.conditions = target.conditions
        self.prediction = prediction
        self.guidance = guidance
        self.abar = alphas_cumprod(target)

    @classmethod
    def of_target(cls, target, guidance: float | None = None) -> Teacher:
        """The target's model at ``guidance`` (None: the default call's; a model without guidance ignores it)."""
        prediction = target.scheduler_config.get("prediction_type", "epsilon")
        guided = guidance if guidance is not None and target.conditions.guidable else target.reference_guidance
        return cls(target, target.denoiser, prediction, guided)

    def x0(self, sample: torch.Tensor, timestep: torch.Tensor, labels, grad: bool = False) -> torch.Tensor:
        """The clean estimate; ``grad`` keeps the graph (a learned schedule's gradient flows through it)."""
        with torch.set_grad_enabled(grad):
            output = guided_output(self.denoiser, self.conditions, sample, timestep, labels, self.guidance)
            alpha, sigma = alpha_sigma(self.abar, timestep)
            return prediction_to_x0(output.float(), sample, alpha, sigma, self.prediction)


def guided_output(denoiser, conditions, sample, timestep, labels, guidance: float) -> torch.Tensor:
    """The denoiser's output, classifier-free guided at ``guidance`` where that is not 1 and there are labels."""
    device = sample.device
    keywords = conditions.keywords(labels, False, device)
    if guidance == 1.0 or labels is None or not conditions.paired_guidance:
        return predict(denoiser, sample, timestep, keywords)
    null = conditions.keywords(labels, True, device)
    both = predict(
        denoiser, torch.cat([sample, sample]), torch.cat([timestep, timestep]), concat_keywords(keywords, null)
    )
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def clean_samples(target, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``count`` clean teacher samples (latents under a VAE) and their condition indices, cached per target."""
    return reference_samples(target, count, DATA_SEED_OFFSET + seed)


def ode_endpoints(target, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(noise, condition indices, the deterministic ODE reference's final samples from that noise), cached per
    target: what a learned schedule is fitted to reproduce."""
    key = (target.content_hash, count, seed)
    with _LOCK:
        if key in _ENDPOINTS:
            return _ENDPOINTS[key]

    seeds = make_seed_batch(target.sample_shape, count, DATA_SEED_OFFSET + seed, target.condition_count)
    pipeline = ode_reference_pipeline(target)
    pipeline.vae = None
    endpoints = pipeline(seeds.noise, seeds.class_labels).images
    value = (seeds.noise, seeds.class_labels, endpoints)
    with _LOCK:
        _ENDPOINTS[key] = value
    return value
