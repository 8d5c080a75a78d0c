"""``bench compression`` end to end on the tiny pipeline: every part of the table is there, pruned rows are
smaller, quantized rows are labelled simulated with no CPU latency claimed, and the exported front recipes
apply to the model they were searched on."""

from __future__ import annotations

import json

import pytest

from benchmarks.config import compose_benchmark_config as compose_config

# the compressed space without its recovery dimension: recovery has tests of its own, and training it in every
# trial is what made this test slow
SMALL_COMPRESSED_SPACE = """
name: small_compressed
techniques: [pruning, quantization, solver, timesteps]
fixed: {pruning.recovery_steps: 0, quantization.calibration_samples: 8}
dimensions:
  pruning.ratio: {type: float, low: 0.0, high: 0.5}
  quantization.enabled: {type: categorical, choices: [true, false]}
  quantization.weight_bits: {type: int, low: 3, high: 8, when: {quantization.enabled: [true]}}
  timesteps.steps: {type: int, low: 2, high: 4}
  solver.name: {type: categorical, choices: [ddim, unipc]}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_compression_bench_writes_its_table_and_front_recipes(fast_overrides, tiny_pipeline_dir, tmp_path):
    from diffusers import DDPMPipeline

    from autoaccel import apply_recipe
    from benchmarks.compression import run_compression_benchmark

    bench_dir = tmp_path / "bench"
    space_file = tmp_path / "small_compressed.yaml"
    space_file.write_text(SMALL_COMPRESSED_SPACE)
    config = compose_config(
        [
            *fast_overrides,
            f"bench.dir={bench_dir}",
            f"bench.compression_space={space_file}",
            "bench.compression_trials=4",
            "bench.compression_steps=3",
            "bench.pruning_ratios=[0.0,0.5]",
            "bench.recovery_steps=[0]",
            "bench.weight_bits=[4]",
            "bench.latency_batches=[4]",
            "bench.latency_repeats=1",
            "bench.confirm_seeds=[1]",
        ]
    )
    path = run_compression_benchmark(config, log=lambda message: None)
    table = path.read_text()
    for heading in ("## Pruning", "## Quantization", "### Schedule-only front", "### Compression front", "### Verdict"):
        assert heading in table
    assert "not measured (no quantized kernels on cpu)" in table
    figures = json.loads((bench_dir / "compression.json").read_text())
    rows = figures["rows"]
    assert rows["pruned 50%"]["params"] < rows["float model"]["params"]
    assert rows["W4 (simulated)"]["model_bytes"] < rows["float model"]["model_bytes"] / 4
    assert set(figures["unet_latency_ms"]) == {"float model", "pruned 50%"}
    recipes = sorted((bench_dir / "compression-front").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        apply_recipe(DDPMPipeline.from_pretrained(tiny_pipeline_dir), recipe)
