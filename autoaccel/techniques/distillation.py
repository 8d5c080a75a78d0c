"""Technique ``distillation``: a model trained to sample in fewer steps, from the target's own teacher.

``method`` is the searched categorical dimension:

- ``progressive``: halving rounds from ``start_steps`` down to ``steps`` (``autoaccel.distill.progressive``),
  sampled by deterministic DDIM on the student's trailing grid;
- ``consistency``: an LCM-style consistency student (``autoaccel.distill.consistency``), sampled by diffusers'
  ``LCMScheduler`` at ``steps`` steps;
- ``learned_schedule``: ``steps`` DDIM timesteps fitted to the teacher's ODE end points; the weights are the
  teacher's (``autoaccel.distill.learned_schedule``);
- ``dmd``: a DMD2-style distribution matching student (``autoaccel.distill.dmd``): a fake score tracks the
  student's distribution (``fake_updates`` per student update), the teacher's score pulls it towards the data,
  with a GAN term on real images (``gan_weight``) and DMD1's regression (``regression_weight``), the real score
  guided at the default call's guidance or at ``real_guidance``; multi-step students train with backward
  simulation and sample with diffusers' ``LCMScheduler``;
- ``none``: the model as it is (the schedule-only baseline of a distillation space).

A distilled model prescribes its own sampler (``autoaccel.pipeline.prescribed``): the solver and timesteps
techniques of a plan are overridden by it. Guidance is trained into students (they run one branch); a learned
schedule runs the teacher's default guidance. Students and schedules go through the artifact store: a recipe
names them with their hash and applying loads them, never training. Training minutes are recorded per trial as
the plan's search cost.
DDPM-family models (epsilon or v prediction) only: a flow-matching target is refused with the reason.

A student trains either its whole weights (a float32 copy of the model) or a LoRA adapter on the frozen base
(``adapter``: ``full``, ``lora``, or ``auto``: LoRA for a denoiser above 200M parameters,
``autoaccel.distill.adapters``), of rank ``lora_rank`` on the layers ``lora_modules`` names. A LoRA student's
adapter is merged into the deployed model (it runs at the base model's cost), and its artifact holds the adapter
alone, in diffusers' LoRA format (``pipe.load_lora_weights(file)``); it trains on a bfloat16 or float16 target as
loaded, which a whole-weight student is refused (``float32_copy``).

Iterations are a fidelity (``fidelity.train_shares``): at a lower level a consistency student, or a progressive
student's last round, trains ``train_share`` of its iterations and keeps a checkpoint; promoted, it continues from
there instead of restarting, to the weights an uninterrupted run gives. A learned schedule trains in full.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from autoaccel.distill.adapters import (
    ADAPTERS,
    LORA_MODULES,
    MAX_RANK,
    adapter_tensors,
    check_stored_kind,
    is_adapted,
    merged_model,
    resolved_adapter,
    stored_adapter,
    trained_adapter,
    with_adapter,
)
from autoaccel.distill.consistency import ConsistencySettings, consistency_student, lcm_scheduler, lcm_settings
from autoaccel.distill.data import DATA_SEED_OFFSET
from autoaccel.distill.diffusion import SCHEDULER_PREDICTION, alphas_cumprod, trailing_grid
from autoaccel.distill.dmd import (
    REAL_IMAGES,
    TEACHER_SAMPLES,
    DMDSettings,
    dmd_scheduler,
    dmd_student,
    gan_data_source,
    lcm_equivalent,
)
from autoaccel.distill.learned_schedule import CHECK_EVERY, learned_timesteps
from autoaccel.distill.progressive import ProgressiveSettings, progressive_student
from autoaccel.distill.students import kept_student
from autoaccel.distill.training import TrainSettings, share_of
from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.prescribed import PrescribedSampler, prescribe, prescription, read_prescription
from autoaccel.reference.calibration import clean_sample_work
from autoaccel.schedules.solvers import MAX_GUIDANCE
from autoaccel.techniques.base import (
    TRAIN_MINUTES,
    ParamSpec,
    SearchWork,
    Technique,
    guided_rows,
    register,
    require_types,
)
from autoaccel.techniques.solver import NEUTRAL_OVERRIDES
from autoaccel.util.artifacts import Artifact

METHODS = ("none", "progressive", "consistency", "learned_schedule", "dmd")
MAX_FAKE_UPDATES = 50
# Optimizer steps of one training: the bundled spaces train a few hundred, a large model's distillation some
# thousands; a training without end (a typo, a crafted recipe whose applying trains again) is refused.
MAX_ITERATIONS = 100_000
STUDENT_TARGETS = ("v", "x")
WEIGHTINGS = ("snr_trunc", "x")
LOSSES = ("l2", "huber")


@dataclass(frozen=True)
class DistillationConfig:
    """``method`` and the ``steps`` its model samples in; the rest are that method's training settings (the ones
    a method does not use are ignored, and left at their defaults by the spaces)."""

    method: str = "none"
    steps: int = 4
    iterations: int = 300
    learning_rate: float = 1e-4
    schedule_learning_rate: float = 0.02  # learned_schedule: its few timestep parameters move far faster than weights
    batch_size: int = 64
    ema: float = 0.999
    data_samples: int = 512
    seed: int = 0
    student_target: str = "v"
    start_steps: int = 64
    weighting: str = "snr_trunc"
    original_steps: int = 50
    loss: str = "huber"
    huber_c: float = 0.001
    target_ema: float = 0.95
    max_minutes: float | None = None
    train_share: float = 1.0  # the share of the training done (a lower fidelity level: fidelity.train_shares)
    adapter: str = "auto"  # full weights, a LoRA adapter, or auto: LoRA above 200M parameters
    lora_rank: int = 16
    lora_modules: str = "attention_mlp"
    fake_updates: int = 5  # dmd: fake score updates per student update (two time scales)
    gan_weight: float = 0.0  # dmd: the GAN term's weight (0: none)
    regression_weight: float = 0.0  # dmd: DMD1's regression onto the teacher's ODE end points (0: none)
    real_guidance: float | None = None  # dmd: the guidance the real score runs at (None: the default call's)

    def __post_init__(self) -> None:
        number = (int, float)
        require_types(
            self,
            "distillation",
            {
                "method": str,
                "steps": int,
                "iterations": int,
                "learning_rate": number,
                "schedule_learning_rate": number,
                "batch_size": int,
                "ema": number,
                "data_samples": int,
                "seed": int,
                "student_target": str,
                "start_steps": int,
                "weighting": str,
                "original_steps": int,
                "loss": str,
                "huber_c": number,
                "target_ema": number,
                "train_share": number,
                "adapter": str,
                "lora_rank": int,
                "lora_modules": str,
                "fake_updates": int,
                "gan_weight": number,
                "regression_weight": number,
            },
        )
        for name, valid in (
            ("method", METHODS),
            ("student_target", STUDENT_TARGETS),
            ("weighting", WEIGHTINGS),
            ("loss", LOSSES),
            ("adapter", ADAPTERS),
            ("lora_modules", LORA_MODULES),
        ):
            if getattr(self, name) not in valid:
                raise ConfigError(f"distillation.{name}={getattr(self, name)!r} is not valid; valid: {list(valid)}")
        integers = ("steps", "iterations", "batch_size", "data_samples", "seed", "start_steps", "original_steps")
        for name in (*integers, "lora_rank", "fake_updates", "gan_weight", "regression_weight"):
            spec = DISTILLATION_PARAMS[name]
            if not spec.accepts(getattr(self, name)):  # a recipe trains again without an artifact: bounded too
                raise ConfigError(
                    f"distillation.{name}={getattr(self, name)} is not valid; it must be {spec.describe()}"
                )
        rates_valid = self.learning_rate > 0 and self.schedule_learning_rate > 0
        if not rates_valid or not 0 <= self.ema < 1 or not 0 <= self.target_ema < 1 or self.huber_c <= 0:
            raise ConfigError(
                f"distillation settings learning_rate={self.learning_rate}, ema={self.ema}, "
                f"target_ema={self.target_ema}, huber_c={self.huber_c} are not valid; need learning_rate > 0, "
                "0 <= ema < 1, 0 <= target_ema < 1, huber_c > 0"
            )
        if self.method == "progressive":
            halvings = self.start_steps // self.steps
            if self.start_steps % self.steps or halvings < 2 or halvings & (halvings - 1):
                raise ConfigError(
                    f"distillation.start_steps={self.start_steps} is not valid for steps={self.steps}: progressive "
                    "distillation halves the step count, so start_steps must be steps times a power of two >= 2 "
                    f"(e.g. {self.steps * 16})"
                )
        if self.method in ("consistency", "dmd") and not 1 <= self.steps <= self.original_steps:
            raise ConfigError(
                f"distillation.steps={self.steps} is not valid for {self.method} sampling over "
                f"original_steps={self.original_steps}; it must be in [1, {self.original_steps}]"
            )
        guidance = self.real_guidance
        if guidance is not None and not DISTILLATION_PARAMS["real_guidance"].accepts(guidance):
            raise ConfigError(
                f"distillation.real_guidance={guidance!r} is not valid; it must be "
                f"{DISTILLATION_PARAMS['real_guidance'].describe()} or null (the default call's guidance)"
            )
        if not 0 < self.train_share <= 1:
            raise ConfigError(f"distillation.train_share={self.train_share} is not valid; it must be in (0, 1]")
        cap = self.max_minutes
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or not cap > 0):
            raise ConfigError(f"distillation.max_minutes={self.max_minutes!r} is not valid; it must be > 0 or null")

    @property
    def trains(self) -> bool:
        return self.method != "none"


DISTILLATION_PARAMS = {
    "method": ParamSpec("choice", choices=METHODS),
    "steps": ParamSpec("int", low=1, high=64),
    "iterations": ParamSpec("int", low=0, high=MAX_ITERATIONS),
    "learning_rate": ParamSpec("float", low=0.0, low_open=True, high=1.0),
    "schedule_learning_rate": ParamSpec("float", low=0.0, low_open=True, high=10.0),
    "batch_size": ParamSpec("int", low=1, high=4096),
    "ema": ParamSpec("float", low=0.0, high=1.0, high_open=True),
    "data_samples": ParamSpec("int", low=1, high=1_000_000),
    "seed": ParamSpec("int", low=0, high=2**32 - 1),
    "student_target": ParamSpec("choice", choices=STUDENT_TARGETS),
    "start_steps": ParamSpec("int", low=2, high=4096),
    "weighting": ParamSpec("choice", choices=WEIGHTINGS),
    "original_steps": ParamSpec("int", low=1, high=1000),
    "loss": ParamSpec("choice", choices=LOSSES),
    "huber_c": ParamSpec("float", low=0.0, low_open=True),
    "target_ema": ParamSpec("float", low=0.0, high=1.0, high_open=True),
    "max_minutes": ParamSpec("float", low=0.0, low_open=True),
    "train_share": ParamSpec("float", low=0.0, low_open=True, high=1.0),
    "adapter": ParamSpec("choice", choices=ADAPTERS),
    "lora_rank": ParamSpec("int", low=1, high=MAX_RANK),
    "lora_modules": ParamSpec("choice", choices=LORA_MODULES),
    "fake_updates": ParamSpec("int", low=1, high=MAX_FAKE_UPDATES),
    "gan_weight": ParamSpec("float", low=0.0, high=100.0),
    "regression_weight": ParamSpec("float", low=0.0, high=100.0),
    "real_guidance": ParamSpec("float", low=1.0, high=MAX_GUIDANCE),
}


def student_adapter(config: DistillationConfig, denoiser):
    """The LoRA adapter a student of ``config`` trains on ``denoiser``; None for whole weights (and for a learned
    schedule, which trains no weights)."""
    if config.method in ("none", "learned_schedule"):
        return None
    return resolved_adapter(config.adapter, config.lora_rank, config.lora_modules, denoiser)


def _train_settings(config: DistillationConfig, denoiser):

    rate = config.schedule_learning_rate if config.method == "learned_schedule" else config.learning_rate
    return TrainSettings(
        adapter=student_adapter(config, denoiser),
        iterations=config.iterations,
        learning_rate=float(rate),
        batch_size=config.batch_size,
        ema=float(config.ema),
        seed=config.seed,
        data_samples=config.data_samples,
        max_minutes=config.max_minutes,
    )


def _ddim_sampler(timesteps: list[int], prediction: str, guidance: float) -> PrescribedSampler:
    """Deterministic DDIM (DPM-Solver++ of order 1, to a zero final sigma) on exact timesteps."""
    settings = {
        **NEUTRAL_OVERRIDES,
        "algorithm_type": "dpmsolver++",
        "solver_order": 1,
        "final_sigmas_type": "zero",
        "lower_order_final": True,
        "prediction_type": prediction,
    }
    return PrescribedSampler("DPMSolverMultistepScheduler", tuple(timesteps), guidance, settings)


def distilled_model(pipeline, config: DistillationConfig, target, log=None) -> tuple[torch.nn.Module, float]:
    """The denoiser this config produces, carrying its prescribed sampler, and the training minutes it took."""
    if pipeline.denoiser is not target.denoiser:
        raise TechniqueError("distillation runs on the target's own model; it cannot follow pruning or quantization")
    alphas_cumprod(target)  # refuses a flow-matching target with the reason
    train = _train_settings(config, target.denoiser)
    prediction = SCHEDULER_PREDICTION[config.student_target]
    if config.method == "progressive":
        settings = ProgressiveSettings(config.start_steps, config.student_target, config.weighting)
        student, minutes = progressive_student(target, config.steps, settings, train, log, config.train_share)
        grid = trailing_grid(config.steps, target.num_train_timesteps)
        return prescribe(_deployed(student, train), _ddim_sampler(grid, prediction, 1.0)), minutes
    if config.method == "consistency":
        settings = ConsistencySettings(
            config.original_steps, config.loss, float(config.huber_c), float(config.target_ema), config.student_target
        )
        shared = replace(train, iterations=share_of(train.iterations, config.train_share))
        student, minutes = consistency_student(target, settings, shared, log)
        scheduler = lcm_scheduler(target, settings)
        scheduler.set_timesteps(config.steps)
        timesteps = tuple(int(step) for step in scheduler.timesteps)
        sampler = PrescribedSampler("LCMScheduler", timesteps, 1.0, lcm_settings(settings))
        return prescribe(_deployed(student, train), sampler), minutes
    if config.method == "dmd":
        settings = dmd_settings(config)
        shared = replace(train, iterations=share_of(train.iterations, config.train_share))
        student, minutes = dmd_student(target, config.steps, settings, shared, log)
        scheduler = dmd_scheduler(target, settings)
        scheduler.set_timesteps(config.steps)
        timesteps = tuple(int(step) for step in scheduler.timesteps)
        sampler = PrescribedSampler("LCMScheduler", timesteps, 1.0, lcm_settings(lcm_equivalent(settings)))
        deployed = prescribe(_deployed(student, train), sampler)
        object.__setattr__(deployed, GAN_DATA, gan_data_source(target, settings))
        return deployed, minutes

    key = ("learned_schedule", target.content_hash, config.steps, train)
    (timesteps, _), minutes = kept_student(key, lambda: learned_timesteps(target, config.steps, train, log))
    sampler = _ddim_sampler(
        timesteps, target.scheduler_config.get("prediction_type", "epsilon"), target.reference_guidance
    )
    return prescribe(target.denoiser, sampler, share=True), minutes


GAN_DATA = "dmd_gan_data"  # on a DMD student: what its GAN term trained against (None: no GAN term)


def dmd_settings(config: DistillationConfig) -> DMDSettings:
    return DMDSettings(
        fake_updates=config.fake_updates,
        gan_weight=float(config.gan_weight),
        regression_weight=float(config.regression_weight),
        real_guidance=None if config.real_guidance is None else float(config.real_guidance),
        original_steps=config.original_steps,
        student_target=config.student_target,
    )


def _deployed(student, train: TrainSettings):
    """What a trained student deploys as: a LoRA student's adapter merged into a copy of the weights (carrying the
    adapter for its artifact), a whole-weight student itself (a shallow copy: the kept student is not changed)."""
    return merged_model(student, train.adapter, "distillation") if is_adapted(student) else copy.copy(student)


def apply_distillation(pipeline, config: DistillationConfig, target) -> None:
    if not config.trains:
        return
    denoiser, minutes = distilled_model(pipeline, config, target)
    object.__setattr__(denoiser, TRAIN_MINUTES, minutes)
    pipeline.denoiser = denoiser


def distilled_weights(denoiser, config: DistillationConfig):
    """The artifact: a student's weights (none for a learned schedule) and its prescribed sampler as metadata."""
    sampler = prescription(denoiser)
    if not config.trains or sampler is None:
        return None
    metadata = {"prescribed_sampler": json.dumps(asdict(sampler))}
    if getattr(denoiser, GAN_DATA, None):
        metadata[GAN_DATA] = getattr(denoiser, GAN_DATA)
    if config.method == "learned_schedule":
        return Artifact({"timesteps": torch.tensor(sampler.timesteps)}, metadata)
    adapter = trained_adapter(denoiser, "distillation")
    if adapter is not None:  # the adapter alone, named as diffusers' load_lora_weights reads it
        tensors, described = adapter_tensors(denoiser, adapter)
        return Artifact(tensors, {**metadata, **described})
    return Artifact(dict(denoiser.state_dict()), metadata)


