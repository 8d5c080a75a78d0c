"""Distillation: each method trains from the target's own teacher, prescribes its sampler, is stored as an artifact
and re-applied bit for bit without training; progressive students continue from kept rounds; a search over
``space=distilled``-style dimensions puts students and schedule-only plans on one front, and their recipes apply
to the pipeline plain diffusers loads."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from autoaccel.config import compose_config
from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.testing.pipelines import plan_images

QUICK = dict(iterations=6, batch_size=16, data_samples=32)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "scheduler", "changes_weights"),
    [
        ("progressive", "DPMSolverMultistepScheduler", True),
        ("consistency", "LCMScheduler", True),
        ("learned_schedule", "DPMSolverMultistepScheduler", False),
    ],
)
def test_each_method_trains_prescribes_its_sampler_and_reapplies_from_its_artifact_bit_exactly(
    tiny_target, tmp_path, method, scheduler, changes_weights, monkeypatch
):
    from autoaccel.plan.apply import apply_plan
    from autoaccel.techniques.distillation import DISTILLATION, DistillationConfig
    from autoaccel.techniques.solver import SOLVER, SolverConfig
    from autoaccel.util.artifacts import ArtifactStore

    config = DistillationConfig(method=method, steps=2, start_steps=8, **QUICK)
    store = ArtifactStore(tmp_path / "artifacts")
    plan = [(DISTILLATION, config), (SOLVER, SolverConfig(name="unipc"))]
    trained = sampler_pipeline(tiny_target)
    # the solver a plan names is overridden by the student's own sampler
    stored = apply_plan(
        trained, [(DISTILLATION, config), (SOLVER, SolverConfig(name="unipc"))], tiny_target, store=store
    )
    assert type(trained.scheduler).__name__ == scheduler and len(trained.plan.timesteps) == 2
    images = plan_images(trained, tiny_target)
    assert trained.denoiser_calls == 2 and torch.isfinite(images).all()
    teacher_weights = dict(tiny_target.denoiser.state_dict())
    differs = any(
        not torch.equal(value, teacher_weights[name]) for name, value in trained.denoiser.state_dict().items()
    )
    assert differs == changes_weights
    assert trained.denoiser.train_minutes > 0

    import autoaccel.distill.students as students

    monkeypatch.setattr(students, "kept_student", lambda *args: pytest.fail("applying an artifact must not train"))
    restored = sampler_pipeline(tiny_target)
    artifact = {"distillation": (store.path_of(stored["distillation"]), stored["distillation"])}
    apply_plan(restored, plan, tiny_target, artifact)
    assert restored.plan.timesteps == trained.plan.timesteps
    assert torch.equal(plan_images(restored, tiny_target), images)
    assert tiny_target.denoiser is not restored.denoiser  # the target's own model is never changed


@pytest.mark.slow
@pytest.mark.integration
def test_a_progressive_student_continues_from_the_rounds_already_trained(tiny_target, monkeypatch):
    import autoaccel.distill.progressive as progressive
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model

    forget_students()
    rounds = []
    train_round = progressive._train_round
    monkeypatch.setattr(
        progressive,
        "_train_round",
        lambda target, teacher, steps, *rest: rounds.append(steps) or train_round(target, teacher, steps, *rest),
    )
    config = DistillationConfig(method="progressive", steps=4, start_steps=16, **QUICK)
    distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    assert rounds == [8, 4]
    distilled_model(sampler_pipeline(tiny_target), DistillationConfig(**{**config.__dict__, "steps": 2}), tiny_target)
    assert rounds == [8, 4, 2]  # the 2-step student started from the kept 4-step one


@pytest.mark.slow
@pytest.mark.integration
def test_training_is_deterministic_for_its_seed(tiny_target):
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model

    config = DistillationConfig(method="consistency", steps=1, **QUICK)
    first, _ = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    forget_students()
    second, _ = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "progressive", "steps": 4, "start_steps": 12}, "start_steps=12"),
        ({"method": "distill"}, "distillation.method='distill'"),
        ({"method": "consistency", "steps": 60, "original_steps": 50}, "distillation.steps=60"),
        ({"student_target": "epsilon"}, "distillation.student_target='epsilon'"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
    ],
)
def test_bad_distillation_configs_are_named(changes, message):
    from autoaccel.techniques.distillation import DistillationConfig

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        DistillationConfig(**changes)


def test_a_flow_matching_target_is_refused_with_the_reason(tmp_path):
    from autoaccel.targets.loader import load_pipeline_folder
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model
    from autoaccel.testing.pipelines import build_tiny_pipeline

    target = load_pipeline_folder(build_tiny_pipeline("sd3", tmp_path / "sd3"))
    with pytest.raises(TechniqueError, match="flow-matching"):
        distilled_model(sampler_pipeline(target), DistillationConfig(method="consistency", **QUICK), target)


@pytest.mark.integration
def test_a_training_run_past_its_time_cap_fails_with_the_reason(tiny_target):
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model

    forget_students()
    config = DistillationConfig(method="consistency", steps=1, max_minutes=1e-9, **QUICK)
    with pytest.raises(TechniqueError, match="max_train_minutes"):
        distilled_model(sampler_pipeline(tiny_target), config, tiny_target)


SMALL_DISTILLED_SPACE = """
name: small_distilled
techniques: [distillation, solver, timesteps]
fixed:
  distillation.iterations: 6
  distillation.batch_size: 16
  distillation.data_samples: 32
  distillation.start_steps: 8
