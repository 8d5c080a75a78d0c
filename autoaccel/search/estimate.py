"""What a search will take, estimated before it starts so the user can decide before waiting; the search prints
the estimate again beside the time it took when it ends.

Sampling is a number of denoiser calls at one of two batch sizes: a chunk of the run's seeds (the reference's
and every candidate's images) or the deployment batch (latency). Both are timed here, once each, on the target's
own denoiser, and multiplied out: the reference's images and its timing, the ODE reference, and the trials, each
sampling the run's images at its step count (the standard configurations at theirs, the others at the middle of
the space's range) and timing a few calls, and the latency confirmation before the report (the reference and up to
``CONFIRMED_PLANS`` front plans timed again).
Scoring a trial, and the features of the images FID is scored against, are estimated by timing the feature
extractors the judge runs on a few noise images. Not in it:
what trials spend training or calibrating models (unknown before they run; the estimate says so where the space
has such techniques), latencies reused between trials of one structure, images already in the cache, and building
the report (seconds: its bootstrap is bounded, ``autoaccel.metrics.bootstrap``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from autoaccel.measure.evaluator import LONG_CALL_STEPS
from autoaccel.metrics.features import ensemble_extractors
from autoaccel.metrics.quality import image_features
from autoaccel.reference.sampling import reference_pipeline
from autoaccel.search.ledger import reference_row
from autoaccel.targets.data_folder import image_shape
from autoaccel.targets.denoisers import execution_device, predict
from autoaccel.techniques.base import setting_with
from autoaccel.util.progress import duration

TRAINING_TECHNIQUES = ("distillation", "pruning", "quantization")  # trials whose model is made while they run
SCORING_PROBE_VALUES = 64 * 3 * 64 * 64  # pixel values the feature extractors are timed on (64 small images)
CONFIRMED_PLANS = 8  # front plans the latency confirmation is taken to time (fronts of tens of trials hold about 6)


@dataclass
class SearchEstimate:
    """Seconds per stage, in the order they run, and what the figure leaves out."""

    stages: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(self.stages.values())

    def describe(self) -> str:
        parts = ", ".join(f"{stage} {duration(seconds)}" for stage, seconds in self.stages.items())
        return f"about {duration(self.seconds)} ({parts})" + "".join(f"; {note}" for note in self.notes)


@dataclass(frozen=True)
class CallTimes:
    """Seconds of one unguided denoiser call on a chunk of the run's seeds, and on the deployment batch."""

    chunk: float
    batch: float


def time_calls(context) -> CallTimes:
    pipeline = reference_pipeline(context.target)
    pipeline.set_schedule(execution_device(context.target.denoiser))
    judge = context.judge
    chunk = _seconds_per_call(pipeline, judge.seeds.head(min(judge.chunk_size, judge.samples)))
    batch = _seconds_per_call(pipeline, judge.deployment_seeds(int(context.config.cost.batch_size)))
    return CallTimes(chunk, batch)


def _seconds_per_call(pipeline, seeds) -> float:
    """One denoiser call on ``seeds``, timed after an untimed one that pays one-time costs (unless that one was
    already long enough for them not to matter)."""
    batch = seeds.noise.to(execution_device(pipeline.denoiser), pipeline.denoiser.dtype)
    keywords = pipeline.conditions.keywords(seeds.class_labels, False, batch.device)
    timestep = pipeline.scheduler.timesteps[0]
    cuda = batch.device.type == "cuda"  # kernels run asynchronously: wait for them before reading the clock
    seconds = []
    with torch.no_grad():
        while len(seconds) < 2 and sum(seconds) < 2.0:
            started = time.perf_counter()
            predict(pipeline.denoiser, batch, timestep, keywords)
            if cuda:
                torch.cuda.synchronize(batch.device)
            seconds.append(time.perf_counter() - started)
    return seconds[-1]


def reference_calls_per_image(target) -> int:
    """Denoiser calls of the reference call for one image (a guided step counts two)."""
    pipeline = reference_pipeline(target)
    pipeline.set_schedule(execution_device(target.denoiser))
    return len(pipeline.scheduler.timesteps) * (2 if pipeline.guided else 1)


