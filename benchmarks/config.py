"""The benchmarks' own configuration: the ``bench`` Hydra config group (``benchmarks/conf/bench/``), composed beside a
search configuration and kept out of it, so a search never carries benchmark settings.

``python -m autoaccel bench NAME key=value ...`` sends ``bench.*`` overrides here and every other one to
``autoaccel.config.compose_config``; a benchmark reads ``config.bench.*`` next to the search keys it runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, open_dict

from autoaccel.config import compose_config
from autoaccel.config.compose import compose_from

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUP = "bench"
SCHEMA_NAME = "bench_schema"


@dataclass
class DistillationBenchConfig:
    """``bench distillation``: the NFEs compared and each method's training budget."""

    nfes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    start_steps: int = 64  # progressive: the teacher steps the halving rounds start from
    progressive_iterations: int = 500  # per halving round
    consistency_iterations: int = 4000
    schedule_iterations: int = 100
    batch_size: int = 64
    learning_rate: float = 2.0e-4
    methods: list[str] = field(
        default_factory=lambda: ["progressive", "consistency", "learned_schedule", "dmd", "dmd_gan"]
    )
    dmd_iterations: int = 1000
    dmd_learning_rate: float = 3.0e-4
    dmd_ema: float = 0.99
    dmd_fake_updates: int = 2
    dmd_gan_weight: float = 0.01
    dmd_regression_weight: float = 0.25  # DMD1's regression onto the teacher's ODE end points, in every DMD row
    dmd_real_guidance: float | None = None  # the real score's guidance (None: the default call's)
    dmd_curve: list[int] = field(default_factory=lambda: [250, 500])  # DMD rows at fewer iterations, every NFE
    table: str | None = None  # the file under bench.dir (None: distillation.md, distillation-<target>.md)
    search_trials: int = 0  # > 0: a search of search_space against a schedule-only one, each this many trials
    search_space: str = "distilled"


@dataclass
class CachingBenchConfig:
    """``bench caching``: the step counts compared, the solver they run, the cache knobs tried at each."""

    steps: list[int] = field(default_factory=lambda: [50, 20, 10, 5])
    solver: str = "unipc"  # the best standard solver of the schedule benchmark (order 2)
    intervals: list[int] = field(default_factory=lambda: [2, 3, 5])
    depths: list[int] = field(default_factory=lambda: [1, 2])  # cut to each model's levels or blocks
    warmups: list[int] = field(default_factory=lambda: [0, 3])
    strengths: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9])  # first_block and mag thresholds
    taylor_orders: list[int] = field(default_factory=lambda: [1])
    methods: list[str] = field(default_factory=lambda: ["auto"])  # auto: every method the model takes
    quality_ratio: float = 1.05  # the FID a cached plan may reach, as a multiple of the uncached one's
    distilled_steps: int = 4  # a consistency student at this many steps, cached and not; 0 skips it
    distilled_iterations: int = 2000
    search_trials: int = 0  # > 0: a cached search against a steps-only one, this many trials each
    search_space: str = "auto"  # the cached space searched (auto: cached, or flow_cached for flow models)


@dataclass
class RuntimeBenchConfig:
    """``bench runtime``: the runtime settings compared at the default call, and the sampler plans they go on."""

    targets: list[str] = field(default_factory=lambda: ["digits_t2i", "digits_dit"])  # []: the run's target
    seed_sets: list[int] = field(default_factory=lambda: [1, 2])  # this benchmark's bench.confirm_seeds
    samples: int = 256  # images per seed set (this benchmark's quality.samples)
    settings: list[str] = field(default_factory=lambda: ["auto"])  # auto: every setting a CPU may run
    quality_ratio: float = 1.02  # a runtime-only plan's FID bound, as a multiple of the reference's
    plan_ratios: list[float] = field(default_factory=lambda: [1.1, 1.25])  # the whole plans' FID bounds
    solvers: list[str] = field(default_factory=lambda: ["dpmsolver++", "unipc"])  # order 2, uniform trailing
    steps: list[int] = field(default_factory=lambda: [4, 6, 8, 10])
    student_iterations: int = 0  # > 0: a consistency student at student_steps, trained this many iterations
    student_steps: list[int] = field(default_factory=lambda: [1, 2, 4])
    decoder_iterations: int = 1000  # the tiny decoder's training
    decoder_data_samples: int = 512
    file: str = "runtime.md"  # the table's name in bench.dir


