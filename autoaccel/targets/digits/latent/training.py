"""Pieces every latent-model trainer shares: the learning-rate curve, EMA, and the DDPM noising step."""

from __future__ import annotations

import math

import torch


def warmup_cosine(steps: int, warmup_fraction: float = 0.05):
    """A LambdaLR factor: linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_sampling_scheduler():
    """What both pipelines sample with by default, and whose betas they train with: DDIM over 1000 linear-beta
    steps (deterministic, first order, valid at any step count), trailing spacing so the first step starts at
    t=999 where the latent is nearly pure noise, as the pipelines' start from N(0, 1) assumes, and the last step
    lands on the clean estimate."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,  # unused by trailing spacing; StableDiffusionPipeline rewrites any other value to 1
        timestep_spacing="trailing",
    )


def add_noise(
    clean: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy samples at uniformly drawn training timesteps: (noisy, noise, timesteps), from the seeded generator."""
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, len(alphas_cumprod), (clean.shape[0],), generator=generator)
    abar = alphas_cumprod[timesteps].view(-1, *([1] * (clean.dim() - 1)))
    return abar.sqrt() * clean + (1 - abar).sqrt() * noise, noise, timesteps


def seconds_since(started: float) -> float:
    import time

    return round(time.perf_counter() - started, 1)