def distillation_from_artifact(pipeline, config: DistillationConfig, target, artifact) -> None:
    """The distilled model rebuilt from its artifact: the student's weights loaded strictly into a copy of the
    target's architecture, or the learned timesteps on the target's own model; never trained again."""
    if not config.trains:
        return
    stored = json.loads(artifact.metadata["prescribed_sampler"])
    sampler = read_prescription(stored, target.num_train_timesteps, "its prescribed_sampler")
    if config.method == "learned_schedule":
        if [int(step) for step in artifact.tensors["timesteps"]] != list(sampler.timesteps):
            raise ValueError("the artifact's timesteps disagree with its prescribed sampler")
        pipeline.denoiser = prescribe(pipeline.denoiser, sampler, share=True)
        return
    stored = stored_adapter(target.denoiser, artifact.tensors, artifact.metadata)
    check_stored_kind(config.adapter, student_adapter(config, target.denoiser), None if stored is None else stored[0])
    if stored is not None:
        student = with_adapter(copy.deepcopy(target.denoiser), *stored, "distillation")
    else:
        student = copy.deepcopy(target.denoiser).float().eval().requires_grad_(False)
        student.load_state_dict(artifact.tensors, strict=True)
    pipeline.denoiser = prescribe(student, sampler)
    if artifact.metadata.get(GAN_DATA) in (REAL_IMAGES, TEACHER_SAMPLES):
        object.__setattr__(pipeline.denoiser, GAN_DATA, artifact.metadata[GAN_DATA])


