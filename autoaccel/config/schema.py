"""The shape of every option, so a typo or a wrong type fails at composition with the key named. No logic."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class TargetConfig:
    """An embedded model (``digits``, ``digits_t2i``, ``digits_dit``) or ``pipeline`` (a diffusers folder or hub id
    at ``path``)."""

    name: str = "digits"
    path: str | None = None
    device: str = "auto"
    dtype: str = "float32"  # the precision the model is loaded in (float32, bfloat16, float16)
    offload: str = "none"  # none, model (one module on the GPU at a time) or sequential (one layer at a time)
    prompts: str | None = None  # text-to-image: a prompt file (one per line) or a bundled set (general, digits)
    reference: str = "default"  # what plans are compared with: default (the pipeline's own call) or SOLVER-STEPS
    data: str | None = None  # a folder of real images of the model's domain: FID/KID against them


@dataclass
class OptimizerConfig:
    """A backend from ``autoaccel.optimizers.registered_backends()`` (optuna_*, nevergrad_*, pymoo_*, random); the
    other fields apply to the backends that use them."""

    name: str = "optuna_nsga2"
    seed: int | None = None
    population_size: int = 16
    n_startup_trials: int = 10
    planned_trials: int = 100  # the trial budget nevergrad plans for (NGOpt picks its method by it); ~budget.trials


@dataclass
class BudgetConfig:
    """How much to spend and the deployment limits a plan must meet (``null`` = no limit)."""

    trials: int = 40
    concurrent: int = 1  # candidates evaluated at once on this machine (cost is always measured alone)
    max_minutes: float | None = None
    max_train_minutes: float | None = None  # one candidate's training (distillation, recovery): longer fails
    # limits a plan must meet (autoaccel.front.limits): deployment cost, then quality
    max_latency_ms: float | None = None
    max_nfe: int | None = None
    max_memory_mb: float | None = None
    max_bytes: float | None = None
    max_fid: float | None = None
    max_fid_ratio: float | None = None  # times the reference's FID, measured in the same run on the same seeds
    min_psnr: float | None = None  # dB against the reference's ODE solution from the same noise
    min_adherence: float | None = None  # share of images read as their requested class (embedded digit models)
    min_recall: float | None = None  # recall against the real images: the diversity a student keeps (0-1)
    min_pickscore: float | None = None  # PickScore of the images for their prompts (quality.preference_model)
    warm_start_steps: list[int] = field(default_factory=lambda: [4, 6, 10])


@dataclass
class QualityConfig:
    """Images per candidate (the same seeds for every one) and the seed that draws them."""

    samples: int = 512
    seed: int = 0
    chunk_size: int = 512
    ode_steps: int = 200  # steps of the deterministic reference paired measures compare with (psnr_vs_ode)
    fid_std_rounds: int = 20  # bootstrap resamples behind fid_std (promotion margins, the report's intervals)
    clip_model: str | None = None  # a CLIPModel (hub id or local folder): clip_score (prompt adherence)
    inception_weights: str | None = None  # auto (torch-fidelity downloads them) or its weights file: fid_inception
    preference_model: str | None = None  # PickScore (hub id or local folder): pickscore, human preference
    preference_processor: str | None = None  # its processor where the model has none (null: known, else its own)


@dataclass
class FidelityConfig:
    """Multi-fidelity scoring: sample counts per level, ascending, the last equal to quality.samples
    (empty = every candidate on quality.samples; None = decided when a study starts: a ladder where the search is
    estimated past an hour, autoaccel.search.levels); ``z`` scales the paired error a candidate may be behind a
    point scored at its level and still be promoted (autoaccel.search.fidelity)."""

    levels: list[int] | None = None
    z: float = 0.0
    # one per level, the last 1.0: the share of a candidate's training (distillation iterations) done at that
    # level; a promoted candidate continues from its checkpoint. Empty: every level trains in full
    train_shares: list[float] = field(default_factory=list)


@dataclass
class CostConfig:
    """Latency is the median of ``repeats`` timed calls at ``batch_size`` after ``warmup`` calls."""

    batch_size: int = 16
    warmup: int = 2
    repeats: int = 5
    confirm: bool = True  # before the report: the front's plans and the reference timed again side by side


@dataclass
class ReportConfig:
    dir: str = "reports"
    build: bool = True  # false for extra workers of a shared study: one report is built at the end
    grid_images: int = 32
    wandb: bool = False
    wandb_project: str = "autoaccel"


@dataclass
class ArtifactsConfig:
    """``store``: a folder or fsspec URL (s3://bucket/prefix) every worker reaches, beside each run folder's own."""

    store: str | None = None


@dataclass
class LivenessConfig:
    """Heartbeats of a worker on a shared study (``storage=``); a trial silent for ``grace_s`` is swept."""

    interval_s: float = 10.0
    grace_s: float = 60.0


@dataclass
class AutoaccelConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    space: str = "auto"  # the sampler space that fits the model
    objectives: list[str] = field(default_factory=lambda: ["fid", "latency_ms"])
    study_name: str | None = None
    worker: int | None = None  # this process is worker i of a shared study (a launcher's worker='range(N)')
    storage: str | None = None
    cache_dir: str = MISSING
    seed: int = 0
    quiet: bool = False
