"""A plan: what is deployed. Technique configs in the order they apply, and which of them change the model, which
only the way it is sampled, and which produce a model that prescribes its own sampler.

The search decodes a candidate into a plan (``Candidate.plan``), a recipe is a plan written down
(``autoaccel.plan.recipe.recipe_plan`` reads it back), and ``autoaccel.plan.apply.build_pipeline`` is the one way a plan
becomes a pipeline, so what is measured is what is deployed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

from autoaccel.techniques.base import SAMPLER_PARTS, Technique


class Step(NamedTuple):
    """One technique of a plan with its config (unpacks as ``technique, config``)."""

    technique: Technique
    config: Any

    @property
    def modifies_model(self) -> bool:
        """Whether it replaces the pipeline's denoiser (pruning, quantization, a cache, a distilled student)."""
        return self.technique.modifies_model

    @property
    def prescribes(self) -> bool:
        """Whether the model it produces runs its own scheduler, timesteps and guidance
        (``autoaccel.pipeline.prescribed``)."""
        return self.technique.prescribes(self.config)


@dataclass(frozen=True)
class Plan:
    """Steps in the order their techniques apply (``Technique.order``), whatever order they were given in."""

    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        ordered = sorted((Step(*step) for step in self.steps), key=lambda step: step.technique.order)
        object.__setattr__(self, "steps", tuple(ordered))

    @classmethod
    def of(cls, steps: Iterable[tuple[Technique, Any]]) -> Plan:
        """A plan of (technique, config) pairs, in any order (a plan as it is)."""
        return steps if isinstance(steps, Plan) else cls(tuple(steps))

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    @overload
    def __getitem__(self, index: int) -> Step: ...

    @overload
    def __getitem__(self, index: slice) -> Plan: ...

    def __getitem__(self, index: int | slice) -> Step | Plan:
        return Plan(self.steps[index]) if isinstance(index, slice) else self.steps[index]

    def __add__(self, other: Iterable[tuple[Technique, Any]]) -> Plan:
        return Plan((*self.steps, *other))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(step.technique.name for step in self.steps)

    @property
    def model_steps(self) -> Plan:
        """The steps that change the model: what a model cache or an artifact stands for."""
        return Plan(tuple(step for step in self.steps if step.modifies_model))

    @property
    def sampler_steps(self) -> Plan:
        """The steps that change only how the model is sampled (solver, timesteps, ...): cheap to apply."""
        return Plan(tuple(step for step in self.steps if not step.modifies_model))

    @property
    def prescribing(self) -> Plan:
        """The model steps whose model prescribes its own sampler (a distilled student): with one, the sampler
        steps do not decide how the plan samples."""
        return Plan(tuple(step for step in self.steps if step.prescribes))

    @property
    def sampling_part(self) -> Plan:
        """What decides how the plan samples, its scheduler, schedule and guidance: the sampler steps, and the
        prescribing model steps (their model is loaded or trained to learn its prescription)."""
        return self.prescribing + self.sampler_steps

    @property
    def decides(self) -> frozenset[str]:
        """What of the sampler the plan sets (``SAMPLER_PARTS``): what its steps declare (``Technique.decides``),
        and all of it where a model prescribes its own sampler."""
        if self.prescribing:
            return frozenset(SAMPLER_PARTS)
        return frozenset(part for step in self.steps for part in step.technique.decides)