dimensions:
  distillation.method: {type: categorical, choices: [none, progressive, consistency, learned_schedule]}
  distillation.steps:
    type: categorical
    choices: [1, 2]
    when: {distillation.method: [progressive, consistency, learned_schedule]}
  timesteps.steps: {type: int, low: 2, high: 4, when: {distillation.method: [none]}}
  solver.name: {type: categorical, choices: [ddim, unipc], when: {distillation.method: [none]}}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_distillation_search_scores_students_and_schedules_on_one_front_and_its_recipes_apply(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run

    space_file = tmp_path / "distilled.yaml"
    space_file.write_text(SMALL_DISTILLED_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=10", "seed=3", "study_name=distilled"]
    index = search(compose_config(overrides), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) >= 8, trials[["state", "failure"]].to_string()
    distilled = complete[complete["param.distillation.method"] != "none"]
    assert not distilled.empty and (distilled["train_minutes"] > 0).all()
    assert (distilled["nfe"] == distilled["param.distillation.steps"]).all()  # guidance trained in: one branch
    context = open_run(index.parent)
    seeds = context.judge.seeds.head(8)
    for _, row in complete.iterrows():
        fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), _recipe_of(context, int(row["trial"])))
        scored = context.evaluator.configured_pipeline(_candidate(context, int(row["trial"])))
        assert torch.equal(sample_in_chunks(fast, seeds, 48), sample_in_chunks(scored, seeds, 48))
        if row["param.distillation.method"] == "consistency":
            assert type(fast.scheduler).__name__ == "LCMScheduler"


def _candidate(context, trial: int):
    from autoaccel.plan.candidate import Candidate

    return Candidate.from_params(context.ledger.trial(trial).user_attrs["candidate"])


def _recipe_of(context, trial: int):
    """The recipe of any complete trial, written as the report writes front recipes."""
    from autoaccel.report.build import write_front_recipe

    row = context.ledger.trials_frame().set_index("trial").loc[trial]
    return write_front_recipe(context, pd.Series({**row.to_dict(), "trial": trial}), context.run_dir / "recipes-all")


