"""Feature caching on tiny models of each denoiser kind: which calls run the whole model, that cached calls really
skip the deep blocks and reuse what the last full call kept, what they cost in full-forward equivalents, and that
a model it cannot cache is refused with the reason."""

from __future__ import annotations

import pytest
import torch

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.call_control import call_controller
from autoaccel.pipeline.sampling import sampler_pipeline
from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.targets.denoisers import predict
from autoaccel.targets.loader import load_pipeline_folder
from autoaccel.techniques.base import target_limits
from autoaccel.techniques.caching import CachingConfig, apply_caching
from autoaccel.techniques.caching.deep import full_steps
from autoaccel.testing.pipelines import build_tiny_pipeline

KINDS = ("ddpm", "sd", "dit", "pixart_alpha", "sana")
STEPS = 6


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("caching_targets")
    return {kind: load_pipeline_folder(build_tiny_pipeline(kind, root / kind)) for kind in (*KINDS, "sd3")}


def _cached_pipeline(target, config: CachingConfig | None, steps: int = STEPS):
    """``target``'s pipeline at ``steps`` and its default guidance, cached by ``config`` (None: uncached)."""
    pipeline = sampler_pipeline(target)
    if config is not None:
        apply_caching(pipeline, config, target)
    pipeline.plan.native_steps = steps
    pipeline.plan.guidance_scale = target.reference_call.guidance_scale
    return pipeline


def _sample(pipeline, target) -> torch.Tensor:
    seeds = make_seed_batch(target.sample_shape, 3, 7, target.condition_count)
    return pipeline(
        seeds.noise, seeds.class_labels, generator=torch.Generator().manual_seed(0)
    ).images  # DDPM steps draw noise


def _deep_blocks(denoiser) -> list[torch.nn.Module]:
    """The blocks depth 1 (UNets) or 0 (the two-block tiny transformers) leaves to full calls only."""
    if hasattr(denoiser, "transformer_blocks"):
        return list(denoiser.transformer_blocks)
    return [denoiser.mid_block, *denoiser.down_blocks[1:], *denoiser.up_blocks[:-1]]


def _depth(target) -> int:
    return 0 if hasattr(target.denoiser, "transformer_blocks") else 1


def test_which_calls_run_the_whole_model():
    assert full_steps(6, CachingConfig("deep", interval=2)) == [True, False, True, False, True, False]
    assert full_steps(9, CachingConfig("deep", interval=3, warmup=2, tail=2)) == [
        True, True, False, False, True, False, False, True, True,
    ]  # fmt: skip
    assert full_steps(1, CachingConfig("deep", interval=4)) == [True]


@pytest.mark.parametrize("kind", KINDS)
def test_cached_calls_skip_the_deep_blocks_and_count_as_their_share(targets, kind):
    target = targets[kind]
    config = CachingConfig("deep", depth=_depth(target), interval=3)
    pipeline = _cached_pipeline(target, config)
    calls = {"deep": 0}
    hooks = [
        block.register_forward_hook(lambda *_: calls.__setitem__("deep", calls["deep"] + 1))
        for block in _deep_blocks(target.denoiser)
    ]
    try:
        images = _sample(pipeline, target)
    finally:
        for hook in hooks:
            hook.remove()

    steps = len(pipeline.scheduler.timesteps)  # the scheduler's own: PNDM runs one more than asked
    full = sum(full_steps(steps, config))
    assert calls["deep"] == full * len(_deep_blocks(target.denoiser))  # deep blocks ran on full calls only
    share = call_controller(pipeline.denoiser).cached_share
    assert 0 < share < 1
    per_call = 2 if pipeline.guided else 1
    assert pipeline.model_calls == steps * per_call
    assert pipeline.denoiser_calls == pytest.approx(per_call * (full + (steps - full) * share))
    uncached = sampler_pipeline(target)
    uncached.plan.native_steps, uncached.plan.guidance_scale = STEPS, pipeline.plan.guidance_scale
    assert torch.isfinite(images).all() and not torch.equal(images, _sample(uncached, target))
    assert torch.equal(images, _sample(pipeline, target))  # a second run starts afresh: the same images


