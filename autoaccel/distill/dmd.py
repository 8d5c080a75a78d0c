"""Distribution matching distillation in the DMD2 style (Yin et al., 2024): a one- or few-step generator pulled
towards the teacher's distribution rather than along its trajectories.

Three networks, all starting from the teacher's weights: the generator (the student), the teacher as the real
score (at the default call's guidance, which the student thereby learns: it runs one branch per step), and a fake
score that tracks the generator's own distribution. Each iteration:

- the generator makes clean samples. A multi-step student is trained with backward simulation: the input of its
  step ``i`` is its own sample after ``i`` steps, re-noised as ``LCMScheduler`` re-noises (the student is sampled
  with that scheduler on the same timesteps, so plain diffusers runs it);
- the distribution matching gradient at a random noise level (``[0.02, 0.98]`` of the schedule): the fake score's
  clean estimate minus the real score's, divided by the mean distance of the sample to the real estimate (DMD's
  weighting), applied to the generator's samples. ``real_guidance`` sets the real score's guidance apart from the
  default call's (see DMDSettings);
- ``gan_weight`` > 0: a non-saturating GAN term from a small head on the fake score's bottleneck features, which
  learns real against generated. Real images are the target's own (the embedded models' digits, ``target.data``
  for a user's model; encoded by the VAE under a latent model); a target without them uses the teacher's samples
  (the recipe says which, ``gan_data``);
- ``regression_weight`` > 0: DMD1's regression of the generator's first step onto the teacher's deterministic ODE
  end points from the same noise (off by default, as in DMD2);
- then ``fake_updates`` updates of the fake score (two time scales) on fresh generator samples with the model's
  own denoising loss, plus the GAN head's loss where there is one.

The loop shares the other methods' data, clock, EMA and checkpoints (``autoaccel.distill.training``): iterations
are a fidelity, and a promoted or interrupted run continues from its checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autoaccel.distill.adapters import checkpointed, trainable, training_precision
from autoaccel.distill.consistency import ConsistencySettings, boundary_output, lcm_scheduler
from autoaccel.distill.data import Teacher, clean_samples, ode_endpoints
from autoaccel.distill.diffusion import SCHEDULER_PREDICTION, alpha_sigma
from autoaccel.distill.students import Continued, kept_student
from autoaccel.distill.training import (
    Clock,
    TrainSettings,
    draw,
    finished,
    finished_run,
    frozen_copy,
    keep_checkpoint,
    pause_training,
    resume,
    run_settings,
    student_copy,
)
from autoaccel.errors import TechniqueError
from autoaccel.metrics.features import posterior_means, to_unit_range
from autoaccel.targets.denoisers import predict
from autoaccel.targets.layouts import layout_of
from autoaccel.util.training import clipped_step, ema_update

NOISE_RANGE = (0.02, 0.98)  # the share of the schedule the matching gradient and the fake score train over (DMD2)
DISCRIMINATOR_WEIGHT = 0.01  # the GAN head's loss beside the fake score's denoising loss (DMD2's classifier weight)
REAL_IMAGES = "real images"
TEACHER_SAMPLES = "teacher samples"
MAX_REAL = 10_000  # real images the GAN term keeps in the model's space (float32 samples or latents)
DATA_SEED = 40_000  # the draw of real images for the GAN term: apart from every other seed


@dataclass(frozen=True)
class DMDSettings:
    """``real_guidance``: the guidance the real score runs at (None: the default call's). A strongly guided score
    describes a sharper distribution than the guided sampler's output, so matching it seeks modes (a collapsed
    student: high precision, low recall); run lower, the default call's guidance is still learned through the
    regression onto its ODE end points. ``original_steps``: the LCMScheduler grid the student's timesteps come
    from (as a consistency student's); ``student_target``: what the generator's output means (``v`` or ``x``)."""

    fake_updates: int = 5
    gan_weight: float = 0.0
    regression_weight: float = 0.0
    real_guidance: float | None = None
    original_steps: int = 50
    student_target: str = "v"


def dmd_scheduler(target, settings: DMDSettings):
    """The LCMScheduler the student is trained for and sampled with."""
    return lcm_scheduler(target, lcm_equivalent(settings))


def lcm_equivalent(settings: DMDSettings) -> ConsistencySettings:
    """The consistency settings whose LCMScheduler the student runs (its grid and prediction type)."""
    return ConsistencySettings(original_steps=settings.original_steps, student_target=settings.student_target)


def dmd_student(
    target, steps: int, settings: DMDSettings, train: TrainSettings, log: Callable[[str], None] | None = None
) -> tuple[torch.nn.Module, float]:
    """The ``steps``-step DMD student of these settings (trained once per process) and the minutes it took."""
    key = ("dmd", target.content_hash, _real_data(target), steps, settings, train)
    return kept_student(key, lambda: _train(target, steps, settings, train, log))


def _real_data(target) -> tuple[int, ...] | None:
    """The real images' shape: part of a student's identity, as the GAN term's data."""
    return None if target.real_images is None else tuple(target.real_images.shape)


def gan_data_source(target, settings: DMDSettings) -> str | None:
    """What the GAN term trains against: the target's real images, or the teacher's samples without them."""
    if settings.gan_weight <= 0:
        return None
    return REAL_IMAGES if target.real_images is not None else TEACHER_SAMPLES


def real_samples(target, count: int, seed: int) -> torch.Tensor:
    """The GAN's real side in the model's sample space: the target's real images (at most ``MAX_REAL``, drawn
    with ``seed``) in [-1, 1], their VAE latents under a latent model; without real images, ``count`` clean
    teacher samples. Converted a chunk at a time, so a large ``target.data`` folder is never held as floats
    whole."""
    if target.real_images is None:
        return clean_samples(target, count, seed)[0].float()
    real = target.real_images
    rows = torch.randperm(len(real), generator=torch.Generator().manual_seed(DATA_SEED + seed))[:MAX_REAL]
    return torch.cat([_model_space(target, real[chunk]) for chunk in rows.sort().values.split(256)])


def _model_space(target, images_uint8: torch.Tensor) -> torch.Tensor:
    """Real images where the model samples: pixels in [-1, 1], or latents under its VAE's scaling (and shift), as
    ``autoaccel.targets.denoisers.decode`` undoes them."""
    vae = target.vae
    if vae is None:
        return to_unit_range(images_uint8)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((posterior_means(vae, images_uint8) - shift) * vae.config.scaling_factor).cpu()


# ------------------------------------------------------------------------------------------------ GAN head


def feature_module(network: torch.nn.Module) -> torch.nn.Module:
    """The layer whose output the discriminator reads, found through the model's layout: a UNet's middle block,
    or the middle block of a transformer's row of blocks."""
    layout = layout_of(network)
    levels = layout.levels(network)
    if levels is not None and levels[1] is not None:
        return getattr(network, levels[1])
    if layout.sequence and len(layout.sequence_blocks(network)):
        blocks = layout.sequence_blocks(network)
        return blocks[len(blocks) // 2]
    raise TechniqueError(
        f"distillation.gan_weight > 0 needs a denoiser with a middle block; {type(network).__name__} has none "
        "(set gan_weight 0)"
    )


class Features:
    """Keeps the latest output of the network's feature layer (a forward hook): the discriminator's input."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        feature_module(network).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.value = output[0] if isinstance(output, tuple) else output


class Discriminator(torch.nn.Module):
    """One logit per sample from bottleneck features: a convolution over a feature map (B, C, H, W), or a
    per-token layer averaged over tokens (B, N, C)."""

    def __init__(self, channels: int, spatial: bool) -> None:
        super().__init__()
        self.spatial = spatial
        if spatial:
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(channels, channels, 3, padding=1),
                torch.nn.GroupNorm(math.gcd(32, channels), channels),
                torch.nn.SiLU(),
            )
        else:
            self.body = torch.nn.Sequential(
                torch.nn.LayerNorm(channels), torch.nn.Linear(channels, channels), torch.nn.SiLU()
            )
        self.head = torch.nn.Linear(channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.body(features.float())
        pooled = hidden.mean(dim=(2, 3)) if self.spatial else hidden.mean(dim=1)
        return self.head(pooled).squeeze(1)


def _discriminator(features: torch.Tensor, device) -> Discriminator:
    spatial = features.dim() == 4
    channels = features.shape[1] if spatial else features.shape[-1]
    return Discriminator(int(channels), spatial).to(device)


# ------------------------------------------------------------------------------------------------ training


def denoising_target(prediction: str, clean: torch.Tensor, noise: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """What a model of ``prediction`` type is trained to output for ``alpha * clean + sigma * noise``."""
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return alpha * noise - sigma * clean
    return clean


class _Run:
    """One DMD training run's networks, optimizers, data and random stream, with the two updates it alternates."""

    def __init__(self, target, steps: int, settings: DMDSettings, train: TrainSettings) -> None:
        self.target, self.settings, self.train, self.steps = target, settings, train, steps
        self.device = device = target.denoiser.device
        self.teacher = Teacher.of_target(target, settings.real_guidance)
        self.scheduler = dmd_scheduler(target, settings)
        self.scheduler.set_timesteps(steps)
        self.timesteps = [int(step) for step in self.scheduler.timesteps]
        self.prediction = SCHEDULER_PREDICTION[settings.student_target]
        self.own_prediction = self.teacher.prediction  # the fake score keeps the teacher's parameterization
        self.clean, self.labels = clean_samples(target, train.data_samples, train.seed)
        self.generator = torch.Generator().manual_seed(train.seed * 1_000 + 13)
        torch.manual_seed(train.seed * 1_000 + 13)
        self.student = student_copy(target.denoiser, train.adapter)
        self.fake = student_copy(target.denoiser, train.adapter)
        self.fake_score = Teacher(target, self.fake, self.own_prediction, 1.0)  # conditional, unguided
        self.kept = frozen_copy(self.student) if train.ema > 0 else None
        self.low, self.high = (round(share * (target.num_train_timesteps - 1)) for share in NOISE_RANGE)
        self.features = Features(self.fake) if gan_data_source(target, settings) else None
        self.critic: torch.nn.Module = self.fake
        self.real = None
        if self.features is not None:
            self.real = real_samples(target, train.data_samples, train.seed).to(device)
            with torch.no_grad():  # one call to learn the feature layer's shape
                probe = self.clean[:2].to(device).float()
                predict(self.fake, probe, torch.full((2,), self.high, device=device), self.feature_condition(2))
            head = _discriminator(self.features.value, device)
            self.critic = torch.nn.ModuleDict({"fake": self.fake, "head": head})
        self.pairs = ode_endpoints(target, train.data_samples, train.seed) if settings.regression_weight > 0 else None
        self.optimizer = torch.optim.Adam(trainable(self.student), lr=train.learning_rate)
        self.critic_optimizer = torch.optim.Adam(trainable(self.critic), lr=train.learning_rate)

    def parts(self) -> dict:
        """What a checkpoint keeps."""
        parts = {"student": checkpointed(self.student), "fake": checkpointed(self.fake), "optimizer": self.optimizer}
        parts["critic_optimizer"] = self.critic_optimizer
        parts.update({"head": self.critic["head"]} if self.features is not None else {})
        return parts | ({"ema": checkpointed(self.kept)} if self.kept is not None else {})

    def generate(self, network, sample, timestep, labels) -> torch.Tensor:
        target = self.target
        return boundary_output(
            network, target.conditions, self.scheduler, self.teacher.abar, self.prediction, sample, timestep, labels
        )

    def draw_labels(self) -> torch.Tensor | None:
        rows = draw(self.generator, len(self.clean), self.train.batch_size)
        return None if self.labels is None else self.labels[rows].to(self.device)

    def sample(self, labels) -> torch.Tensor:
        """The student's clean estimate at a random one of its steps, whose input is its own sample after the
        earlier steps (backward simulation); with the graph of that last call only."""
        count, device = self.train.batch_size, self.device
        step = int(torch.randint(0, self.steps, (1,), generator=self.generator))
        sample = torch.randn((count, *self.clean.shape[1:]), generator=self.generator).to(device)
        with torch.no_grad():
            for index in range(step):
                estimate = self.generate(self.student, sample, self._at(self.timesteps[index]), labels)
                alpha, sigma = alpha_sigma(self.teacher.abar, self._at(self.timesteps[index + 1]))
                sample = alpha * estimate + sigma * torch.randn(estimate.shape, generator=self.generator).to(device)
        return self.generate(self.student, sample, self._at(self.timesteps[step]), labels)

    def _at(self, timestep: int) -> torch.Tensor:
        return torch.full((self.train.batch_size,), timestep, device=self.device)

    def noised(self, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sample`` at a random noise level of ``NOISE_RANGE``: (noisy, timestep, noise)."""
        timestep = torch.randint(self.low, self.high + 1, (len(sample),), generator=self.generator).to(self.device)
        noise = torch.randn(sample.shape, generator=self.generator).to(self.device)
        alpha, sigma = alpha_sigma(self.teacher.abar, timestep)
        return alpha * sample + sigma * noise, timestep, noise

    def feature_condition(self, count: int) -> dict:
        """The condition the discriminator's features are computed under: the null one where the model has one
        (real images need no label), else random rows' own."""
        conditions = self.target.conditions
        if self.labels is None:
            return conditions.keywords(None, True, self.device)
        rows = self.labels[draw(self.generator, len(self.labels), count)].to(self.device)
        return conditions.keywords(rows, conditions.paired_guidance, self.device)

    def logits(self, sample: torch.Tensor) -> torch.Tensor:
        noisy, timestep, _ = self.noised(sample)
        predict(self.fake, noisy, timestep, self.feature_condition(len(sample)))
        return self.critic["head"](self.features.value)

    def generator_update(self) -> None:
        """The distribution matching step (with the GAN and regression terms where they are on)."""
        labels = self.draw_labels()
        with training_precision(self.student):
            made = self.sample(labels)
            noisy, timestep, _ = self.noised(made.detach())
            with torch.no_grad():
                real_x0 = self.teacher.x0(noisy, timestep, labels)
                fake_x0 = self.fake_score.x0(noisy, timestep, labels)
                scale = (made - real_x0).abs().mean(dim=tuple(range(1, made.dim())), keepdim=True)
                gradient = torch.nan_to_num((fake_x0 - real_x0) / scale.clamp_min(1e-8))
            loss = 0.5 * F.mse_loss(made, (made - gradient).detach())
            if self.features is not None:
                loss = loss + self.settings.gan_weight * F.softplus(-self.logits(made)).mean()
            if self.pairs is not None:
                loss = loss + self.settings.regression_weight * self.regression()
        clipped_step(self.optimizer, loss, self.student)
        if self.kept is not None:
            ema_update(self.kept, self.student, self.train.ema)

    def regression(self) -> torch.Tensor:
        """DMD1's regression: the first step from the ODE reference's noise onto its end points."""
        noise, labels, ends = self.pairs
        rows = draw(self.generator, len(noise), self.train.batch_size)
        labels = None if labels is None else labels[rows].to(self.device)
        made = self.generate(self.student, noise[rows].to(self.device), self._at(self.timesteps[0]), labels)
        return F.mse_loss(made, ends[rows].to(self.device).float())

    def fake_update(self) -> None:
        """One fake score step on fresh generator samples: the model's own denoising loss (and the GAN head's)."""
        labels = self.draw_labels()
        with training_precision(self.fake):
            with torch.no_grad():
                made = self.sample(labels)
            noisy, timestep, noise = self.noised(made)
            keywords = self.target.conditions.keywords(labels, False, self.device)
            output = predict(self.fake, noisy, timestep, keywords).float()
            wanted = denoising_target(self.own_prediction, made, noise, *alpha_sigma(self.teacher.abar, timestep))
            loss = F.mse_loss(output, wanted)
            if self.features is not None:
                chosen = draw(self.generator, len(self.real), self.train.batch_size)
                judged = F.softplus(self.logits(made)) + F.softplus(-self.logits(self.real[chosen]))
                loss = loss + DISCRIMINATOR_WEIGHT * judged.mean()
        clipped_step(self.critic_optimizer, loss, self.critic)


def _train(target, steps: int, settings: DMDSettings, train: TrainSettings, log) -> Continued:
    entered = time.perf_counter()
    state = _Run(target, steps, settings, train)
    parts = state.parts()
    run = ("dmd", target.content_hash, _real_data(target), steps, settings, run_settings(train))
    first, earlier = resume(run, train.iterations, parts, state.generator)
    clock = Clock(train.max_minutes, f"DMD distillation to {steps} steps", earlier, train.iterations, entered)
    for iteration in range(first, train.iterations):
        pause_training(run, iteration, clock, parts, state.generator)
        state.generator_update()
        for _ in range(settings.fake_updates):
            state.fake_update()
        clock.check(iteration + 1)
    keep_checkpoint(run, train.iterations, clock.minutes, parts, state.generator)
    finished_run(run, train.iterations)
    if log is not None:
        log(f"dmd: {steps} steps, {train.iterations} iterations (from {first}), {clock.minutes:.1f} min")
    return Continued(finished(state.kept if state.kept is not None else state.student), earlier)