LORA_DEPLOYMENT = (
    "the artifact is a diffusers LoRA file: pipe.load_lora_weights(path to the artifact), then pipe.fuse_lora() "
    "for the base model's speed, and sample with the scheduler, timesteps and guidance under derived"
)


def distillation_record(pipeline, config: DistillationConfig) -> dict | None:
    """A LoRA student's recipe says what its adapter is and how diffusers loads it without autoaccel; a DMD
    student's with a GAN term what that term trained against (the target's real images or the teacher's samples)."""
    record = {}
    adapter = trained_adapter(pipeline.denoiser, "distillation") if config.trains else None
    if adapter is not None:
        settings = adapter.settings
        record["lora"] = {"rank": settings.rank, "modules": settings.modules, "deploy": LORA_DEPLOYMENT}
    if config.method == "dmd" and getattr(pipeline.denoiser, GAN_DATA, None):
        record["dmd"] = {"gan_data": getattr(pipeline.denoiser, GAN_DATA)}
    return record or None


def distillation_cost(config: DistillationConfig) -> dict:
    """A student runs one branch per step at its own step count: method and steps decide its cost."""
    return {"method": config.method, "steps": config.steps} if config.trains else {}


def recompute(config: DistillationConfig) -> str | None:
    return f"{config.method} distillation ({config.iterations} iterations)" if config.trains else None


