"""SDXL and Flux, the models people deploy, through every technique family: each runs on the tiny SDXL- and
Flux-shaped folders (random weights: this proves the plumbing, not quality) or is refused in one line with its
reason, and a search over all of them writes recipes that re-apply to a fresh ``from_pretrained`` load bit for
bit."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from autoaccel.config import compose_config
from autoaccel.errors import AutoaccelError
from autoaccel.testing.pipelines import build_tiny_pipeline

QUICK_DECODER = {"decoder.iterations": 20, "decoder.batch_size": 8, "decoder.data_samples": 16}
# (kind, family, settings, None where it runs, else what its one-line refusal says)
FAMILIES = [
    ("sdxl", "solver", {"solver.name": "dpmsolver++"}, None),
    (
        "sdxl",
        "distillation",
        {"distillation.method": "consistency", "distillation.iterations": 2, "distillation.data_samples": 8},
        None,
    ),
    ("sdxl", "pruning heads", {"pruning.ratio": 0.5}, None),
    ("sdxl", "pruning widths", {"pruning.ratio": 0.5, "pruning.prune_heads": False}, None),
    ("sdxl", "pruning recovery", {"pruning.ratio": 0.5, "pruning.recovery_steps": 2}, None),
    ("sdxl", "pruning blocks", {"pruning.blocks": 0.5}, "applies to transformer denoisers"),
    ("sdxl", "quantization", {"quantization.enabled": True, "quantization.weight_bits": 8}, None),
    ("sdxl", "deep cache", {"caching.method": "deep"}, None),
    ("sdxl", "first-block cache", {"caching.method": "first_block"}, "UNet2DConditionModel is not a transformer"),
    ("sdxl", "tiny decoder", {"decoder.kind": "tiny", **QUICK_DECODER}, None),
    ("sdxl", "bfloat16", {"runtime.dtype": "bfloat16"}, None),
    ("sdxl", "fused QKV", {"runtime.fuse_qkv": True}, None),
    ("sdxl", "channels-last", {"runtime.channels_last": True}, None),
    ("flux", "solver", {"solver.name": "flow_heun"}, None),
    ("flux", "distillation", {"distillation.method": "consistency"}, "flux is a flow-matching model"),
    ("flux", "pruning heads", {"pruning.ratio": 0.5}, None),
    ("flux", "pruning widths", {"pruning.ratio": 0.5, "pruning.prune_heads": False}, "rotary position embedding"),
    ("flux", "pruning recovery", {"pruning.ratio": 0.5, "pruning.recovery_steps": 2}, None),
    ("flux", "pruning blocks", {"pruning.blocks": 0.5}, None),
    ("flux", "quantization", {"quantization.enabled": True, "quantization.weight_bits": 8}, None),
    ("flux", "first-block cache", {"caching.method": "first_block"}, None),
    ("flux", "MagCache", {"caching.method": "mag"}, None),
    ("flux", "TaylorSeer", {"caching.method": "taylorseer"}, None),
    ("flux", "pyramid attention broadcast", {"caching.method": "pab"}, None),
    ("flux", "tiny decoder", {"decoder.kind": "tiny", **QUICK_DECODER}, None),
    ("flux", "bfloat16", {"runtime.dtype": "bfloat16"}, None),
    ("flux", "fused QKV", {"runtime.fuse_qkv": True}, None),
    ("flux", "channels-last", {"runtime.channels_last": True}, "is for UNets"),
]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    from autoaccel.targets.loader import load_pipeline_folder

    root = tmp_path_factory.mktemp("deployed")
    return {kind: load_pipeline_folder(build_tiny_pipeline(kind, root / kind)) for kind in ("sdxl", "flux")}


@pytest.mark.slow  # trains a student, a recovered model and a tiny decoder: a minute or two in all
@pytest.mark.parametrize(("kind", "family", "settings", "refusal"), FAMILIES, ids=[f"{k}-{f}" for k, f, *_ in FAMILIES])
def test_every_technique_family_runs_or_is_refused_with_its_reason(
    targets, tmp_path, monkeypatch, kind, family, settings, refusal
):
    import autoaccel.distill.recovery as recovery
    from autoaccel.techniques.base import unchanged_model_params
    from autoaccel.testing.technique_contract import configured, images

    monkeypatch.setattr(recovery, "TRAJECTORY_SAMPLES", 2)  # recovery's data: a few samples prove the plumbing
    monkeypatch.setattr(recovery, "DATA_SAMPLES", 4)
    target = targets[kind]
    solver = "flow_euler" if target.schedule_family == "flow" else "euler"
    params = {**unchanged_model_params(), "solver.name": solver, "timesteps.steps": 3, **settings}
    if refusal is not None:
        with pytest.raises(AutoaccelError, match=refusal) as raised:
            images(configured(target, params, tmp_path)[0], target)
        assert len(str(raised.value).splitlines()) == 1
        return
    pipeline, _ = configured(target, params, tmp_path)
    made = images(pipeline, target)
    assert made.shape == (4, 3, 16, 16) and torch.isfinite(made).all()


SMALL_SPACES = {
    "sdxl": """
name: sdxl_joint
techniques: [distillation, pruning, quantization, caching, solver, timesteps]
fixed:
  distillation.iterations: 4
  distillation.steps: 2
  distillation.data_samples: 8
  distillation.batch_size: 4
  pruning.prune_heads: true
dimensions:
  distillation.method: {type: categorical, choices: [none, consistency]}
  pruning.ratio: {type: categorical, choices: [0.0, 0.3]}
  quantization.enabled: {type: categorical, choices: [true, false]}
  quantization.weight_bits: {type: categorical, choices: [8], when: {quantization.enabled: [true]}}
  caching.method: {type: categorical, choices: [none, deep]}
  timesteps.steps: {type: int, low: 2, high: 4}
  solver.name: {type: categorical, choices: [euler, dpmsolver++]}
