"""LoRA students and pruning recovery (``autoaccel.distill.adapters``): an adapter trains on the frozen model, its
artifact is the adapter alone (stored by hash, in diffusers' LoRA format), and its recipe re-applies bit for bit
without training; a LoRA student trains on a bfloat16 target, which a whole-weight student is refused; bad settings
are one line; and an adapter's size follows from a model's config alone (SDXL's UNet: rank 8 under 1%)."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace

import pandas as pd
import pytest
import torch

from autoaccel.config import compose_config
from autoaccel.distill import adapters
from autoaccel.errors import ConfigError, RecipeError
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.plan.apply import apply_plan, run_default_call
from autoaccel.targets import base as target_base
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.targets.precision import load_in_dtype
from autoaccel.techniques.distillation import DISTILLATION, DistillationConfig
from autoaccel.techniques.pruning import PRUNING, PruningConfig
from autoaccel.testing.pipelines import build_tiny_pipeline, plan_images, tiny_sdxl_unet
from autoaccel.util.artifacts import ArtifactStore

QUICK = dict(iterations=4, batch_size=8, data_samples=16)
LORA = dict(adapter="lora", lora_rank=2)


@pytest.fixture
def quick_recovery(monkeypatch):
    import autoaccel.distill.recovery as recovery

    monkeypatch.setattr(recovery, "TRAJECTORY_SAMPLES", 2)
    monkeypatch.setattr(recovery, "DATA_SAMPLES", 8)


def _pipeline(target):
    pipeline = sampler_pipeline(target)
    run_default_call(pipeline, target)
    return pipeline


def _float32_bytes(module) -> int:
    return sum(parameter.numel() * 4 for parameter in module.parameters())


def _stored(store: ArtifactStore, sha: str):
    """The artifact's file (checked to be named by its bytes' sha256) and its tensors and metadata."""
    from safetensors import safe_open

    path = store.path_of(sha)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    with safe_open(str(path), "pt") as file:
        return path, list(file.keys()), file.metadata()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("method", ["consistency", "progressive"])
def test_a_lora_student_is_an_adapter_sized_artifact_that_reapplies_bit_for_bit_without_training(
    tiny_target, tmp_path, forbid_training, method
):
    config = DistillationConfig(method=method, steps=2, start_steps=8, **QUICK, **LORA)
    store = ArtifactStore(tmp_path / "artifacts")
    teacher_weights = copy.deepcopy(tiny_target.denoiser.state_dict())
    trained = sampler_pipeline(tiny_target)
    stored = apply_plan(trained, [(DISTILLATION, config)], tiny_target, store=store)
    images = plan_images(trained, tiny_target)
    assert torch.isfinite(images).all() and trained.denoiser.train_minutes > 0
    assert trained.denoiser_calls == 2  # its own 2-step sampler, one branch
    # the target's own model was frozen and shared, never written
    assert all(torch.equal(value, teacher_weights[name]) for name, value in tiny_target.denoiser.state_dict().items())
    assert any(not torch.equal(value, teacher_weights[name]) for name, value in trained.denoiser.state_dict().items())

    path, names, metadata = _stored(store, stored["distillation"])
    assert names and all(name.startswith("unet.") and ".lora_" in name for name in names)
    assert path.stat().st_size < 0.15 * _float32_bytes(tiny_target.denoiser)  # a whole student: 100%
    assert "prescribed_sampler" in metadata and '"rank": 2' in metadata[adapters.ADAPTER_METADATA]

    forbid_training()
    artifact = {"distillation": (path, stored["distillation"])}
    restored = sampler_pipeline(tiny_target)
    apply_plan(restored, [(DISTILLATION, config)], tiny_target, artifact)
    assert restored.plan.timesteps == trained.plan.timesteps
    assert torch.equal(plan_images(restored, tiny_target), images)
    # a recipe edited to another rank or to whole weights does not fit the adapter it names
    for edited, trains in (
        (replace(config, lora_rank=4), "a rank-4 attention_mlp LoRA adapter"),
        (replace(config, adapter="full"), "whole weights"),
    ):
        with pytest.raises(
            RecipeError, match=f"it holds a rank-2 attention_mlp LoRA adapter, and this config trains {trains}"
        ):
            apply_plan(sampler_pipeline(tiny_target), [(DISTILLATION, edited)], tiny_target, artifact)


@pytest.mark.slow
@pytest.mark.integration
def test_lora_recovery_after_pruning_is_an_adapter_sized_artifact_that_reapplies_bit_for_bit(
    tiny_target, tmp_path, forbid_training, quick_recovery
):
    config = PruningConfig(ratio=0.25, recovery_steps=4, recovery_adapter="lora", recovery_lora_rank=2)
    store = ArtifactStore(tmp_path / "artifacts")
    trained = _pipeline(tiny_target)
    stored = apply_plan(trained, [(PRUNING, config)], tiny_target, store=store)
    untrained = _pipeline(tiny_target)
    apply_plan(untrained, [(PRUNING, PruningConfig(ratio=0.25))], tiny_target)
    assert trained.denoiser.train_minutes > 0
    assert not torch.equal(
        plan_images(trained, tiny_target), plan_images(untrained, tiny_target)
    )  # recovery changed it

    path, names, metadata = _stored(store, stored["pruning"])
    assert names and all(".lora_" in name for name in names)
    assert path.stat().st_size < 0.15 * _float32_bytes(trained.denoiser)
    whole = _pipeline(tiny_target)
    whole_stored = apply_plan(whole, [(PRUNING, PruningConfig(ratio=0.25, recovery_steps=4))], tiny_target, store=store)
    assert store.path_of(whole_stored["pruning"]).stat().st_size > 5 * path.stat().st_size

    forbid_training()
    restored = _pipeline(tiny_target)
    apply_plan(restored, [(PRUNING, config)], tiny_target, {"pruning": (path, stored["pruning"])})
    assert torch.equal(plan_images(restored, tiny_target), plan_images(trained, tiny_target))


def test_a_lora_recovery_artifact_on_another_model_is_refused_with_the_reason(tmp_path, quick_recovery):
    from autoaccel.testing.pipelines import build_tiny_pipeline_folder

    first = load_pipeline_folder(build_tiny_pipeline_folder(tmp_path / "first", seed=0))
    other = load_pipeline_folder(build_tiny_pipeline_folder(tmp_path / "other", seed=1))
    config = PruningConfig(ratio=0.25, recovery_steps=2, recovery_adapter="lora", recovery_lora_rank=2)
    store = ArtifactStore(tmp_path / "artifacts")
    stored = apply_plan(_pipeline(first), [(PRUNING, config)], first, store=store)
    artifact = {"pruning": (store.path_of(stored["pruning"]), stored["pruning"])}
    with pytest.raises(RecipeError, match="pruning this model again gave other weights"):
        apply_plan(_pipeline(other), [(PRUNING, config)], other, artifact)


@pytest.mark.integration
def test_a_lora_student_trains_on_a_bfloat16_target_where_a_whole_weight_student_is_refused(
    tiny_pipeline_dir, tmp_path
):
    from autoaccel.errors import TechniqueError

    target = load_in_dtype(load_pipeline_folder(tiny_pipeline_dir), "bfloat16")
    config = DistillationConfig(method="consistency", steps=2, **QUICK, **LORA)
    trained = sampler_pipeline(target)
    store = ArtifactStore(tmp_path / "artifacts")
    stored = apply_plan(trained, [(DISTILLATION, config)], target, store=store)
    assert trained.denoiser.dtype == torch.bfloat16 and torch.isfinite(plan_images(trained, target)).all()
    adapter = adapters.trained_adapter(trained.denoiser, "distillation")
    assert all(tensor.dtype == torch.float32 for tensor in adapter.weights.values())  # trained in float32
    restored = sampler_pipeline(target)
    path = store.path_of(stored["distillation"])
    apply_plan(restored, [(DISTILLATION, config)], target, {"distillation": (path, stored["distillation"])})
    assert torch.equal(plan_images(restored, target), plan_images(trained, target))
    with pytest.raises(TechniqueError, match="runs on a float32 copy of the model"):
        apply_plan(sampler_pipeline(target), [(DISTILLATION, DistillationConfig(method="consistency"))], target)


def test_auto_trains_an_adapter_above_the_size_threshold_and_whole_weights_below(tiny_target, monkeypatch):
    auto = DistillationConfig(method="consistency")
    assert DISTILLATION.float32_copy(auto, tiny_target)  # the tiny model: whole weights
    monkeypatch.setattr(target_base, "LORA_PARAMETERS", 1000)
    assert not DISTILLATION.float32_copy(auto, tiny_target)
    assert "lora" in tiny_target.capabilities  # the spaces' rank and layer dimensions apply to it now
    assert DISTILLATION.float32_copy(DistillationConfig(method="consistency", adapter="full"), tiny_target)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DistillationConfig(lora_rank=0), r"distillation.lora_rank=0 is not valid; it must be an int in \[1, "),
        (
            lambda: DistillationConfig(lora_modules="mlp"),
            r"distillation.lora_modules='mlp' is not valid; valid: \['attention', 'attention_mlp'\]",
        ),
        (
            lambda: DistillationConfig(adapter="qlora"),
            r"distillation.adapter='qlora' is not valid; valid: \['full', 'lora', 'auto'\]",
        ),
        (lambda: PruningConfig(recovery_lora_rank=0), r"pruning.recovery_lora_rank=0 is not valid; it must be an int"),
        (
            lambda: PruningConfig(recovery_lora_modules="all"),
            r"pruning.recovery_lora_modules='all' is not valid; valid: \['attention', 'attention_mlp'\]",
        ),
    ],
)
def test_bad_adapter_settings_are_one_line_naming_what_is_valid(make, message):
    with pytest.raises(ConfigError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


def test_a_bad_rank_in_a_search_is_refused_before_the_run_starts(fast_overrides, tmp_path, capsys):
    from autoaccel.cli.main import main

    space = tmp_path / "lora.yaml"
    space.write_text(
        "techniques: [distillation]\nfixed: {distillation.method: consistency}\n"
        "dimensions:\n  distillation.lora_rank: {type: categorical, choices: [0, 8]}\n"
    )
    assert main(["search", *fast_overrides, f"space={space}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "distillation.lora_rank" in error[0] and "[1, 1024]" in error[0]


def test_adapted_layers_come_from_the_layout_and_a_stored_adapter_merges_to_the_trained_weights():
    unet = tiny_sdxl_unet()
    attention = adapters.adapted_layers(unet, "attention")
    both = adapters.adapted_layers(unet, "attention_mlp")
    assert {name.split(".attn")[-1].split(".", 1)[1] for name in attention} == {"to_q", "to_k", "to_v", "to_out.0"}
    feed_forwards = set(both) - set(attention)
    assert {name.split(".ff.")[-1] for name in feed_forwards} == {"net.0.proj", "net.2"}
    blocks = sum(1 for module in unet.modules() if type(module).__name__ == "BasicTransformerBlock")
    assert len(attention) == blocks * 2 * 4 and len(feed_forwards) == blocks * 2  # self and cross attention

    settings = adapters.AdapterSettings(rank=4, modules="attention_mlp")
    student = adapters.adapted_copy(unet, settings)
    assert adapters.is_adapted(student) and not adapters.is_adapted(unet)
    assert {id(p) for p in unet.parameters()} <= {id(p) for p in student.parameters()}  # the base is shared
    with torch.no_grad():
        for parameter in adapters.adapter_parameters(student).values():
            parameter.add_(0.01 * torch.randn_like(parameter))
    merged = adapters.merged_model(student, settings, "distillation")
    weights = adapters.trained_adapter(merged, "distillation").weights
    reloaded = adapters.with_adapter(copy.deepcopy(unet), settings, weights, "distillation")
    assert not adapters.is_adapted(merged) and not adapters.is_adapted(reloaded)
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), reloaded.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), unet.state_dict().values()))


@pytest.mark.slow
@pytest.mark.integration
def test_diffusers_load_lora_weights_gives_the_student_autoaccel_measured(tmp_path):
    """A user's deployment: plain diffusers loads the artifact as a LoRA file and fuses it to the same weights."""
    from diffusers import StableDiffusionPipeline

    folder = build_tiny_pipeline("sd", tmp_path / "sd")
    target = load_pipeline_folder(folder)
    config = DistillationConfig(method="consistency", steps=2, iterations=3, batch_size=4, data_samples=8, **LORA)
    store = ArtifactStore(tmp_path / "artifacts")
    trained = sampler_pipeline(target)
    stored = apply_plan(trained, [(DISTILLATION, config)], target, store=store)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(store.path_of(stored["distillation"])))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    ours, theirs = trained.denoiser.state_dict(), pipe.unet.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert any(not torch.equal(ours[name], target.denoiser.state_dict()[name]) for name in ours)


SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "addition_embed_type": "text_time",
    "projection_class_embeddings_input_dim": 2816,
    "addition_time_embed_dim": 256,
    "use_linear_projection": True,
}


def test_a_rank_8_adapter_on_sdxls_unet_is_under_one_percent_of_its_bytes_counted_from_its_config():
    attention = adapters.adapter_size(SDXL_UNET, 8, "attention")
    both = adapters.adapter_size(SDXL_UNET, 8, "attention_mlp")
    assert attention.model_parameters == both.model_parameters == 2_567_463_684  # SDXL's UNet, built on meta
    assert attention.adapter_parameters == 11_612_160 and both.adapter_parameters == 20_930_560
    assert attention.share_of_model(2) < 0.01  # float32 adapter vs the UNet in float16: 46 MB of 5.1 GB
    assert both.share_of_model(4) < 0.01  # with the feed-forwards, against the float32 UNet: 84 MB of 10.3 GB
    assert adapters.adapter_size(SDXL_UNET, 16, "attention").adapter_parameters == 2 * attention.adapter_parameters


LORA_SPACE = """
name: lora
techniques: [distillation, pruning, solver, timesteps]
fixed:
  distillation.iterations: 4
  distillation.batch_size: 8
  distillation.data_samples: 16
  distillation.start_steps: 8
  distillation.adapter: lora
  pruning.recovery_adapter: lora
  pruning.recovery_steps: 4
dimensions:
  distillation.method: {type: categorical, choices: [none, progressive, consistency]}
  distillation.steps: {type: categorical, choices: [1, 2], when: {distillation.method: [progressive, consistency]}}
  distillation.lora_rank: {type: categorical, choices: [2, 4], when: {distillation.method: [progressive, consistency]}}
  distillation.lora_modules: {type: categorical, choices: [attention, attention_mlp]}
  pruning.ratio: {type: categorical, choices: [0.0, 0.25]}
  pruning.recovery_lora_rank: {type: categorical, choices: [2, 4]}
  timesteps.steps: {type: int, low: 2, high: 4, when: {distillation.method: [none]}}
  solver.name: {type: categorical, choices: [ddim, unipc], when: {distillation.method: [none]}}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_over_lora_students_and_recovery_writes_recipes_that_reapply_bit_for_bit(
    fast_overrides, tiny_pipeline_dir, tmp_path, forbid_training, quick_recovery
):
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run
    from tests.test_distillation import _candidate, _recipe_of

    space_file = tmp_path / "lora.yaml"
    space_file.write_text(LORA_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=8", "seed=11", "study_name=lora"]
    index = search(compose_config(overrides), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    trained = complete[(complete["param.distillation.method"] != "none") | (complete["param.pruning.ratio"] > 0)]
    assert len(complete) >= 6 and not trained.empty, trials[["state", "failure"]].to_string()
    context = open_run(index.parent)
    seeds = context.judge.seeds.head(8)
    recipes = {int(row["trial"]): _recipe_of(context, int(row["trial"])) for _, row in complete.iterrows()}
    scored = {
        trial: sample_in_chunks(context.evaluator.configured_pipeline(_candidate(context, trial)), seeds, 48)
        for trial in recipes
    }
    artifacts = list((context.run_dir / "artifacts").glob("*.safetensors"))
    assert artifacts and all(path.stat().st_size < 0.2 * _float32_bytes(context.target.denoiser) for path in artifacts)
    students = set(complete[complete["param.distillation.method"] != "none"]["trial"].astype(int))
    assert students and all("pipe.load_lora_weights" in recipes[trial].read_text() for trial in students)
    forbid_training()
    for trial, recipe in recipes.items():
        fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), recipe)
        assert torch.equal(sample_in_chunks(fast, seeds, 48), scored[trial])


@pytest.mark.slow
@pytest.mark.integration
def test_pruning_a_lora_student_stores_the_pruned_weights_and_reapplies_bit_for_bit(
    tiny_target, tmp_path, forbid_training
):
    """The pruned copy of a LoRA student does not pass the student's adapter off as its own artifact."""
    student = DistillationConfig(method="consistency", steps=2, **QUICK, **LORA)
    pruned = PruningConfig(ratio=0.25)
    store = ArtifactStore(tmp_path / "artifacts")
    trained = sampler_pipeline(tiny_target)
    stored = apply_plan(trained, [(DISTILLATION, student), (PRUNING, pruned)], tiny_target, store=store)
    _, names, _ = _stored(store, stored["pruning"])
    assert set(names) == set(trained.denoiser.state_dict())  # the pruned weights, not the student's adapter
    forbid_training()
    artifacts = {name: (store.path_of(sha), sha) for name, sha in stored.items()}
    restored = sampler_pipeline(tiny_target)
    apply_plan(restored, [(DISTILLATION, student), (PRUNING, pruned)], tiny_target, artifacts)
    assert torch.equal(plan_images(restored, tiny_target), plan_images(trained, tiny_target))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("method", ["consistency", "progressive"])