def distillation_work(config: DistillationConfig, target, calls_per_image: float) -> SearchWork:
    """What training this config runs, in denoiser rows (``SearchWork``): per iteration, a batch through the
    student with a backward pass and the teacher's calls that make its targets (a progressive round: two teacher
    steps, guided in the first round; a consistency student: the guided teacher's step and the target network's
    call); a learned schedule back-propagates through a rollout of ``steps`` guided calls and checks its schedule
    on all the data every ``CHECK_EVERY`` iterations. Rounds and iterations as ``train_share`` leaves them."""
    if not config.trains:
        return SearchWork()
    rows, batch = guided_rows(target), config.batch_size
    if config.method == "learned_schedule":
        return _ode_end_points_work(config, target, rows) + SearchWork(
            trained=config.iterations * batch * config.steps * rows,
            teacher=math.ceil(config.iterations / CHECK_EVERY) * config.data_samples * config.steps * rows,
        )
    data = clean_sample_work(target, config.data_samples, DATA_SEED_OFFSET + config.seed)
    last = share_of(config.iterations, config.train_share)
    if config.method == "consistency":
        return data + SearchWork(trained=last * batch, teacher=last * batch * (rows + 1))
    if config.method == "dmd":
        return data + _dmd_work(config, target, last, rows)
    rounds = max(1, round(math.log2(config.start_steps / config.steps)))
    trained = teacher = 0.0
    for index in range(rounds):
        iterations = last if index == rounds - 1 else config.iterations
        trained += iterations * batch
        teacher += iterations * batch * 2 * (rows if index == 0 else 1)
    return data + SearchWork(trained=trained, teacher=teacher)


