"""Candidate -> Measurement. A candidate that cannot be applied, runs out of memory or yields NaN images
comes back as a failed measurement with its reason; this module never lets a trial crash the search.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import torch

from autoaccel.distill.training import persisted_checkpoints
from autoaccel.measure.feature_store import REFERENCE_CALL, FeatureStore, kind_set, plan_set
from autoaccel.measure.gate import MeasurementGate
from autoaccel.measure.kernels import deployment_kernels, kernel_choice, kernel_key
from autoaccel.measure.latency import CostMeasurement, measure_cost, structure_id
from autoaccel.measure.measurement import COMPLETE, FAILED, Measurement, describe_failure
from autoaccel.measure.reference import QualityJudge
from autoaccel.measure.size import model_bytes
from autoaccel.pipeline.seeds import sample_in_chunks
from autoaccel.plan import artifact_index
from autoaccel.plan.apply import apply_plan, build_pipeline, technique_records
from autoaccel.plan.artifact_index import plan_prefix_key
from autoaccel.plan.candidate import Candidate, cost_key
from autoaccel.plan.identity import plan_key
from autoaccel.plan.steps import Plan
from autoaccel.reference.sampling import reference_pipeline
from autoaccel.space.spaces import SearchSpace
from autoaccel.targets.base import Target
from autoaccel.targets.denoisers import execution_device
from autoaccel.techniques.base import COMPILE_SECONDS, TRAIN_MINUTES, simulations
from autoaccel.util.artifacts import ArtifactStore
from autoaccel.util.progress import Progress

CHECKPOINTS_DIR = "checkpoints"  # under the run's artifacts folder: training runs an interrupt stopped
MODELS_KEPT = 2  # pruned/quantized models kept for re-use (each a full copy of the denoiser)
LONG_CALL_STEPS = 100  # a reference call with more denoiser calls than this is timed once


def reference_calls(pipeline) -> int:
    """Denoiser calls of one unguided call of ``pipeline`` as its scheduler is set (Heun-type schedulers
    list a timestep per call)."""
    return len(pipeline.scheduler.timesteps)


class NotStored(Exception):
    """A plan's model would have to be trained or calibrated again (``configured_pipeline(train=False)``)."""


@dataclass(frozen=True)
class CostSettings:
    batch_size: int = 16
    warmup: int = 2
    repeats: int = 5