@pytest.mark.parametrize("kind", KINDS)
def test_a_cached_call_on_the_full_calls_inputs_gives_its_output(targets, kind):
    """What a cached call reuses is exactly what the full call computed: given the same inputs, the outer part
    recomputes the same values around it (to rounding, where a residual is added back)."""
    target = targets[kind]
    pipeline = _cached_pipeline(target, CachingConfig("deep", depth=_depth(target), interval=2))
    cache = call_controller(pipeline.denoiser)
    sample = torch.randn((2, *target.sample_shape), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1]) if target.condition_count is not None else None
    keywords = target.conditions.keywords(labels, False, "cpu")
    timestep = torch.tensor([500])
    pipeline.scheduler.set_timesteps(2)
    with torch.no_grad(), cache.running(pipeline):
        full = predict(pipeline.denoiser, sample, timestep, keywords)
        cached = predict(pipeline.denoiser, sample, timestep, keywords)
        reference = predict(target.denoiser, sample, timestep, keywords)
    assert torch.equal(full, reference)
    if hasattr(target.denoiser, "transformer_blocks"):
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    else:
        assert torch.equal(cached, full)
    assert cache.run.calls == 2


def test_bad_settings_and_models_it_cannot_cache_are_refused(targets):
    with pytest.raises(ConfigError, match=r"caching\.interval=0 .*\[1, 16\]"):
        CachingConfig("deep", interval=0)
    with pytest.raises(
        ConfigError, match=r"caching\.method='fora' .*\['none', 'deep', 'first_block', 'mag', 'taylorseer', 'pab'\]"
    ):
        CachingConfig("fora")
    with pytest.raises(TechniqueError, match=r"caching\.depth=2 is not valid for this 2-level UNet; valid: \[1\]"):
        _cached_pipeline(targets["ddpm"], CachingConfig("deep", depth=2))
    with pytest.raises(TechniqueError, match=r"caching\.depth=1 .* 2-block transformer; valid: \[0\]"):
        _cached_pipeline(targets["dit"], CachingConfig("deep", depth=1))
    with pytest.raises(TechniqueError, match="return the hidden states"):
        _cached_pipeline(targets["sd3"], CachingConfig("deep", depth=0))
    untouched = sampler_pipeline(targets["ddpm"])
    apply_caching(untouched, CachingConfig("deep", interval=1), targets["ddpm"])  # every call full: nothing to do
    assert call_controller(untouched.denoiser) is None


def test_a_shared_space_narrows_caching_depth_to_each_model(targets):
    from autoaccel.space.spaces import load_space

    space = load_space("cached")
    assert space.dimension("caching.depth").high == 3
    assert space.for_target(set(), **target_limits(targets["ddpm"])).dimension("caching.depth").high == 1  # 2 levels
    with pytest.raises(ConfigError, match=r"caching\.depth.*cache_depth_limit=0"):
        space.for_target(set(), **target_limits(targets["dit"]))  # 2 blocks: only depth 0, below the space's low


