"""Every benchmark, once: its name, what it measures, and how it starts. ``python -m autoaccel bench NAME [args]``
runs ``run(NAME, args)``; a new benchmark is its module plus one entry here.

A ``config`` benchmark takes ``key=value`` overrides (search keys and ``bench.*`` keys, composed by
``benchmarks.config``) and is called as ``function(config, log=...)``, returning the table it wrote. A ``command``
benchmark has its own flags and is called as ``function(argv)``, returning an exit status.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import SimpleNamespace

from autoaccel.cli.usage import key_table
from autoaccel.errors import ConfigError


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str
    entry: str  # "module:function" inside this package
    takes: str = "config"  # "config": key=value overrides; "command": its own flags (argv)

    def load(self):
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(f"benchmarks.{module}"), function)


BENCHMARKS = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark(
            "schedules",
            "found plans vs standard solvers vs the reference, per NFE -> reports/bench/schedules.md",
            "schedules:run_schedules_benchmark",
        ),
        Benchmark(
            "optimizers",
            "hypervolume against evaluations for every backend, and multi-fidelity savings",
            "optimizers:run_optimizers_benchmark",
        ),
        Benchmark(
            "compression",
            "pruning and quantization, and the compression front against the schedule-only one",
            "compression:run_compression_benchmark",
        ),
        Benchmark(
            "distillation",
            "progressive, consistency and learned-schedule students vs schedules alone, per NFE",
            "distillation:run_distillation_benchmark",
        ),
        Benchmark(
            "caching",
            "feature caching against the same steps uncached: speed-up vs FID, per step count and knob",
            "caching:run_caching_benchmark",
        ),
        Benchmark(
            "runtime",
            "precision, torch.compile, attention kernels, tiny decoder, int8 kernels: each alone, combined, and on "
            "sampler plans, against the default call -> reports/bench/runtime.md",
            "runtime:run_runtime_benchmark",
        ),
        Benchmark(
            "workers",
            "many workers on one shared study (needs storage=postgresql://...): throughput, consistency",
            "workers:run_workers_benchmark",
        ),
        Benchmark(
            "quality",
            "which no-data quality figure ranks plans like real-data FID ([--plans=N] [--samples=N] [key=value])",
            "quality:main",
            takes="command",
        ),
        Benchmark(
            "kernels",
            "CUDA: quantized plans with real int8 kernels (torchao) vs float ([--recipes DIR] [--out FILE])",
            "kernels:main",
            takes="command",
        ),
        Benchmark(
            "quant_kernels",
            "CPU: torchao and optimum-quanto quantized kernels vs float32/bfloat16 on the digits denoisers "
            "([--compile] [--out FILE])",
            "quant_kernels:main",
            takes="command",
        ),
        Benchmark(
            "gpu_default_call",
            "CUDA: the default call vs a 5-step plan on the embedded latent models and a tiny SD (OUT.md)",
            "gpu_default_call:main",
            takes="command",
        ),
        Benchmark(
            "gpu_runtime",
            "CUDA: precision, compile (CUDA graphs too), flash/cuDNN attention, int8/float8 kernels on the default "
            "call of the embedded latent models at batch 1 and 8 ([--out FILE] [--budget-seconds S])",
            "gpu_runtime:main",
            takes="command",
        ),
        Benchmark(
            "gpu_models",
            "CUDA: SDXL- and Flux-shaped models at real size in bfloat16 (random weights): the default call vs "
            "searched-shape plans and model offload, latency and peak memory ([--tiny --device cpu] [--out FILE])",
            "gpu_models:main",
            takes="command",
        ),
    )
}

# The main bench.* keys; every one is in benchmarks/conf/bench/default.yaml, defaults come from its schema.
BENCH_KEYS = (
    ("bench.dir", None, "where the tables go"),
    ("bench.nfes, bench.trials, bench.confirm_seeds", None, "schedules: NFEs, trials per NFE, fresh seed sets"),
    ("bench.optimizers, bench.optimizer_seeds", None, "optimizers: backends ([] = all) and seeds per backend"),
    ("bench.model_evaluations, bench.fidelity_trials", None, "optimizers: model-space evaluations, fidelity trials"),
    ("bench.compression_steps, bench.compression_trials", None, "compression: fixed sampler steps, search trials"),
    (
        "bench.distillation.nfes, bench.distillation.progressive_iterations, "
        "bench.distillation.consistency_iterations, bench.distillation.schedule_iterations",
        None,
        "distillation: NFEs; iterations per halving round, of the consistency student, of a learned schedule",
    ),
    (
        "bench.distillation.search_trials, bench.distillation.search_space",
        None,
        "distillation: trials of the searched space and of a schedule-only one (0 skips), the space searched",
    ),
    (
        "bench.caching.steps, bench.caching.methods, bench.caching.intervals, bench.caching.depths, "
        "bench.caching.warmups, bench.caching.strengths, bench.caching.taylor_orders",
        None,
        "caching: step counts, the methods compared, and the cache knobs tried at each",
    ),
    ("bench.caching.distilled_steps", None, "caching: a consistency student's steps, cached and not (0 skips)"),
    (
        "bench.runtime.targets, bench.runtime.seed_sets, bench.runtime.samples, bench.runtime.settings",
        None,
        "runtime: targets (one section each), seed sets, images per set, the setting rows ([auto]: a CPU's)",
    ),
    (
        "bench.runtime.quality_ratio, bench.runtime.plan_ratios, bench.runtime.solvers, bench.runtime.steps, "
        "bench.runtime.student_iterations",
        None,
        "runtime: FID bounds of the combination and the whole plans, their sampler plans, a student (0 skips)",
    ),
    ("bench.pruning_ratios, bench.weight_bits", None, "compression: ratios and bit-widths compared"),
    ("bench.load_workers, bench.load_trials", None, "workers: processes and trials per process"),
)


def bench_help() -> str:
    from benchmarks.config import BenchConfig

    names = "\n".join(f"  {name:<16} {benchmark.summary}" for name, benchmark in BENCHMARKS.items())
    return (
        "usage: python -m autoaccel bench NAME [key=value ...]\n\n"
        f"Runs a benchmark and writes <bench.dir>/NAME.md. Benchmarks:\n{names}\n\n"
        f"benchmark keys (every search key applies too: python -m autoaccel search --help):\n"
        f"{key_table(BENCH_KEYS, SimpleNamespace(bench=BenchConfig()))}\n\n"
        "example: python -m autoaccel bench schedules bench.nfes=[4,8] bench.trials=20"
    )


def run(name: str, args: list[str], make_log=lambda quiet: print) -> int:
    """Runs benchmark ``name`` with ``args`` (``make_log(quiet)``: how a config benchmark reports progress); a name
    that is not registered is a ConfigError naming the valid ones."""
    if name not in BENCHMARKS:
        raise ConfigError(f"bench needs a benchmark name; valid: {', '.join(BENCHMARKS)} (got {name!r})")
    benchmark = BENCHMARKS[name]
    if benchmark.takes == "command":
        return int(benchmark.load()(args) or 0)
    from autoaccel.search.checks import validate_config
    from benchmarks.config import compose_benchmark_config

    config = compose_benchmark_config(args)
    validate_config(config)
    print(benchmark.load()(config, log=make_log(bool(config.quiet))))
    return 0