def _dmd_work(config: DistillationConfig, target, iterations: int, rows: int) -> SearchWork:
    """A DMD iteration: the student's step with a backward pass after (on average) half its earlier steps without
    one (backward simulation), the guided real score and the fake score at the noised sample; then each fake score
    update: a fresh student sample and the fake score's step. The GAN term adds the head's passes through the fake
    score (one with the student's step, two per fake update), the regression a second student step on the ODE
    reference's pairs (whose end points are made once)."""
    batch, simulated = config.batch_size, (config.steps - 1) / 2
    gan = 1 if config.gan_weight > 0 else 0
    regression = 1 if config.regression_weight > 0 else 0
    real_rows = 1 if config.real_guidance == 1.0 else rows  # an unguided real score runs one branch
    trained = batch * (1 + gan + regression + config.fake_updates * (1 + 2 * gan))
    teacher = batch * (simulated + real_rows + 1 + config.fake_updates * (simulated + 1))
    work = SearchWork(trained=iterations * trained, teacher=iterations * teacher)
    return work + _ode_end_points_work(config, target, rows) if regression else work


def _ode_end_points_work(config: DistillationConfig, target, rows: int) -> SearchWork:
    """The teacher's ODE end points a learned schedule is fitted to and DMD's regression trains on: made once per
    data count and seed (``autoaccel.distill.data.ode_endpoints``), so shared by every trial that uses them."""
    ode_steps = min(int(getattr(target, "ode_steps", 200)), int(target.num_train_timesteps))
    end_points = SearchWork(teacher=config.data_samples * ode_steps * rows)
    return SearchWork(shared={f"ODE end points ({config.data_samples}, seed {config.seed})": end_points})