class Evaluator:
    """Scores candidates of one space on one target, on common seeds, caching costs by structure."""

    def __init__(
        self,
        target: Target,
        space: SearchSpace,
        judge: QualityJudge,
        cost: CostSettings,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.target = target
        self.artifacts = artifacts  # where the weights techniques produce (pruned, recovered) are stored once
        self.space = space
        self.judge = judge
        self.judges = {judge.samples: judge}
        self.cost_settings = cost
        self.cost_cache: dict[str, CostMeasurement] = {}
        self.gate = MeasurementGate(str(execution_device(target.denoiser)))  # shared with every worker on this device
        self.features: FeatureStore | None = None  # a run's: each scored plan's per-image FID features, kept there
        self._judges_lock = threading.Lock()
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self._models_lock = threading.Lock()

    def share_caches(self, other: Evaluator) -> None:
        """Uses ``other``'s cost measurements and modified models (an evaluator of the same target on other
        seeds): costs measured side by side once, models pruned once."""
        self.cost_cache = other.cost_cache
        self._models, self._models_lock = other._models, other._models_lock

    def judge_for(self, samples: int | None) -> QualityJudge:
        """The judge scoring on ``samples`` images (the same seed; a lower fidelity of the run's judge)."""
        samples = samples or self.judge.samples
        with self._judges_lock:
            return self._judge_for(samples)

    def _judge_for(self, samples: int) -> QualityJudge:
        if samples not in self.judges:
            self.judges[samples] = QualityJudge(
                self.target,
                samples,
                self.judge.seeds.seed,
                self.judge.cache_dir,
                self.judge.chunk_size,
                fid_std_rounds=self.judge.fid_std_rounds,
            )
        return self.judges[samples]

    def structure_key(self, pipeline, reference_call: bool = False) -> str:
        """What cost depends on: the unet's size, the scheduler class, unet calls per image, the batch size, the
        quantized kernels a plan runs (none on CPU), and what each applied technique says changes cost
        (``Technique.cost_key``), so a technique that changes cost but not size or calls is timed on its own."""
        measured = {
            "params": sum(parameter.numel() for parameter in pipeline.denoiser.parameters()),
            "scheduler": type(pipeline.scheduler).__name__,
            "nfe": pipeline.denoiser_calls,
            "batch": self.cost_settings.batch_size,
            "kernels": kernel_key(pipeline.denoiser),
        }
        if reference_call:  # the reference call runs its scheduler natively: timed on its own
            measured["reference"] = self.target.reference
        return cost_key(measured, pipeline.plan.techniques)

    def _cost(self, pipeline, reference_call: bool = False) -> tuple[CostMeasurement, bool]:
        key = self.structure_key(pipeline, reference_call)
        if key in self.cost_cache:
            return self.cost_cache[key], True
        with self.gate.exclusive():
            if key in self.cost_cache:  # measured by a concurrent trial while this one waited
                return self.cost_cache[key], True
            return self._measure_cost(pipeline, key, reference_call), False

    def _measure_cost(self, pipeline, key: str, reference_call: bool) -> CostMeasurement:
        seeds = self.judge.deployment_seeds(self.cost_settings.batch_size)
        warmup, repeats = self.cost_settings.warmup, self.cost_settings.repeats
        options, progress = {}, None
        if reference_call and pipeline.denoiser_calls > LONG_CALL_STEPS:
            # one call is already hundreds of steps long: timed once, without warm-up (the report says so), with
            # a line every few seconds on how far it got
            warmup, repeats = 0, 1
            calls = pipeline.denoiser_calls  # of the call that sampled its images, the same call as timed here
            progress = Progress("reference timing (one call)", calls, "denoiser calls")
            if progress.active:
                options["on_step"] = lambda step, steps: progress(step * calls / max(steps, 1))
        with deployment_kernels(pipeline):
            cost = measure_cost(pipeline, seeds, warmup, repeats, **options)
        if progress is not None:
            progress.close()
        cost = replace(cost, exclusive=self.gate.across_processes)
        self.cost_cache[key] = cost
        return cost

    def _measure_pipeline(
        self, pipeline, images: torch.Tensor, details: dict, judge: QualityJudge, reference_call: bool = False
    ) -> Measurement:
        if not torch.isfinite(images).all():
            bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
            return Measurement(FAILED, details=details, failure=f"{bad} of {len(images)} images contain NaN or inf")
        nfe = pipeline.denoiser_calls
        with self.gate.shared():
            metrics, features = judge.score_with_features(images)
        self._keep_features(details["candidate_key"], judge, features, reference_call)
        cost, reused = self._cost(pipeline, reference_call)
        metrics.update(
            nfe=float(nfe),
            latency_ms=cost.latency_ms,
            latency_iqr_ms=cost.latency_iqr_ms,
            peak_memory_mb=cost.peak_memory_mb,
            model_memory_mb=cost.model_memory_mb,
            energy_j=cost.energy_j,
            quality_samples=float(len(images)),
            params=float(sum(parameter.numel() for parameter in pipeline.denoiser.parameters())),
            model_bytes=float(model_bytes(pipeline.denoiser)),
            **{f"{stage}_ms": value for stage, value in cost.stage_ms.items()},
        )
        trained = getattr(pipeline.denoiser, TRAIN_MINUTES, None)
        if trained is not None:  # what producing this plan's model cost the search (not its deployment)
            details.update(train_minutes=round(float(trained), 3))
        compiled = getattr(pipeline.denoiser, COMPILE_SECONDS, None)
        if compiled is not None:  # what compiling this plan's model cost the search, its timing's warm-up included
            details.update(compile_seconds=round(float(compiled), 3))
        kernels = kernel_choice(pipeline.denoiser)
        simulated = simulations(pipeline.denoiser)  # technique -> what it simulates (a quantization plan)
        if simulated:
            details.update(simulated=list(simulated), **simulated)
        if pipeline.plan.artifacts:
            details.update(artifacts=dict(pipeline.plan.artifacts))
        records = technique_records(pipeline)
        if records:  # what applying computed (a cache's calibration): the plan's recipe records it
            details.update(records=records)
        details.update(
            timesteps=pipeline.plan.schedule() or [float(step) for step in pipeline.scheduler.timesteps],
            scheduler_class=type(pipeline.scheduler).__name__,
            denoiser_calls=int(getattr(pipeline, "model_calls", 0)) or None,  # beside nfe, which counts cached calls
            guidance_scale=pipeline.plan.guidance_scale,
            cost_reused=reused,
            cost_key=structure_id(self.structure_key(pipeline, reference_call)),
            timing_exclusive=cost.exclusive,
            background_cores=cost.background_cores,
            memory_kind=cost.memory_kind,
            device=cost.device,
            threads=cost.threads,
            batch_size=cost.batch_size,
            latency_repeats=cost.repeats,
            latency_method=cost.method,
            kernels=kernels.label,
            quantized_latency=kernels.quantized_latency,
        )
        return Measurement(COMPLETE, metrics=metrics, details=details)

    def _keep_features(
        self, candidate_key: str, judge: QualityJudge, features: torch.Tensor, reference_call: bool
    ) -> None:
        """The images' FID features in the run folder, for the paired intervals of the report and ``plan``; a
        folder that cannot take them costs those intervals (the report says so), not the trial."""
        if self.features is None:
            return
        name = kind_set(REFERENCE_CALL, judge.samples) if reference_call else plan_set(candidate_key, judge.samples)
        with contextlib.suppress(OSError):
            self.features.put(name, features, self.target.quality.extractor, judge.seeds.seed)

    def configured_pipeline(self, candidate: Candidate, train: bool = True):
        """The target's pipeline with the candidate's plan applied. The model the model-changing techniques
        (pruning, quantization) produce is kept for the last few plans: the same structure scored at another
        fidelity level or on other seeds is not pruned, distilled and calibrated again. With an artifact store,
        its weights are stored there too (``pipeline.plan.artifacts``): recipes name them and apply without
        training. ``train=False``: a model neither kept nor stored is refused (``NotStored``) instead of trained."""
        plan = candidate.plan(self.space.techniques)
        return build_pipeline(
            self.target, plan, model_steps=lambda pipeline, steps: self._kept_model(pipeline, steps, train)
        )

    def _kept_model(self, pipeline, model_steps: Plan, train: bool) -> dict[str, str]:
        """Puts the model ``model_steps`` produce into ``pipeline``: one of the last few kept, else applied
        (``_apply_model_steps``) and kept. Returns technique -> sha256 of its stored artifact."""
        key = tuple((technique.name, technique.version, config) for technique, config in model_steps)
        with self._models_lock:
            cached = self._models.get(key)
        if cached is not None:  # a model step may change the VAE and the conditions too (the runtime's precision)
            pipeline.denoiser, pipeline.vae, pipeline.conditions, stored = cached
            return stored
        stored = self._apply_model_steps(pipeline, model_steps, train)
        with self._models_lock:
            self._models[key] = (pipeline.denoiser, pipeline.vae, pipeline.conditions, stored)
            while len(self._models) > MODELS_KEPT:
                self._models.popitem(last=False)
        return stored

    def _apply_model_steps(self, pipeline, model_steps: Plan, train: bool = True) -> dict[str, str]:
        """Applies the model techniques one by one; a model an earlier trial or process already stored (the
        artifact index) is loaded from its artifact instead of trained again. Returns technique -> sha256."""
        stored: dict[str, str] = {}
        for count, (technique, config) in enumerate(model_steps, start=1):
            if self.artifacts is None or technique.artifact_state is None:
                apply_plan(pipeline, [(technique, config)], self.target)
                continue
            key = plan_prefix_key(self.target.content_hash, model_steps[:count])
            trains = technique.recompute is not None and bool(technique.recompute(config))
            # a model that trains is claimed first: a second worker waits for it and loads it, not trains it again
            with artifact_index.claimed(self.artifacts, key) if trains else contextlib.nullcontext():
                stored.update(self._stored_or_made(pipeline, technique, config, key, train or not trains))
        return stored

    def _stored_or_made(self, pipeline, technique, config, key: str, may_make: bool) -> dict[str, str]:
        """One model step: loaded from the artifact stored under ``key`` if there is one, else applied (and its
        artifact stored and indexed); ``may_make`` False refuses a model that would train (``NotStored``)."""
        found = artifact_index.lookup(self.artifacts, key)
        if found is None and not may_make:
            raise NotStored(f"its {technique.name} model is not stored in {self.artifacts.folder}")
        if found is not None:
            path, sha, minutes = found
            apply_plan(pipeline, [(technique, config)], self.target, artifacts={technique.name: (path, sha)})
            if minutes is not None and pipeline.denoiser is not self.target.denoiser:  # its search cost, as trained
                object.__setattr__(pipeline.denoiser, TRAIN_MINUTES, minutes)
            return {technique.name: sha}
        made = apply_plan(pipeline, [(technique, config)], self.target, store=self.artifacts)
        if technique.name in made:
            minutes = getattr(pipeline.denoiser, TRAIN_MINUTES, None)
            artifact_index.remember(self.artifacts, key, technique.name, made[technique.name], minutes)
        return made

    def plan_identity(self, candidate: Candidate) -> str:
        """Which plan ``candidate`` runs: equal for candidates whose parameters differ but whose computation does
        not (autoaccel.plan.identity). A plan that cannot even be built is its own; evaluating it records why."""
        try:
            return plan_key(self.target, candidate.plan(self.space.techniques))
        except Exception:  # a technique refusing this candidate: the evaluation says so
            return candidate.key

    def evaluate(self, candidate: Candidate, samples: int | None = None) -> Measurement:
        """Scores ``candidate`` on ``samples`` images (default: the run's quality.samples)."""
        started = time.perf_counter()
        details: dict[str, Any] = {"candidate_key": candidate.key}
        judge = self.judge_for(samples)
        checkpoints = self.artifacts.folder / CHECKPOINTS_DIR if self.artifacts is not None else None
        try:
            with persisted_checkpoints(checkpoints):  # an interrupted training run continues in the next process
                with self.gate.shared():  # training and calibration, too, stay out of other trials' timing
                    pipeline = self.configured_pipeline(candidate)
                with self.gate.shared():
                    images = sample_in_chunks(pipeline, judge.seeds, judge.chunk_size)
                measurement = self._measure_pipeline(pipeline, images, details, judge)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # a technique's or library's failure is this trial's result
            measurement = Measurement(FAILED, details=details, failure=describe_failure(error))
            if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        measurement.details["seconds"] = round(time.perf_counter() - started, 3)
        return measurement

    def evaluate_reference(self) -> Measurement:
        """The reference call (the pipeline's default call, or ``target.reference``) on the same seeds: the
        report's reference row."""
        started = time.perf_counter()
        pipeline = reference_pipeline(self.target)
        with self.gate.shared():
            images = self.judge.reference_call_images()
        pipeline.set_schedule(execution_device(pipeline.denoiser))
        calls_per_step = 2 if pipeline.guided else 1
        pipeline.denoiser_calls = reference_calls(pipeline) * calls_per_step
        details = {"candidate_key": "reference", "reference": self.target.reference}
        measurement = self._measure_pipeline(pipeline, images, details, self.judge, reference_call=True)
        measurement.details["seconds"] = round(time.perf_counter() - started, 3)
        return measurement