SMALL_CACHED_SPACE = """
name: small_cached
techniques: [caching, solver, timesteps]
dimensions:
  caching.method: {type: categorical, choices: [none, deep]}
  caching.interval: {type: int, low: 2, high: 3, when: {caching.method: [deep]}}
  timesteps.steps: {type: int, low: 4, high: 8}
  solver.name: {type: categorical, choices: [ddim, unipc]}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_cached_search_measures_cached_plans_and_their_recipes_reapply_bit_exactly(
    fast_overrides, tiny_pipeline_dir, tmp_path
):
    """The bundled cached space on the tiny UNet: cached plans count their cheap calls as shares, get their own
    timing, and each recipe reproduces the scored images."""
    import pandas as pd
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from autoaccel.cli.search_command import search
    from autoaccel.config import compose_config
    from autoaccel.pipeline.seeds import sample_in_chunks
    from autoaccel.search.run import open_run
    from tests.test_distillation import _candidate, _recipe_of

    space_file = tmp_path / "cached.yaml"
    space_file.write_text(SMALL_CACHED_SPACE)
    overrides = [*fast_overrides, f"space={space_file}", "budget.trials=6", "seed=5", "study_name=cached"]
    index = search(compose_config(overrides), log=lambda message: None)
    trials = pd.read_csv(index.parent / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == len(trials), trials[["state", "failure"]].to_string()
    cached = complete[complete["param.caching.method"] == "deep"]
    assert not cached.empty
    assert (cached["nfe"] < cached["denoiser_calls"]).all()  # cached calls count as their share of a full one
    assert (complete[complete["param.caching.method"] == "none"].eval("nfe == denoiser_calls")).all()
    context = open_run(index.parent)
    seeds = context.judge.seeds.head(8)
    for trial in cached["trial"]:
        fast = apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), _recipe_of(context, int(trial)))
        scored = context.evaluator.configured_pipeline(_candidate(context, int(trial)))
        assert call_controller(fast.denoiser) is not None
        assert torch.equal(sample_in_chunks(fast, seeds, 48), sample_in_chunks(scored, seeds, 48))


@pytest.mark.slow
@pytest.mark.integration
def test_the_caching_bench_calibrates_on_the_search_seed_and_writes_its_verdicts(fast_overrides, tmp_path):
    from benchmarks.caching import run_caching_benchmark
    from benchmarks.config import compose_benchmark_config as compose_config

    settings = ["bench.caching.steps=[6]", "bench.caching.intervals=[2,3]", "bench.caching.warmups=[0]"]
    config = compose_config(
        [
            *fast_overrides,
            f"bench.dir={tmp_path}",
            "bench.confirm_seeds=[1]",
            *settings,
            "bench.caching.distilled_steps=0",
        ]
    )
    table = run_caching_benchmark(config, log=lambda message: None).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 6 |")]
    assert [row.split(" | ")[1] for row in rows[:2]] == ["uncached", "default knobs (interval 3, depth 1)"]
    assert any("calibrated (depth 1" in row for row in rows) or "no cached plan stays within" in table
    assert "- 6 steps:" in table and "default knobs: " in table
    assert "- 6 steps (uncached FID" in table  # the grid as scored on the search seed


def test_the_caching_bench_compares_a_cached_front_with_the_same_space_held_uncached(tmp_path):
    """The steps-only baseline is the cached space without its caching dimensions; the verdict counts the
    steps-only points some cached point is at least as good as on both FID and latency."""
    from autoaccel.space.spaces import load_space
    from benchmarks.caching import _front_section, steps_only_space
    from benchmarks.config import compose_benchmark_config as compose_config

    baseline = load_space(steps_only_space("cached", tmp_path))
    assert not any(name.startswith("caching.") for name in baseline.names)
    assert baseline.fixed["caching.method"] == "none" and "timesteps.steps" in baseline.names

    def point(fid: float, latency: float, method: str) -> dict:
        params = {"caching.method": method, "solver.name": "unipc", "timesteps.family": "karras"}
        return {"fid": [fid], "latency_ms": latency, "nfe": 10.0, "calls": 10, "params": params}

    fronts = {
        "steps-only": [(1, point(2.0, 10.0, "none")), (2, point(1.0, 30.0, "none"))],
        "cached": [(3, point(1.9, 8.0, "deep")), (4, point(1.2, 25.0, "deep"))],
    }
    lines = _front_section(compose_config(["bench.caching.search_trials=2"]), fronts, point(1.0, 50.0, "none"))
    assert "Verdict: cached-front points weakly dominate 1 of 2 steps-only points" in "\n".join(lines)
    assert "2 of the cached front's 2 points use the cache" in "\n".join(lines)