@dataclass
class BenchConfig:
    """``bench schedules``: a search per NFE, then the winners re-scored on fresh seed sets."""

    dir: str = "reports/bench"
    nfes: list[int] = field(default_factory=lambda: [4, 6, 8, 10])
    trials: int = 40
    confirm_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    optimizers: list[str] = field(default_factory=list)  # bench optimizers; empty = every registered backend
    optimizer_seeds: int = 5
    synthetic_evaluations: int = 200
    slow_backend_evaluations: int = 60  # optuna_gp costs seconds per ask
    model_evaluations: int = 30
    model_seeds: int = 3
    model_samples: int = 128
    parts: list[str] = field(default_factory=lambda: ["a", "b", "c"])  # bench optimizers: the parts to (re)run
    fidelity_trials: int = 40  # 0 skips the multi-fidelity comparison
    fidelity_levels: list[int] = field(default_factory=lambda: [64, 512])
    fidelity_seeds: int = 3  # optimizer seeds of the multi-fidelity comparison
    fidelity_variants: list[str] = field(default_factory=list)  # rule:levels:z (paired:64-512:1), compared too
    model_optimizers: list[str] = field(
        default_factory=lambda: ["random", "optuna_nsga2", "optuna_tpe", "nevergrad_ngopt", "pymoo_nsga2"]
    )
    compression_steps: int = 10  # bench compression: the fixed sampler's step count, and the searches' warm starts
    compression_trials: int = 60  # each of the compression (space=compressed) and the schedule-only search
    compression_space: str = "compressed"  # the space the compression side searches
    pruning_ratios: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6])
    recovery_steps: list[int] = field(default_factory=lambda: [0, 300])
    weight_bits: list[int] = field(default_factory=lambda: [8, 6, 4, 3])
    latency_batches: list[int] = field(default_factory=lambda: [16, 64, 256])
    latency_repeats: int = 9
    load_workers: int = 8  # bench workers: processes on one shared study
    load_trials: int = 50  # trials per worker
    load_work_ms: float = 20.0  # the stand-in evaluation time of each synthetic trial
    distillation: DistillationBenchConfig = field(default_factory=DistillationBenchConfig)
    caching: CachingBenchConfig = field(default_factory=CachingBenchConfig)
    runtime: RuntimeBenchConfig = field(default_factory=RuntimeBenchConfig)


_SCHEMA_REGISTERED = False


def _register_schema() -> None:
    global _SCHEMA_REGISTERED
    if _SCHEMA_REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=GROUP, name=SCHEMA_NAME, node=BenchConfig)
    _SCHEMA_REGISTERED = True


def is_bench_override(override: str) -> bool:
    """``bench.nfes=[4,8]`` or ``bench=default`` (a benchmark key), as opposed to a search key."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key == GROUP or key.startswith(GROUP + ".")


def compose_bench(overrides: list[str] | None = None) -> DictConfig:
    """The ``bench`` group alone (``benchmarks/conf/bench/default.yaml`` checked against ``BenchConfig``) with
    ``overrides`` (``bench.*`` keys); a bad key or value is one ConfigError line naming it."""
    _register_schema()
    config = compose_from(CONF_DIR, "benchmarks", overrides)
    return config.bench


def compose_benchmark_config(overrides: list[str] | None = None) -> DictConfig:
    """A search configuration from the search overrides, with the ``bench`` group composed from the ``bench.*``
    ones beside it as ``config.bench``."""
    overrides = list(overrides or [])
    config = compose_config([item for item in overrides if not is_bench_override(item)])
    bench = compose_bench([item for item in overrides if is_bench_override(item)])
    with open_dict(config):
        config.bench = bench
    return config
