"""Distribution matching distillation: a DMD student trains from the teacher (with its GAN term against real images
where the target has them, the teacher's samples where it has none, and the recipe saying which), samples with
plain diffusers' LCMScheduler, re-applies from its artifact bit for bit without training, and is found by a second
worker instead of trained again; its cost is estimated; a collapsed plan is marked and can be kept off the front."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid

import pandas as pd
import pytest
import torch

from autoaccel.errors import ConfigError
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.testing.pipelines import plan_images

QUICK = dict(iterations=3, batch_size=8, data_samples=16, fake_updates=1)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("real_data", [False, True])
def test_a_dmd_student_trains_records_its_gan_data_and_reapplies_bit_for_bit_without_training(
    tiny_target, tmp_path, monkeypatch, real_data
):
    import autoaccel.distill.dmd as dmd
    import autoaccel.distill.students as students
    from autoaccel.plan.apply import apply_plan, technique_records
    from autoaccel.techniques.distillation import DISTILLATION, DistillationConfig
    from autoaccel.util.artifacts import ArtifactStore

    target = tiny_target
    if real_data:  # a user's target.data: the GAN term trains against these
        images = torch.randint(0, 256, (12, *target.sample_shape), generator=torch.Generator().manual_seed(0))
        target = dataclasses.replace(tiny_target, real_images=images.to(torch.uint8))
    config = DistillationConfig(method="dmd", steps=2, gan_weight=0.01, regression_weight=0.5, **QUICK)
    store = ArtifactStore(tmp_path / "artifacts")
    trained = sampler_pipeline(target)
    stored = apply_plan(trained, [(DISTILLATION, config)], target, store=store)
    assert type(trained.scheduler).__name__ == "LCMScheduler" and len(trained.plan.timesteps) == 2
    images = plan_images(trained, target, 4)
    assert trained.denoiser_calls == 2 and torch.isfinite(images).all()
    teacher = dict(target.denoiser.state_dict())
    assert any(not torch.equal(value, teacher[name]) for name, value in trained.denoiser.state_dict().items())
    assert trained.denoiser.train_minutes > 0
    wanted = dmd.REAL_IMAGES if real_data else dmd.TEACHER_SAMPLES
    assert technique_records(trained)["distillation"] == {"dmd": {"gan_data": wanted}}

    monkeypatch.setattr(students, "kept_student", lambda *args: pytest.fail("applying an artifact must not train"))
    monkeypatch.setattr(dmd, "_train", lambda *args: pytest.fail("applying an artifact must not train"))
    restored = sampler_pipeline(target)
    apply_plan(
        restored,
        [(DISTILLATION, config)],
        target,
        {"distillation": (store.path_of(stored["distillation"]), stored["distillation"])},
    )
    assert restored.plan.timesteps == trained.plan.timesteps
    assert torch.equal(plan_images(restored, target, 4), images)
    assert technique_records(restored)["distillation"] == {"dmd": {"gan_data": wanted}}


@pytest.mark.slow
@pytest.mark.integration
def test_a_dmd_student_continues_from_its_checkpoint_to_the_weights_of_an_uninterrupted_run(tiny_target):
    """Iterations are a fidelity: a promoted student trains only the iterations it lacks."""
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model

    forget_students()
    config = DistillationConfig(method="dmd", steps=1, gan_weight=0.01, **{**QUICK, "iterations": 4})
    distilled_model(sampler_pipeline(tiny_target), dataclasses.replace(config, train_share=0.5), tiny_target)
    continued, _ = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    forget_students()
    uninterrupted, _ = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    pairs = zip(continued.state_dict().values(), uninterrupted.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "dmd", "fake_updates": 0}, "distillation.fake_updates=0"),
        ({"method": "dmd", "gan_weight": -1.0}, "distillation.gan_weight=-1.0"),
        ({"method": "dmd", "regression_weight": "a lot"}, "regression_weight"),
        ({"method": "dmd", "steps": 80}, "distillation.steps=80"),
        (
            {"method": "dmd", "real_guidance": 0.5},
            r"distillation.real_guidance=0.5 is not valid; it must be .* or null",
        ),
        ({"method": "dmd", "real_guidance": "high"}, "distillation.real_guidance='high'"),
    ],
)
def test_bad_dmd_settings_are_named(changes, message):
    from autoaccel.techniques.distillation import DistillationConfig

    with pytest.raises(ConfigError, match=message):
        DistillationConfig(**changes)


@pytest.mark.slow
@pytest.mark.integration
def test_the_real_score_runs_at_real_guidance_on_a_guided_model_and_a_model_without_guidance_ignores_it(tmp_path):
    """A guided teacher's sharp score makes a collapsed student; real_guidance lowers the real score's guidance
    (the student still learns the default call's through the regression), and it reaches the student's weights."""
    from autoaccel.distill.data import Teacher
    from autoaccel.distill.students import forget_students
    from autoaccel.targets.loader import load_pipeline_folder
    from autoaccel.techniques.distillation import DistillationConfig, distilled_model
    from autoaccel.testing.pipelines import build_tiny_pipeline

    guided = load_pipeline_folder(build_tiny_pipeline("sd", tmp_path / "sd"))
    assert guided.reference_guidance > 1.0
    assert Teacher.of_target(guided).guidance == guided.reference_guidance
    assert Teacher.of_target(guided, 1.0).guidance == 1.0
    unconditional = load_pipeline_folder(build_tiny_pipeline("ddpm", tmp_path / "ddpm"))
    assert not unconditional.conditions.guidable and Teacher.of_target(unconditional, 3.0).guidance == 1.0

    forget_students()
    quick = {**QUICK, "data_samples": 8, "iterations": 2}
    weights = {}
    for real_guidance in (None, 1.0):
        config = DistillationConfig(method="dmd", steps=1, real_guidance=real_guidance, **quick)
        student, _ = distilled_model(sampler_pipeline(guided), config, guided)
        weights[real_guidance] = list(student.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in zip(weights[None], weights[1.0]))


def test_the_search_estimate_counts_the_fake_score_updates_and_the_gan_term(tiny_target):
    from autoaccel.techniques.distillation import DistillationConfig, distillation_work

    def trained(**changes) -> float:
        return distillation_work(DistillationConfig(method="dmd", iterations=100, **changes), tiny_target, 2).trained

    assert trained(fake_updates=5) > trained(fake_updates=2) > 0
    assert trained(fake_updates=2, gan_weight=0.01) > trained(fake_updates=2)


def test_a_plan_that_lost_diversity_is_marked_and_min_recall_keeps_it_off():
    from autoaccel.front.limits import LIMIT_OPTIONS
    from autoaccel.report.diversity import diversity_sentence, lost_diversity

    front = pd.DataFrame({"trial": [1, 2, 3], "recall": [0.86, 0.80, float("nan")]})
    reference = {"recall": 0.87}
    assert lost_diversity(front, reference) == [2]
    assert "trial 2 (recall 0.800)" in diversity_sentence(front, reference)
    assert diversity_sentence(front.iloc[:1], reference) == ""
    option = LIMIT_OPTIONS["min_recall"]
    assert option.metric == "recall" and not option.upper and option.quality


def test_a_claimed_model_makes_a_second_claimant_wait(tmp_path):
    """Two workers wanting the same student: the second waits for the first's claim, then finds it stored."""
    from autoaccel.plan.artifact_index import claimed
    from autoaccel.util.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts")
    events = []
    first_holds = threading.Event()

    def first() -> None:
        with claimed(store, "k"):
            first_holds.set()
            time.sleep(0.5)
            events.append("first done")

    def second() -> None:
        first_holds.wait()
        with claimed(store, "k"):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert events == ["first done", "second in"]


DMD_SPACE = """
name: dmd_only
techniques: [distillation, assignment, solver, timesteps]
fixed:
  distillation.method: dmd
  distillation.steps: 2
  distillation.iterations: 3
  distillation.batch_size: 8
  distillation.data_samples: 16
  distillation.fake_updates: 1
dimensions:
  assignment.teacher_steps: {type: categorical, choices: [0, 1]}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_worker_loads_the_dmd_student_another_trained_on_the_shared_study(
    postgres_url, fast_overrides, tiny_pipeline_dir, tmp_path, monkeypatch
):
    """Worker one (its own process) trains the student in a PostgreSQL study; a second process evaluating a plan
    that only changes the sampler part finds the student by the hash of its training settings and the base
    weights, with training patched to fail; the first worker's recipe applies to a fresh load without training."""
    from diffusers import DDPMPipeline

    import autoaccel.distill.dmd as dmd
    from autoaccel import apply_recipe
    from autoaccel.distill.students import forget_students
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.plan.candidate import Candidate
    from autoaccel.report.build import write_front_recipe
    from autoaccel.search.run import open_run

    space = tmp_path / "dmd.yaml"
    space.write_text(DMD_SPACE)
    study = f"dmd-{uuid.uuid4().hex[:8]}"
    overrides = [*fast_overrides, f"space={space}", f"storage={postgres_url}", f"study_name={study}"]
    overrides += ["budget.trials=1", "budget.warm_start_steps=[]", "cost.confirm=false"]
    worker = subprocess.run(
        [sys.executable, "-m", "autoaccel", "search", *overrides], capture_output=True, text=True, timeout=600
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    run_dir = tmp_path / "reports" / study
    context = open_run(run_dir)
    trials = context.ledger.trials_frame()
    first = trials[trials["state"] == "COMPLETE"].iloc[0]
    candidate = dict(context.ledger.trial(int(first["trial"])).user_attrs["candidate"])
    candidate["assignment.teacher_steps"] = 1 - int(candidate["assignment.teacher_steps"])  # the sampler part only
    forget_students()  # this process has trained nothing
    monkeypatch.setattr(dmd, "_train", lambda *args: pytest.fail("the second worker must not train again"))
    measured = context.evaluator.evaluate(Candidate.from_params(candidate))
    assert measured.ok, measured.failure
    assert measured.details["artifacts"]["distillation"] == json.loads(first["artifacts"])["distillation"]
    assert measured.details["train_minutes"] == first["train_minutes"]

    # the first worker's recipe applies to a fresh diffusers load, bit for bit, with training still patched to fail
    row = trials.set_index("trial").loc[int(first["trial"])]
    recipe = write_front_recipe(
        context, pd.Series({**row.to_dict(), "trial": int(first["trial"])}), run_dir / "recipes-all"
    )
    fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), recipe)
    assert type(fast.scheduler).__name__ == "LCMScheduler" and len(fast.plan.timesteps) == 2
    seeds = context.judge.seeds.head(4)
    scored = context.evaluator.configured_pipeline(
        Candidate.from_params(context.ledger.trial(int(first["trial"])).user_attrs["candidate"])
    )
    assert torch.equal(sample_in_chunks(fast, seeds, 4), sample_in_chunks(scored, seeds, 4))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(("kind", "real_data"), [("dit", False), ("sd", True)])