def chunk_count(judge) -> int:
    return -(-judge.samples // judge.chunk_size)


def estimate_search(context, trials: int, warm_starts: list[dict[str, Any]]) -> SearchEstimate:
    """What ``trials`` more trials of this study take, ``warm_starts`` (the standard configurations' params, in the
    order they run) first, with the stages the study has not measured yet."""
    target, judge, cost = context.target, context.judge, context.config.cost
    times = time_calls(context)
    chunks = chunk_count(judge)
    per_image = reference_calls_per_image(target)
    guided = 2 if reference_pipeline(target).guided else 1
    estimate = SearchEstimate()
    measured = bool(reference_row(context.ledger.study))
    scoring = scoring_seconds(context)  # one trial's images
    if not measured:
        estimate.stages["reference"] = times.chunk * per_image * chunks
        # the images FID is scored against (all the real images, or the reference call's) through every extractor,
        # once per study
        real = target.real_images
        estimate.stages["reference features"] = (
            scoring * (len(real) if real is not None else judge.samples) / judge.samples
        )
        timed_calls = 1 if per_image > LONG_CALL_STEPS else int(cost.warmup) + int(cost.repeats)
        estimate.stages["reference timing"] = timed_calls * per_image * times.batch
        ode_steps = min(target.ode_steps, target.num_train_timesteps)
        estimate.stages["ODE reference"] = times.chunk * ode_steps * guided * chunks
    guidable = target.conditions.paired_guidance
    planned = [_calls_per_image(params, guidable) for params in warm_starts[:trials]]
    planned += [_typical_calls_per_image(context.space, guidable)] * (trials - len(planned))
    if planned:
        timed_calls = int(cost.warmup) + int(cost.repeats)
        estimate.stages[f"{len(planned)} trials"] = sum(
            calls * (times.chunk * chunks + timed_calls * times.batch) + scoring for calls in planned
        )
    if planned and cost.get("confirm", True):
        # before the report: the reference (once, when the search times it with a single call) and the front's
        # plans, timed again side by side (``autoaccel.search.confirm``)
        timed_calls = int(cost.warmup) + int(cost.repeats)
        reference_calls = 1 if per_image > LONG_CALL_STEPS else timed_calls
        front = min(len(planned), CONFIRMED_PLANS) * statistics.median(planned) * timed_calls
        estimate.stages["latency confirmation"] = (reference_calls * per_image + front) * times.batch
    trained = [name for name in context.space.techniques if name in TRAINING_TECHNIQUES]
    if trained:
        estimate.notes.append(f"plus what trials spend on {', '.join(trained)} (training, calibration)")
    return estimate


def _calls_per_image(params: dict[str, Any], guidable: bool) -> float:
    steps_key, guidance_key = setting_with("steps_param"), setting_with("guidance_param")
    guided = guidable and float(params.get(guidance_key, 1.0)) != 1.0
    return float(params.get(steps_key, 10)) * (2 if guided else 1)


def _typical_calls_per_image(space, guidable: bool) -> float:
    """A trial the optimizer proposes: the middle of the space's step range (or its fixed steps), guided where
    the space searches or fixes a guidance scale on a model that takes one."""
    steps_key, guidance_key = setting_with("steps_param"), setting_with("guidance_param")
    steps = float(space.fixed.get(steps_key, 10))
    guided = guidable and float(space.fixed.get(guidance_key, 1.0)) != 1.0
    for dimension in space.dimensions:
        if dimension.name == steps_key and dimension.low is not None:
            steps = (float(dimension.low) + float(dimension.high)) / 2
        guided = guided or (guidable and dimension.name == guidance_key)
    return steps * (2 if guided else 1)


def scoring_seconds(context) -> float:
    """Scoring one trial's images, which is mostly computing their features under the target's extractor and
    the ensemble FID's extractors: each timed on a few noise images (up to 64, fewer large ones; after a warm-up
    call), scaled to the run's sample count."""
    samples, shape = context.judge.samples, image_shape(context.target)
    count = min(samples, 64, max(2, SCORING_PROBE_VALUES // math.prod(shape)))
    probe = torch.randint(0, 256, (count, *shape), dtype=torch.uint8)
    seconds = 0.0
    for extractor in [context.target.quality.extractor, *ensemble_extractors()]:
        image_features(probe[:2], extractor)
        started = time.perf_counter()
        image_features(probe, extractor)
        seconds += time.perf_counter() - started
    return seconds * samples / len(probe)
