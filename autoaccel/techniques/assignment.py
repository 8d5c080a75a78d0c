"""Technique ``assignment``: which model runs each step of a distilled plan. The teacher runs the first
``teacher_steps`` steps of the student's own schedule (or the last ones, ``where: last``) and the student the
rest: a distilled model's diversity comes back when the teacher sets the composition at the first step
("Distilling Diversity and Control in Diffusion Models"), at the price of the teacher's calls.

The teacher's output is converted to the student's parameterization at that timestep (its clean estimate and
noise through ``alphas_cumprod``), so the student's scheduler (DDIM or LCM) steps on it unchanged; the teacher
runs at its default guidance, so its steps cost two denoiser evaluations where it guides, and the plan's NFE
counts them. Only plans with a distilled model can take it (the space's validation says so otherwise).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from autoaccel.distill.diffusion import alpha_sigma, alphas_cumprod, prediction_to_x0
from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.prescribed import PRESCRIBED, prescription
from autoaccel.targets.conditions import concat_keywords
from autoaccel.targets.denoisers import predict
from autoaccel.targets.layouts import layout_of
from autoaccel.techniques.base import TRAIN_MINUTES, ParamSpec, Technique, register, require_types
from autoaccel.util.precision import cast_module, module_dtype

PLACES = ("first", "last")
MAX_TEACHER_STEPS = 8


@dataclass(frozen=True)
class AssignmentConfig:
    """``teacher_steps`` of the distilled plan's steps run by the teacher (0: the student runs them all),
    at the ``first`` or ``last`` end of its schedule."""

    teacher_steps: int = 0
    where: str = "first"

    def __post_init__(self) -> None:
        require_types(self, "assignment", {"teacher_steps": int, "where": str})
        if not 0 <= self.teacher_steps <= MAX_TEACHER_STEPS:
            raise ConfigError(
                f"assignment.teacher_steps={self.teacher_steps} is not valid; it must be in [0, {MAX_TEACHER_STEPS}]"
            )
        if self.where not in PLACES:
            raise ConfigError(f"assignment.where={self.where!r} is not valid; valid: {list(PLACES)}")


class StepAssigned(torch.nn.Module):
    """The student, except at ``teacher_timesteps``, where the (guided) teacher answers in the student's
    parameterization."""

    def __init__(self, student, teacher, target, teacher_timesteps: set[int], guidance: float) -> None:
        super().__init__()

        self.student = student
        self.teacher = teacher
        self.teacher_timesteps = frozenset(teacher_timesteps)
        self.guidance = guidance
        self.conditions = target.conditions
        self.teacher_prediction = target.scheduler_config.get("prediction_type", "epsilon")
        self.student_prediction = prescription(student).settings.get("prediction_type", "epsilon")
        self.register_buffer("abar", alphas_cumprod(target).float(), persistent=False)
        object.__setattr__(self, PRESCRIBED, prescription(student))
        if hasattr(student, TRAIN_MINUTES):  # the student's training stays the plan's search cost
            object.__setattr__(self, TRAIN_MINUTES, getattr(student, TRAIN_MINUTES))

    @property
    def config(self):
        return self.student.config

    @property
    def device(self) -> torch.device:
        return self.student.device

    @property
    def dtype(self) -> torch.dtype:
        return self.student.dtype

    def runs_teacher(self, timestep) -> bool:
        return int(torch.as_tensor(timestep).reshape(-1)[0]) in self.teacher_timesteps

    def evaluations(self, timestep) -> int:
        """Denoiser evaluations one call at ``timestep`` makes: two on a guided teacher step."""
        guided = self.guidance != 1.0 and self.conditions.paired_guidance
        return 2 if self.runs_teacher(timestep) and guided else 1

    def forward(self, sample, timestep, **keywords):

        if not self.runs_teacher(timestep):
            return self.student(sample, timestep=timestep, **layout_of(self.student).fixed, **keywords)

        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(len(sample))
        if self.evaluations(timestep) == 2:
            null = _null_keywords(self.conditions, keywords, len(sample))
            doubled = torch.cat([timesteps, timesteps])
            both = predict(self.teacher, torch.cat([sample, sample]), doubled, concat_keywords(keywords, null))
            conditional, unconditional = both.chunk(2)
            output = unconditional + self.guidance * (conditional - unconditional)
        else:
            output = predict(self.teacher, sample, timesteps, keywords)
        alpha, sigma = alpha_sigma(self.abar, timesteps)
        x0 = prediction_to_x0(output.float(), sample.float(), alpha, sigma, self.teacher_prediction)
        if self.student_prediction == "sample":
            converted = x0
        else:
            noise = (sample.float() - alpha * x0) / sigma
            converted = noise if self.student_prediction == "epsilon" else alpha * noise - sigma * x0
        return (converted.to(sample.dtype),)


def _null_keywords(conditions, keywords: dict, rows: int) -> dict:
    """The keyword arguments of the unconditional branch for a batch conditioned by ``keywords`` (in their dtype:
    the model's precision)."""
    if conditions.kind == "class":
        return {**keywords, conditions.keyword: torch.full_like(keywords[conditions.keyword], conditions.null_class)}
    index = torch.zeros(rows, dtype=torch.long)
    null = {key: value[index.to(value.device)] for key, value in conditions.null.items()}
    return {
        **keywords,
        **{key: value.to(keywords[key].dtype) if key in keywords else value for key, value in null.items()},
    }


def apply_assignment(pipeline, config: AssignmentConfig, target) -> None:
    if config.teacher_steps == 0:
        return

    sampler = prescription(pipeline.denoiser)
    if sampler is None or pipeline.denoiser is target.denoiser:
        raise TechniqueError(
            "assignment.teacher_steps > 0 needs a distilled student to hand steps to (distillation.method "
            "progressive, consistency or dmd); this plan has none"
        )
    if getattr(pipeline.denoiser, "student", None) is not None:
        raise TechniqueError("assignment applies once per plan")
    if config.teacher_steps >= len(sampler.timesteps):
        raise TechniqueError(
            f"assignment.teacher_steps={config.teacher_steps} leaves the {len(sampler.timesteps)}-step student "
            "nothing to run; use fewer teacher steps"
        )
    steps = list(sampler.timesteps)
    chosen = steps[: config.teacher_steps] if config.where == "first" else steps[-config.teacher_steps :]
    teacher = target.denoiser
    if module_dtype(teacher) != module_dtype(pipeline.denoiser):  # the student runs in a plan's runtime precision
        teacher = cast_module(copy.deepcopy(teacher), module_dtype(pipeline.denoiser))
    pipeline.denoiser = StepAssigned(pipeline.denoiser, teacher, target, set(chosen), target.reference_guidance)


def assignment_cost(config: AssignmentConfig) -> dict:
    """How many steps the teacher takes: first or last, the same calls are made (the NFE counts guided ones)."""
    return {"teacher_steps": config.teacher_steps} if config.teacher_steps else {}


ASSIGNMENT = register(
    Technique(
        name="assignment",
        order=8,  # after pruning and quantization: the cheaper model it hands steps to is the compressed student
        config_cls=AssignmentConfig,
        apply=apply_assignment,
        unchanged_params={"teacher_steps": 0},
        params={
            "teacher_steps": ParamSpec("int", low=0, high=MAX_TEACHER_STEPS),
            "where": ParamSpec("choice", choices=PLACES),
        },
        cost_key=assignment_cost,
    )
)
