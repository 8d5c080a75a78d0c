"""The one way a plan becomes a pipeline (``build_pipeline``): the evaluator, the report, the identity probe, the
reference call, ``apply`` and ``autoaccel.apply_recipe`` all come through here, so what is measured is what is
deployed.

Techniques apply in their declared order. A technique whose model comes with an artifact (weights it produced
once, e.g. a pruned and recovered unet) is rebuilt from it without training; one without is applied, and with a
store its weights are stored for recipes to name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from autoaccel.errors import RecipeError, TechniqueError
from autoaccel.pipeline.prescribed import apply_prescribed
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.plan.candidate import to_plain
from autoaccel.plan.steps import Plan
from autoaccel.targets.precision import target_dtype
from autoaccel.techniques.base import registered_techniques
from autoaccel.util.artifacts import ArtifactRef, ArtifactStore, read_artifact, relative_path

# (pipeline, the plan's model steps) -> technique name -> sha256 of what was stored: applies the model steps its
# own way (the evaluator's kept models and artifact index)
ModelSteps = Callable[[Any, Plan], dict[str, str]]


def build_pipeline(
    target,
    plan: Plan,
    artifacts: Mapping[str, tuple[Path, str]] | None = None,
    *,
    store: ArtifactStore | None = None,
    log: Callable[[str], None] | None = None,
    model_steps: ModelSteps | None = None,
):
    """The target's pipeline with ``plan`` applied, recorded on ``pipeline.plan`` (its techniques, and the artifacts
    stored for it): the one builder of what is measured and deployed.

    ``artifacts``, ``store`` and ``log`` as for ``apply_plan``. ``model_steps`` applies the plan's model steps in
    place of ``apply_plan`` (a model kept from an earlier trial, or loaded from the artifact index); the sampler
    steps follow as always, then any prescription of the model.
    """
    pipeline = sampler_pipeline(target)
    run_default_call(pipeline, target)  # what no technique of the plan decides stays the model's default call
    if model_steps is not None and plan.model_steps:
        stored = model_steps(pipeline, plan.model_steps)
        apply_plan(pipeline, plan.sampler_steps, target, log=log)
    else:
        stored = apply_plan(pipeline, plan, target, artifacts, store, log)
    pipeline.plan.techniques = list(plan)  # the whole plan, also where the model came from elsewhere
    pipeline.plan.artifacts = dict(stored)
    return pipeline


def run_default_call(pipeline, target) -> None:
    """Sets ``pipeline`` (the model's own scheduler) to the model's default call: its step count and guidance scale.
    A plan's techniques then set what they decide (``Plan.decides``): a plan deciding no schedule (only pruning,
    say) runs the default call's steps, one deciding no scheduler the model's own scheduler at the default guidance.
    """
    pipeline.plan.native_steps = target.reference_call.steps
    pipeline.plan.guidance_scale = target.reference_guidance


def apply_plan(
    pipeline,
    plan: Plan | Iterable[tuple[Any, Any]],
    target,
    artifacts: Mapping[str, tuple[Path, str]] | None = None,
    store: ArtifactStore | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Applies each step of ``plan`` to ``pipeline`` in declared order and records it on ``pipeline.plan``
    (``build_pipeline`` starts from the target's own pipeline; this continues one already configured).

    ``artifacts``: technique name -> (file, sha256) to rebuild that technique's model from instead of applying
    it; ``store``: where the weights of techniques applied here are kept. ``log`` hears of every technique that
    trains or calibrates again because it came without an artifact (a recipe written without an artifact store).
    Returns technique name -> sha256 of what was stored.
    """
    artifacts = artifacts or {}
    stored: dict[str, str] = {}
    for technique, config in Plan.of(plan):
        refuse_training_off_float32(technique, config, target)
        refuse_model_change_under_offload(technique, config, target)
        if technique.name in artifacts:
            restore(pipeline, technique, config, target, *artifacts[technique.name])
        else:
            if log is not None and technique.recompute is not None and technique.recompute(config):
                log(f"{technique.name}: no artifact, so applying re-runs {technique.recompute(config)}")
            technique.apply(pipeline, config, target)
            state = technique.artifact_state(pipeline.denoiser, config) if store and technique.artifact_state else None
            if state is not None:
                stored[technique.name] = store.put(state)
        pipeline.plan.techniques.append((technique, config))
    apply_prescribed(pipeline, target)  # a distilled model's own sampler wins over the sampler techniques'
    return stored