""",
    "flux": """
name: flux_joint
techniques: [pruning, quantization, caching, solver, timesteps]
fixed:
  pruning.prune_heads: true
dimensions:
  pruning.ratio: {type: categorical, choices: [0.0, 0.3]}
  quantization.enabled: {type: categorical, choices: [true, false]}
  quantization.weight_bits: {type: categorical, choices: [8], when: {quantization.enabled: [true]}}
  caching.method: {type: categorical, choices: [none, first_block, taylorseer]}
  timesteps.steps: {type: int, low: 2, high: 4}
  solver.name: {type: categorical, choices: [flow_euler, unipc]}
  solver.guidance: {type: float, low: 1.0, high: 5.0, requires: guidance}
""",
}
# the settings whose values show that a family ran in a trial
FAMILY_COLUMNS = {
    "sdxl": {"param.distillation.method": "consistency", "param.pruning.ratio": 0.3, "param.caching.method": "deep"},
    "flux": {"param.pruning.ratio": 0.3, "param.caching.method": "first_block"},
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sdxl", "flux"])
def test_a_search_over_every_family_writes_recipes_that_reapply_to_a_fresh_load_bit_for_bit(tmp_path, kind):
    import diffusers

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.distill.students import forget_students
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.plan.candidate import Candidate
    from autoaccel.report.build import write_front_recipe
    from autoaccel.search.run import open_run

    folder = build_tiny_pipeline(kind, tmp_path / kind)
    space = tmp_path / f"{kind}.yaml"
    space.write_text(SMALL_SPACES[kind])
    overrides = [
        "target=pipeline",
        f"target.path={folder}",
        "target.device=cpu",
        f"report.dir={tmp_path / 'reports'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"space={space}",
        "quality.samples=8",
        "quality.chunk_size=8",
        "quality.ode_steps=8",
        "quality.fid_std_rounds=4",
        "cost.batch_size=2",
        "cost.warmup=0",
        "cost.repeats=1",
        "cost.confirm=false",
        "budget.trials=7",
        "budget.warm_start_steps=[]",
        "seed=3",
        "quiet=true",
    ]
    index = search(compose_config(overrides), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == len(trials), trials[["state", "failure"]].to_string()
    for column, value in FAMILY_COLUMNS[kind].items():
        assert (complete[column] == value).any(), f"no trial ran {column}={value}"
    context = open_run(index.parent)
    seeds = context.judge.seeds.head(4)
    for trial in complete["trial"]:
        forget_students()
        row = context.ledger.trials_frame().set_index("trial").loc[int(trial)]
        recipe = write_front_recipe(context, pd.Series({**row.to_dict(), "trial": int(trial)}), context.run_dir / "all")
        fresh = diffusers.DiffusionPipeline.from_pretrained(folder)
        fast = apply_recipe(fresh, recipe)
        candidate = Candidate.from_params(context.ledger.trial(int(trial)).user_attrs["candidate"])
        scored = context.evaluator.configured_pipeline(candidate)
        assert torch.equal(sample_in_chunks(fast, seeds, 4), sample_in_chunks(scored, seeds, 4)), f"trial {trial}"


# (kind, the technique and its LoRA-trained config) on the SDXL- and Flux-shaped models: a consistency student on
# SDXL's UNet (distillation needs a DDPM-family model), recovery after pruning on Flux's transformer
LORA_PLANS = [
    (
        "sdxl",
        "distillation",
        {
            "method": "consistency",
            "steps": 2,
            "iterations": 4,
            "batch_size": 4,
            "data_samples": 8,
            "adapter": "lora",
            "lora_rank": 2,
        },
    ),
    ("flux", "pruning", {"ratio": 0.3, "recovery_steps": 3, "recovery_adapter": "lora", "recovery_lora_rank": 2}),
]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(("kind", "name", "settings"), LORA_PLANS, ids=[kind for kind, *_ in LORA_PLANS])
def test_a_lora_adapter_trains_is_stored_by_hash_and_reapplies_bit_for_bit_without_training(
    targets, tmp_path, monkeypatch, kind, name, settings, forbid_training
):
    import hashlib

    import autoaccel.distill.recovery as recovery
    from autoaccel.pipeline.sampling import sampler_pipeline
    from autoaccel.pipeline.seeds import make_seed_batch, sample_in_chunks
    from autoaccel.plan.apply import apply_plan, run_default_call
    from autoaccel.techniques.base import get_technique
    from autoaccel.util.artifacts import ArtifactStore

    monkeypatch.setattr(recovery, "TRAJECTORY_SAMPLES", 2)
    monkeypatch.setattr(recovery, "DATA_SAMPLES", 4)
    target = targets[kind]
    technique = get_technique(name)
    config = technique.config_cls(**settings)

    def pipeline():
        made = sampler_pipeline(target)
        run_default_call(made, target)
        return made

    seeds = make_seed_batch(target.sample_shape, 3, 5, target.condition_count)
    store = ArtifactStore(tmp_path / "artifacts")
    trained = pipeline()
    stored = apply_plan(trained, [(technique, config)], target, store=store)
    images = sample_in_chunks(trained, seeds, 3)
    path = store.path_of(stored[name])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == stored[name]  # stored under its own hash
    whole = sum(parameter.numel() * 4 for parameter in target.denoiser.parameters())
    assert path.stat().st_size < 0.25 * whole  # the adapter alone, not the model

    forbid_training()
    restored = pipeline()
    apply_plan(restored, [(technique, config)], target, {name: (path, stored[name])})
    assert torch.equal(sample_in_chunks(restored, seeds, 3), images)