@pytest.mark.slow
@pytest.mark.integration
def test_budget_max_train_minutes_fails_long_training_trials_with_the_reason_and_the_search_goes_on(
    fast_overrides, tmp_path
):
    from autoaccel.cli.search_command import search
    from autoaccel.distill.students import forget_students

    forget_students()
    space_file = tmp_path / "distilled.yaml"
    space_file.write_text(SMALL_DISTILLED_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=8", "seed=5", "budget.max_train_minutes=1e-9"]
    index = search(compose_config([*overrides, "study_name=capped"]), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    distilled = trials[trials["param.distillation.method"] != "none"]
    assert not distilled.empty and (distilled["state"] == "FAIL").all()
    assert distilled["failure"].str.contains("budget.max_train_minutes=1e-09").all()
    assert (trials[trials["param.distillation.method"] == "none"]["state"] == "COMPLETE").any()


@pytest.mark.slow
@pytest.mark.integration
def test_assigned_teacher_steps_answer_in_the_students_parameterization_and_count_their_calls(tiny_target):
    from autoaccel.distill.data import Teacher
    from autoaccel.distill.diffusion import alpha_sigma, prediction_to_x0
    from autoaccel.plan.apply import apply_plan
    from autoaccel.techniques.assignment import ASSIGNMENT, AssignmentConfig
    from autoaccel.techniques.distillation import DISTILLATION, DistillationConfig

    student = DistillationConfig(method="progressive", steps=2, start_steps=8, **QUICK)
    alone, mixed = sampler_pipeline(tiny_target), sampler_pipeline(tiny_target)
    apply_plan(alone, [(DISTILLATION, student)], tiny_target)
    apply_plan(mixed, [(DISTILLATION, student), (ASSIGNMENT, AssignmentConfig(teacher_steps=1))], tiny_target)
    assert mixed.plan.timesteps == alone.plan.timesteps  # the student's own schedule, its first step the teacher's
    first = torch.tensor([mixed.plan.timesteps[0]] * 3)
    sample = torch.randn(3, *tiny_target.sample_shape, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2])
    output = mixed.denoiser(sample, timestep=first, class_labels=labels)[0]
    alpha, sigma = alpha_sigma(Teacher.of_target(tiny_target).abar, first)
    wanted = Teacher.of_target(tiny_target).x0(sample, first, labels)
    torch.testing.assert_close(prediction_to_x0(output, sample, alpha, sigma, "v_prediction"), wanted)
    mixed_images, alone_images = plan_images(mixed, tiny_target), plan_images(alone, tiny_target)
    assert mixed.denoiser_calls == 2 and not torch.equal(mixed_images, alone_images)


def test_assignment_without_a_student_is_refused_with_the_reason(tiny_target):
    from autoaccel.plan.apply import apply_plan
    from autoaccel.techniques.assignment import ASSIGNMENT, AssignmentConfig

    with pytest.raises(TechniqueError, match="needs a distilled student"):
        apply_plan(sampler_pipeline(tiny_target), [(ASSIGNMENT, AssignmentConfig(teacher_steps=1))], tiny_target)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("method", ["consistency", "progressive"])
def test_a_student_trained_in_shares_continues_from_its_checkpoint_to_the_uninterrupted_weights(
    tiny_target, method, monkeypatch
):
    """Iterations as a fidelity: the half-trained student of a lower level is continued, not restarted, and the
    promoted student is the one a single run gives, bit for bit (so its recipe reproduces it)."""
    import autoaccel.distill.consistency as consistency
    import autoaccel.distill.progressive as progressive
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model

    module = consistency if method == "consistency" else progressive
    starts = []
    resume = module.resume
    monkeypatch.setattr(module, "resume", lambda *args: starts.append(resume(*args)) or starts[-1])
    config = DistillationConfig(method=method, steps=2, start_steps=8, **{**QUICK, "iterations": 8})
    forget_students()
    half, half_minutes = distilled_model(sampler_pipeline(tiny_target), replace(config, train_share=0.25), tiny_target)
    continued, minutes = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    assert starts[-2][0] == 0 and starts[-1][0] == 2  # the full run started where the half run stopped
    assert minutes > half_minutes > 0  # the continued student's cost includes its checkpoint's
    forget_students()
    direct, _ = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    assert starts[-1][0] == 0
    assert all(torch.equal(a, b) for a, b in zip(continued.state_dict().values(), direct.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(half.state_dict().values(), direct.state_dict().values()))


@pytest.mark.slow
@pytest.mark.integration
def test_a_multi_fidelity_search_trains_low_levels_on_a_share_and_front_trials_in_full(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.distill.students import forget_students
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run

    forget_students()
    space_file = tmp_path / "distilled.yaml"
    space_file.write_text(SMALL_DISTILLED_SPACE.replace("distillation.iterations: 6", "distillation.iterations: 8"))
    overrides = [
        *fast_overrides,
        f"space={space_file}",
        "budget.trials=8",
        "seed=3",
        "study_name=shares",
        "fidelity.levels=[16,48]",
        "fidelity.train_shares=[0.25,1.0]",
    ]
    index = search(compose_config(overrides), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    students = complete[complete["param.distillation.method"].isin(["consistency", "progressive"])]
    promoted = students[students["quality_samples"] == 48]  # the rest stopped at 16 samples, trained a quarter
    assert not promoted.empty, trials[["state", "failure", "quality_samples"]].to_string()
    context = open_run(index.parent)
    seeds = context.judge.seeds.head(8)
    for _, row in promoted.iterrows():
        assert row["param.distillation.iterations"] == 8  # the trial is its full-training plan
        forget_students()  # the recipe must not lean on the search's kept students
        fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), _recipe_of(context, int(row["trial"])))
        scored = context.evaluator.configured_pipeline(_candidate(context, int(row["trial"])))
        assert torch.equal(sample_in_chunks(fast, seeds, 48), sample_in_chunks(scored, seeds, 48))


@pytest.mark.parametrize("shares", [[0.5], [0.5, 0.25], [0.25, 0.5], [0.0, 1.0], [True, 1.0]])
def test_bad_train_shares_are_named(fast_overrides, shares):
    from autoaccel.search.checks import validate_config

    overrides = [*fast_overrides, "fidelity.levels=[16,48]", f"fidelity.train_shares={shares}".replace(" ", "")]
    with pytest.raises(ConfigError, match="fidelity.train_shares="):
        validate_config(compose_config(overrides))


SMALL_JOINT_SPACE = """
name: small_joint
techniques: [distillation, pruning, quantization, assignment, solver, timesteps]
fixed:
  distillation.iterations: 6
  distillation.batch_size: 16
  distillation.data_samples: 32
  distillation.start_steps: 8
  pruning.recovery_steps: 3
dimensions:
  distillation.method: {type: categorical, choices: [none, consistency, progressive], requires: distillation}
  distillation.steps: {type: categorical, choices: [2], when: {distillation.method: [consistency, progressive]}}
  assignment.teacher_steps:
    type: categorical
    choices: [0, 1]
    when: {distillation.method: [consistency, progressive]}
  pruning.ratio: {type: categorical, choices: [0.0, 0.3]}
  quantization.enabled: {type: categorical, choices: [true, false]}
  quantization.weight_bits: {type: categorical, choices: [6], when: {quantization.enabled: [true]}}
  timesteps.steps: {type: int, low: 2, high: 4}
  solver.name: {type: categorical, choices: [ddim, unipc]}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_joint_search_prunes_and_quantizes_students_and_every_recipe_reapplies_bit_exactly(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    """Distillation, then pruning with recovery towards the student, quantization of the result and the teacher's
    first step, on one front; each recipe rebuilds its student, pruned and quantized, without training."""
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.distill.students import forget_students
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run

    space_file = tmp_path / "joint.yaml"
    space_file.write_text(SMALL_JOINT_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=10", "seed=7", "study_name=joint"]
    index = search(compose_config(overrides), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == len(trials), trials[["state", "failure"]].to_string()
    students = complete[complete["param.distillation.method"] != "none"]
    compressed = students[(students["param.pruning.ratio"] > 0) | (students["param.quantization.enabled"])]
    assert not compressed.empty
    pruned = students[students["param.pruning.ratio"] > 0]
    assert (pruned["params"] < complete["params"].max()).all() and (pruned["nfe"] >= 2).all()
    context = open_run(index.parent)
    seeds = context.judge.seeds.head(8)
    for _, row in complete.iterrows():
        forget_students()
        fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), _recipe_of(context, int(row["trial"])))
        scored = context.evaluator.configured_pipeline(_candidate(context, int(row["trial"])))
        assert torch.equal(sample_in_chunks(fast, seeds, 48), sample_in_chunks(scored, seeds, 48))


def test_the_joint_space_drops_distillation_on_a_flow_matching_target_and_keeps_the_rest():
    from autoaccel.space.spaces import load_space

    space = load_space("joint")
    flow = space.for_target({"guidance"})
    assert not any(name.startswith(("distillation.", "assignment.")) for name in flow.names)
    assert "pruning.ratio" in flow.names and "solver.name" in flow.names
    assert "distillation.method" in space.for_target({"guidance", "distillation"}).names


@pytest.mark.slow
@pytest.mark.integration
def test_taylor_pruning_of_a_student_is_refused_with_the_reason(tiny_target):
    from autoaccel.techniques.distillation import DistillationConfig, apply_distillation
    from autoaccel.techniques.pruning import PruningConfig, prune_unet

    pipeline = sampler_pipeline(tiny_target)
    apply_distillation(pipeline, DistillationConfig(method="consistency", **QUICK), tiny_target)
    student = pipeline.denoiser
    with pytest.raises(TechniqueError, match="importance='taylor'"):
        prune_unet(student, PruningConfig(ratio=0.3, importance="taylor"), tiny_target)
    pruned = prune_unet(student, PruningConfig(ratio=0.3, recovery_steps=2), tiny_target)
    assert pruned.prescribed_sampler == student.prescribed_sampler  # it still runs the student's own sampler
    assert pruned.train_minutes > student.train_minutes  # recovery's minutes are added to the student's


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sd", "dit"])
def test_students_of_prompt_and_class_conditioned_latent_models_run_one_branch_and_reapply_bit_exactly(tmp_path, kind):
    """Guidance trained into the student: a guided text-to-image or class-conditioned latent model distils to a
    student that runs one denoiser call per step, through its VAE, rebuilt from its artifact."""
    from autoaccel.pipeline.seeds import make_seed_batch, sample_in_chunks
    from autoaccel.plan.apply import apply_plan
    from autoaccel.targets.loader import load_pipeline_folder
    from autoaccel.techniques.distillation import DISTILLATION, DistillationConfig
    from autoaccel.testing.pipelines import build_tiny_pipeline
    from autoaccel.util.artifacts import ArtifactStore

    target = load_pipeline_folder(build_tiny_pipeline(kind, tmp_path / kind))
    assert target.conditions.guidable and target.vae is not None
    store = ArtifactStore(tmp_path / "artifacts")
    plan = [(DISTILLATION, DistillationConfig(method="consistency", steps=2, **{**QUICK, "data_samples": 8}))]
    trained = sampler_pipeline(target)
    stored = apply_plan(trained, plan, target, store=store)
    seeds = make_seed_batch(target.sample_shape, 4, 5, target.condition_count)
    images = sample_in_chunks(trained, seeds, 4)
    assert trained.denoiser_calls == 2 and torch.isfinite(images).all()
    restored = sampler_pipeline(target)
    artifact = {"distillation": (store.path_of(stored["distillation"]), stored["distillation"])}
    apply_plan(restored, plan, target, artifact)
    assert torch.equal(sample_in_chunks(restored, seeds, 4), images)


def _interrupted_at(monkeypatch, stop_before: int):
    """A stop event that is set when a training run reaches ``stop_before`` iterations, as the search sets it when
    Ctrl-C lands; returns it and the list of iterations each run started from."""
    import threading

    import autoaccel.distill.training as training

    stop, calls = threading.Event(), {"count": 0}
    real = training.pause_point

    def counting():
        calls["count"] += 1
        if calls["count"] == stop_before + 1:
            stop.set()
        real()

    monkeypatch.setattr(training, "pause_point", counting)
    return stop, calls


def _train_in_a_fresh_process(method: str, config, tiny_target):
    """The trained model as a new process makes it: nothing kept in memory, only what is on disk."""
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import distilled_model
    from autoaccel.techniques.pruning import prune_unet

    forget_students()
    if method == "recovery":
        return prune_unet(tiny_target.denoiser, config, tiny_target)
    return distilled_model(sampler_pipeline(tiny_target), config, tiny_target)[0]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("method", ["consistency", "progressive", "learned_schedule", "recovery"])
def test_an_interrupted_training_run_keeps_a_checkpoint_and_the_next_process_continues_to_the_same_weights(
    tiny_target, method, monkeypatch, tmp_path
):
    """Ctrl-C stops training at the top of its next iteration with a checkpoint on disk; the next process (the
    resumed search) continues from it, and the weights are the uninterrupted run's, bit for bit."""
    from autoaccel.distill.training import persisted_checkpoints
    from autoaccel.techniques.distillation import DistillationConfig
    from autoaccel.techniques.pruning import PruningConfig
    from autoaccel.util.interrupts import Cancelled, cancellable

    if method == "recovery":
        config = PruningConfig(ratio=0.5, recovery_steps=8)
    else:
        config = DistillationConfig(method=method, steps=2, start_steps=4, **{**QUICK, "iterations": 8})
    folder = tmp_path / "checkpoints"
    stop, calls = _interrupted_at(monkeypatch, stop_before=3)
    with persisted_checkpoints(folder), pytest.raises(Cancelled):
        cancellable(stop, _train_in_a_fresh_process, method, config, tiny_target)
    assert calls["count"] == 4  # it stopped at the first pause after the interrupt: no further iteration ran
    assert [path.name.rsplit("-", 1)[1] for path in folder.glob("*.pt")] == ["3.pt"]

    calls["count"] = -(10**9)  # no more interrupts
    with persisted_checkpoints(folder):
        continued = _train_in_a_fresh_process(method, config, tiny_target)
    assert calls["count"] == -(10**9) + 8 - 3  # only the iterations it lacked
    assert not list(folder.glob("*.pt"))  # the finished run's checkpoint is gone (its weights are an artifact)
    uninterrupted = _train_in_a_fresh_process(method, config, tiny_target)
    assert all(torch.equal(a, b) for a, b in zip(_trained(continued), _trained(uninterrupted), strict=True))


def _trained(model) -> list:
    """What training made: the weights, and the timesteps of the sampler it prescribes (a learned schedule's)."""
    from autoaccel.pipeline.prescribed import PRESCRIBED

    sampler = getattr(model, PRESCRIBED, None)
    return [*model.state_dict().values(), *([] if sampler is None else [torch.tensor(sampler.timesteps)])]


CONSISTENCY_SPACE = """
name: consistency_only
techniques: [distillation, solver, timesteps]
fixed:
  distillation.method: consistency
  distillation.iterations: 6
  distillation.batch_size: 16
  distillation.data_samples: 32
dimensions:
  distillation.steps: {type: categorical, choices: [1, 2]}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_model_already_stored_is_loaded_from_its_artifact_not_trained_again(fast_overrides, tmp_path, monkeypatch):
    """A resumed search (or a trial whose model an earlier one trained and memory no longer holds) finds the
    stored artifact by its plan and loads it: the same images, the same training cost, no training."""
    import autoaccel.distill.consistency as consistency
    from autoaccel.cli.search_command import search
    from autoaccel.distill.students import forget_students
    from autoaccel.search.run import open_run

    space_file = tmp_path / "distilled.yaml"
    space_file.write_text(CONSISTENCY_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=2", "study_name=stored"]
    forget_students()
    index = search(compose_config(overrides), log=lambda message: None)
    context = open_run(index.parent)
    trials = context.ledger.trials_frame()
    first = trials[trials["state"] == "COMPLETE"].iloc[0]
    forget_students()  # a new process: nothing in memory
    monkeypatch.setattr(consistency, "_train", lambda *args: pytest.fail("a stored student must not be trained again"))
    again = context.evaluator.evaluate(_candidate(context, int(first["trial"])))
    assert again.ok and again.metrics["fid"] == first["fid"]
    assert again.details["train_minutes"] == first["train_minutes"]
    assert again.details["artifacts"] == json.loads(first["artifacts"])


def test_a_longer_learned_schedule_continues_the_shorter_one_to_the_uninterrupted_runs_state(tiny_target):
    """Iterations are a fidelity for a learned schedule too: 12 iterations continued from a 7-iteration run (whose
    own last check is off the every-5 grid) keep the state a single 12-iteration run keeps, bit for bit."""
    import autoaccel.distill.training as training
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model

    def final_state(*iterations: int) -> dict:
        forget_students()
        for count in iterations:
            config = DistillationConfig(method="learned_schedule", steps=3, **{**QUICK, "iterations": count})
            distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
        (run,) = [run for run in training._CHECKPOINTS if run[0] == "learned_schedule"]
        return training._CHECKPOINTS[run][iterations[-1]].states["schedule"]

    continued, uninterrupted = final_state(7, 12), final_state(12)
    assert not torch.equal(continued["logits"], torch.zeros_like(continued["logits"]))  # it trained
    assert all(torch.equal(continued[name], uninterrupted[name]) for name in ("logits", "best", "best_loss"))