def distillation_label(candidate: Mapping[str, Any]) -> str | None:
    """A distilled plan is named by its method and steps (its model runs its own sampler), and the teacher's
    steps where ``assignment`` hands some to the teacher; None for a plan without distillation."""
    method = candidate.get("distillation.method", "none")
    if method == "none":
        return None
    teacher = candidate.get("assignment.teacher_steps", 0)
    return f"{method}-{candidate.get('distillation.steps', '?')}" + (f"+teacher{teacher}" if teacher else "")


DISTILLATION = register(
    Technique(
        name="distillation",
        order=3,
        config_cls=DistillationConfig,
        apply=apply_distillation,
        modifies_model=True,
        unchanged_params={"method": "none"},
        params=DISTILLATION_PARAMS,
        cost_key=distillation_cost,
        artifact_state=distilled_weights,
        from_artifact=distillation_from_artifact,
        recompute=recompute,
        recipe_record=distillation_record,
        # a whole-weight student and a learned schedule train through a float32 copy; a LoRA student on the base
        float32_copy=lambda config, target: student_adapter(config, target.denoiser) is None,
        prescribes_sampler=lambda config: config.trains,
        label=distillation_label,
        max_minutes_param="max_minutes",
        train_share_param="train_share",
        search_work=distillation_work,
    )
)