def test_a_lora_student_trained_in_shares_continues_from_its_checkpoint_to_the_uninterrupted_adapter(
    tiny_target, method, monkeypatch
):
    """A checkpoint keeps the adapter (not the shared base): the promoted student's adapter is a single run's."""
    import autoaccel.distill.consistency as consistency
    import autoaccel.distill.progressive as progressive
    from autoaccel.distill.students import forget_students
    from autoaccel.techniques.distillation import distilled_model

    module = consistency if method == "consistency" else progressive
    starts = []
    resume = module.resume
    monkeypatch.setattr(module, "resume", lambda *args: starts.append(resume(*args)) or starts[-1])
    config = DistillationConfig(method=method, steps=2, start_steps=8, **{**QUICK, "iterations": 8}, **LORA)
    forget_students()
    half, _ = distilled_model(sampler_pipeline(tiny_target), replace(config, train_share=0.25), tiny_target)
    continued, _ = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    assert starts[-2][0] == 0 and starts[-1][0] == 2  # the full run started where the half run stopped
    forget_students()
    direct, _ = distilled_model(sampler_pipeline(tiny_target), config, tiny_target)
    assert starts[-1][0] == 0

    def adapter(model):
        return adapters.trained_adapter(model, "distillation").weights

    assert adapter(continued).keys() == adapter(direct).keys()
    assert all(torch.equal(adapter(continued)[name], adapter(direct)[name]) for name in adapter(direct))
    assert not all(torch.equal(adapter(half)[name], adapter(direct)[name]) for name in adapter(direct))