def test_the_gan_term_reads_a_transformers_tokens_and_a_latent_models_encoded_real_images(kind, real_data, tmp_path):
    """The discriminator sits on a DiT's middle transformer block (tokens) as on a UNet's middle block; a latent
    model's real images reach it as VAE latents."""
    from autoaccel.distill.dmd import REAL_IMAGES, TEACHER_SAMPLES
    from autoaccel.plan.apply import apply_plan, technique_records
    from autoaccel.targets.loader import load_pipeline_folder
    from autoaccel.techniques.distillation import DISTILLATION, DistillationConfig
    from autoaccel.testing.pipelines import build_tiny_pipeline

    target = load_pipeline_folder(build_tiny_pipeline(kind, tmp_path / kind))
    if real_data:
        size = target.sample_shape[-1] * 2 ** (len(target.vae.config.block_out_channels) - 1)
        images = torch.randint(0, 256, (6, 3, size, size), generator=torch.Generator().manual_seed(1))
        target = dataclasses.replace(target, real_images=images.to(torch.uint8))
    config = DistillationConfig(method="dmd", steps=1, gan_weight=0.05, **{**QUICK, "iterations": 2})
    pipeline = sampler_pipeline(target)
    apply_plan(pipeline, [(DISTILLATION, config)], target)
    assert torch.isfinite(plan_images(pipeline, target, 2)).all()
    wanted = REAL_IMAGES if real_data else TEACHER_SAMPLES
    assert technique_records(pipeline)["distillation"] == {"dmd": {"gan_data": wanted}}