def refuse_training_off_float32(technique, config, target) -> None:
    """A technique that trains or calibrates a float32 copy of the model (``float32_copy``: a student, a recovered
    pruned model, a quantization calibration, a tiny decoder) does so on a float32 target; on a target loaded in
    another precision (``target.dtype``) it is refused with the way to get the same plan. ``float32_copy`` may
    depend on the config (a LoRA student trains an adapter on the model as loaded, a whole-weight one a copy)."""
    copies = technique.float32_copy
    copies = copies(config, target) if callable(copies) else copies
    what = technique.recompute(config) if copies and technique.recompute is not None else None
    loaded = target_dtype(target)
    if what and loaded != "float32":
        precision = next(f"{other.name}.dtype" for other in registered_techniques() if "dtype" in other.params)
        raise TechniqueError(
            f"{technique.name}: {what} runs on a float32 copy of the model, and this target was loaded in {loaded} "
            f"(target.dtype={loaded}); load it in float32 and add {precision}={loaded} to the space to deploy "
            "the plan in that precision"
        )


def refuse_model_change_under_offload(technique, config, target) -> None:
    """A technique that replaces the model (a student, a pruned or quantized copy, a cache around it) would need
    offload hooks of its own; on an offloaded target it is refused, and the sampler techniques are searched."""
    unchanged = technique.unchanged_params
    changes = not unchanged or any(getattr(config, key, value) != value for key, value in unchanged.items())
    if target.offload != "none" and technique.modifies_model and changes:
        raise TechniqueError(
            f"{technique.name}: the target is offloaded (target.offload={target.offload}) and this setting makes a "
            "new model, which offloading does not cover; search the sampler (solver, timesteps) or load the model "
            "with target.offload=none"
        )


def technique_records(pipeline) -> dict[str, dict[str, Any]]:
    """technique name -> what applying it computed from the pipeline that a recipe records (a cache's
    calibration), for the techniques of the pipeline's plan that record something."""
    records = {}
    for technique, config in pipeline.plan.techniques:
        record = technique.recipe_record(pipeline, config) if technique.recipe_record is not None else None
        if record:
            records[technique.name] = to_plain(record)
    return records


def restore(pipeline, technique, config, target, path: Path, sha: str) -> None:
    """Rebuilds ``technique``'s model from its artifact: hash checked first, weights loaded strictly."""
    if technique.from_artifact is None:
        raise RecipeError(f"recipe technique {technique.name!r} names an artifact, but {technique.name} stores none")
    artifact = read_artifact(path, sha)
    try:
        technique.from_artifact(pipeline, config, target, artifact)
    except RecipeError as error:  # what the artifact's metadata says, checked before anything is built from it
        raise RecipeError(f"artifact {path}: {error}") from None
    except (RuntimeError, KeyError, ValueError, json.JSONDecodeError) as error:
        reason = " ".join(str(error).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise RecipeError(
            f"artifact {path} does not fit {technique.name} config {config} on this model: {reason}"
        ) from None


def recipe_artifacts(techniques: Mapping[str, Any], folder: Path) -> dict[str, tuple[Path, str]]:
    """technique name -> (file, sha256) for each ``artifact`` a recipe's techniques name: the file named by its hash
    in the ``artifacts/`` folder beside ``folder`` (the recipe file's own folder), and nowhere else."""
    found = {}
    for name, entry in techniques.items():
        if isinstance(entry, dict) and "artifact" in entry:
            ref = ArtifactRef.from_dict(entry["artifact"], f"recipe techniques.{name}.artifact")
            found[str(name)] = (Path(folder) / relative_path(ref.sha256), ref.sha256)
    return found
