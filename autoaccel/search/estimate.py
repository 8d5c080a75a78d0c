"""What a search will take, estimated before it starts so the user can decide before waiting; the search prints
the estimate again beside the time it took when it ends.

Everything is a number of denoiser calls times a timed call, on the target's own denoiser. Sampling is timed at
two batch sizes, once each: a chunk of the run's seeds (the reference's and every candidate's images) and the
deployment batch (latency). Training is one forward and backward pass on a few rows of the same denoiser, timed
against the same call without a gradient (``SearchTimings.trained_ratio``). Scoring is the judge's feature
extractors timed on a few noise images. These are multiplied out over:

- the reference's images and its timing, the features of the images FID is scored against, the ODE reference;
- the trials, each sampling and scoring its images at every fidelity level it is expected to reach
  (``fidelity.levels``; a level above the first is reached by every candidate until ``MIN_CLIMBS`` have climbed,
  then by ``PROMOTED_SHARE`` of them: ``reports/bench/optimizers.md`` (c) measured 12 of 40 at z=0, 24 of 40 at
  z=1), at its step count (the standard configurations at theirs, the others at the middle of the space's range),
  and timing a few calls once;
- what the trials train and calibrate: every technique that does either declares it in denoiser rows
  (``Technique.search_work``); ``WORK_DRAWS`` candidates drawn from the space give the mean per trial, training
  done in increments where ``fidelity.train_shares`` makes iterations a fidelity, and the data that is made once
  per model (teacher samples, trajectories) counted once;
- the latency confirmation before the report (the reference and up to ``CONFIRMED_PLANS`` front plans timed
  again).

``budget.max_minutes`` caps the trials' part (the loop starts no trial after it). The figure is given per
candidate and for the run. Not in it: torch.compile's compile time (a few seconds to minutes per graph shape,
once per process), latencies reused between trials of one structure and images already in the cache (both make
the run shorter), a pruned or quantized model's calls counted at the full model's speed, training counted at the
precision the model is loaded in (students train a float32 copy), and building the report (seconds: its bootstrap
is bounded, ``autoaccel.metrics.bootstrap``).

A new study whose user left ``fidelity.levels`` unset scores on a ladder where this estimate on one level passes
an hour (``autoaccel.search.levels``).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from autoaccel.errors import ConfigError
from autoaccel.measure.evaluator import LONG_CALL_STEPS
from autoaccel.metrics.features import ensemble_extractors
from autoaccel.metrics.quality import image_features
from autoaccel.plan.candidate import Candidate
from autoaccel.reference.sampling import reference_pipeline
from autoaccel.search.fidelity import MIN_CLIMBS, with_train_share
from autoaccel.search.ledger import reference_row
from autoaccel.space.spaces import SearchSpace, active_params
from autoaccel.targets.data_folder import image_shape
from autoaccel.targets.denoisers import decode, execution_device, predict
from autoaccel.techniques.base import SearchWork, candidate_work, registered_techniques, setting_with
from autoaccel.util.progress import duration

SCORING_PROBE_VALUES = 64 * 3 * 64 * 64  # pixel values the feature extractors are timed on (64 small images)
CONFIRMED_PLANS = 8  # front plans the latency confirmation is taken to time (fronts of tens of trials hold about 6)
TIMED_CALLS = 3  # timed calls of the denoiser at each batch size, the fastest kept ...
TIMING_S = 2.0  # ... while they take less than this together
TRAINING_PROBE_ROWS = 2  # rows of the timed training pass: a large model's backward fits in memory at this size
ASSUMED_TRAINED_RATIO = 3.0  # a training row over a plain one where the pass could not be timed (backward ~ 2x)
WORK_DRAWS = 64  # candidates drawn from the space to average what a trial trains and calibrates
WORK_SEED = 0
PROMOTED_SHARE = 0.3  # candidates reaching a level above the first at fidelity.z=0 (bench: 12 of 40)
PROMOTED_SHARE_OPTIMISTIC = 0.6  # at fidelity.z > 0 (bench, z=1: 24 of 40)
ONCE_PER_MODEL = "made once per model"  # the stage of shared work: teacher data, calibration passes, kept models


@dataclass
class SearchEstimate:
    """Seconds per stage, in the order they run, one typical candidate's seconds per part, and what the figure
    leaves out or assumes."""

    stages: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    candidate: dict[str, float] = field(default_factory=dict)  # a typical trial, every level it reaches
    trials: int = 0
    levels: list[int] = field(default_factory=list)
    timings: SearchTimings | None = None  # what it multiplied: reused by a second estimate in the same process

    @property
    def seconds(self) -> float:
        return sum(self.stages.values())

    @property
    def candidate_seconds(self) -> float:
        return sum(self.candidate.values())

    def describe(self) -> str:
        parts = ", ".join(f"{stage} {duration(seconds)}" for stage, seconds in self.stages.items() if seconds > 0)
        text = f"about {duration(self.seconds)} for {self.trials} trials ({parts})"
        if self.candidate:
            shares = ", ".join(f"{part} {duration(seconds)}" for part, seconds in self.candidate.items() if seconds)
            text += f"; a candidate about {duration(self.candidate_seconds)} ({shares})"
        return text + "".join(f"; {note}" for note in self.notes)


@dataclass(frozen=True)
class SearchTimings:
    """What the estimate multiplies: seconds of one unguided denoiser call on a chunk of the run's seeds
    (``chunk_rows`` rows) and on the deployment batch, a training row's seconds over a plain row's, the seconds of
    scoring ``samples`` images, and of decoding one image with the model's VAE (0 for a pixel-space model)."""

    chunk: float
    batch: float
    chunk_rows: int
    trained_ratio: float
    scoring: float
    samples: int
    decode: float = 0.0

    @property
    def row(self) -> float:
        """Seconds of one row of a denoiser call without a gradient, at the chunk's batch size."""
        return self.chunk / max(self.chunk_rows, 1)

    def work_seconds(self, work: SearchWork) -> tuple[float, float]:
        """(training, calibration) seconds of ``work``'s own part (what it shares apart)."""
        training = (work.trained * self.trained_ratio + work.teacher) * self.row + work.decoded * self.decode
        return training, work.calibration * self.row


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


def time_search(context, trains: bool) -> SearchTimings:
    """Times what the estimate multiplies, in seconds; the training pass only where the space ``trains``."""
    times = time_calls(context)
    judge = context.judge
    ratio = trained_ratio(context) if trains else ASSUMED_TRAINED_RATIO
    rows = min(judge.chunk_size, judge.samples)
    scoring, decode = scoring_seconds(context), decode_seconds(context)
    return SearchTimings(times.chunk, times.batch, rows, ratio, scoring, judge.samples, decode)


def decode_seconds(context) -> float:
    """Seconds of decoding one image with the model's VAE, timed on ``TRAINING_PROBE_ROWS`` latents after an
    untimed decode; 0 for a pixel-space model."""
    vae = context.target.vae
    if vae is None:
        return 0.0
    seeds = context.judge.seeds.head(min(TRAINING_PROBE_ROWS, context.judge.samples))
    latents = seeds.noise.to(context.target.denoiser.device)
    cuda = latents.device.type == "cuda"
    seconds = 0.0
    with torch.no_grad():
        for _ in range(2):
            started = time.perf_counter()
            decode(vae, latents)
            if cuda:
                torch.cuda.synchronize(latents.device)
            seconds = time.perf_counter() - started
    return seconds / len(latents)


def _seconds_per_call(pipeline, seeds) -> float:
    """One denoiser call on ``seeds``: the fastest of up to ``TIMED_CALLS`` timed calls (what other processes on
    the machine add to a call is noise, not its cost) within about ``TIMING_S`` seconds, after an untimed one that
    pays one-time costs (unless that one was already long enough for them not to matter)."""
    batch = seeds.noise.to(execution_device(pipeline.denoiser), pipeline.denoiser.dtype)
    keywords = pipeline.conditions.keywords(seeds.class_labels, False, batch.device)
    timestep = pipeline.scheduler.timesteps[0]
    cuda = batch.device.type == "cuda"  # kernels run asynchronously: wait for them before reading the clock
    seconds: list[float] = []
    with torch.no_grad():
        while len(seconds) < 1 + TIMED_CALLS and (len(seconds) < 2 or sum(seconds) < TIMING_S):
            started = time.perf_counter()
            predict(pipeline.denoiser, batch, timestep, keywords)
            if cuda:
                torch.cuda.synchronize(batch.device)
            seconds.append(time.perf_counter() - started)
            if len(seconds) == 1 and seconds[0] >= TIMING_S:
                break
    return min(seconds[1:] or seconds)


def trained_ratio(context) -> float:
    """A training row's seconds over a plain row's: one forward and backward pass of the target's denoiser on
    ``TRAINING_PROBE_ROWS`` rows (every parameter's gradient computed, then dropped, and the parameters left as
    they were), over the same call without a gradient; ``ASSUMED_TRAINED_RATIO`` where it does not fit in memory."""
    pipeline = reference_pipeline(context.target)
    pipeline.set_schedule(context.target.denoiser.device)
    seeds = context.judge.seeds.head(min(TRAINING_PROBE_ROWS, context.judge.samples))
    denoiser = pipeline.denoiser
    batch = seeds.noise.to(denoiser.device, denoiser.dtype)
    keywords = pipeline.conditions.keywords(seeds.class_labels, False, batch.device)
    timestep = pipeline.scheduler.timesteps[0]
    parameters = list(denoiser.parameters())
    wanted = [parameter.requires_grad for parameter in parameters]
    cuda = batch.device.type == "cuda"
    seconds = []
    try:
        for parameter in parameters:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            for _ in range(2):  # the first pays one-time costs
                started = time.perf_counter()
                predict(denoiser, batch, timestep, keywords).float().pow(2).mean().backward()
                if cuda:
                    torch.cuda.synchronize(batch.device)
                seconds.append(time.perf_counter() - started)
    except torch.OutOfMemoryError:
        seconds = []
    finally:
        for parameter, before in zip(parameters, wanted):
            parameter.grad = None
            parameter.requires_grad_(before)
    if not seconds:  # the pass did not fit: what it held is given back before the search starts
        if cuda:
            torch.cuda.empty_cache()
        return ASSUMED_TRAINED_RATIO
    plain = _seconds_per_call(pipeline, seeds)
    return max(1.0, seconds[-1] / plain) if plain > 0 else ASSUMED_TRAINED_RATIO


def reference_calls_per_image(target) -> int:
    """Denoiser calls of the reference call for one image (a guided step counts two)."""
    pipeline = reference_pipeline(target)
    pipeline.set_schedule(execution_device(target.denoiser))
    return len(pipeline.scheduler.timesteps) * (2 if pipeline.guided else 1)


def chunk_count(judge) -> int:
    return -(-judge.samples // judge.chunk_size)


def reach_shares(levels: list[int], trials: int, z: float) -> list[float]:
    """The expected share of ``trials`` candidates scored at each level: all at the first; above it, every
    candidate until ``MIN_CLIMBS`` have climbed, then ``PROMOTED_SHARE`` of them (more with a promotion margin)."""
    if not levels:
        return []
    promoted = PROMOTED_SHARE_OPTIMISTIC if z > 0 else PROMOTED_SHARE
    climbing = min(trials, MIN_CLIMBS) + promoted * max(0, trials - MIN_CLIMBS)
    return [1.0] + [climbing / trials if trials else promoted] * (len(levels) - 1)


def estimate_search(
    context,
    trials: int,
    warm_starts: list[dict[str, Any]],
    levels: list[int] | None = None,
    timings: SearchTimings | None = None,
) -> SearchEstimate:
    """What ``trials`` more trials of this study take, ``warm_starts`` (the standard configurations' params, in the
    order they run) first, with the stages the study has not measured yet, scored on fidelity ``levels`` (default:
    the run's ``fidelity.levels``; [] is one level). ``timings``: those already taken in this process."""
    target, judge, config = context.target, context.judge, context.config
    cost = config.cost
    if levels is None:
        levels = list(config.fidelity.get("levels") or [])
    draws = typical_work(context.space, target, config, levels)
    if timings is None:
        trains = any(work.trained for work in [*draws.per_level, *draws.shared.values()])
        timings = time_search(context, trains=trains)
    chunks = chunk_count(judge)
    per_image = reference_calls_per_image(target)
    guided = 2 if reference_pipeline(target).guided else 1
    estimate = SearchEstimate(trials=trials, levels=list(levels))
    scoring_per_image = timings.scoring / timings.samples
    if not reference_row(context.ledger.study):
        estimate.stages["reference"] = timings.chunk * per_image * chunks + timings.decode * judge.samples
        # the images FID is scored against (all the real images, or the reference call's) through every extractor,
        # once per study
        real = target.real_images
        estimate.stages["reference features"] = scoring_per_image * (len(real) if real is not None else judge.samples)
        timed_calls = 1 if per_image > LONG_CALL_STEPS else int(cost.warmup) + int(cost.repeats)
        estimate.stages["reference timing"] = timed_calls * per_image * timings.batch
        ode_steps = min(target.ode_steps, target.num_train_timesteps)
        estimate.stages["ODE reference"] = timings.chunk * ode_steps * guided * chunks
    guidable = target.conditions.paired_guidance
    planned = [_calls_per_image(params, guidable) for params in warm_starts[:trials]]
    planned += [_typical_calls_per_image(context.space, guidable)] * (trials - len(planned))
    timed_calls = int(cost.warmup) + int(cost.repeats)
    if planned:
        counts = levels or [judge.samples]
        reached = reach_shares(counts, len(planned), float(config.fidelity.get("z") or 0.0))
        images = sum(share * count for share, count in zip(reached, counts))  # a typical trial's, all levels
        sampling = sum(calls * timings.row * images for calls in planned) / len(planned) + timings.decode * images
        timing = sum(calls * timed_calls * timings.batch for calls in planned) / len(planned)
        training, calibration = timings.work_seconds(draws.expected(reached))
        estimate.candidate = {
            "sampling": sampling,
            "timing": timing,
            "scoring": scoring_per_image * images,
            "training": training,
            "calibration": calibration,
        }
        share = _budget_share(config, estimate.candidate_seconds, trials)
        run_trials = trials * share
        estimate.stages[f"{trials} trials"] = run_trials * (sampling + timing + scoring_per_image * images)
        estimate.stages["training"] = run_trials * training
        estimate.stages["calibration"] = run_trials * calibration
        estimate.stages[ONCE_PER_MODEL] = sum(
            sum(timings.work_seconds(work)) * draws.made_by(name, run_trials) for name, work in draws.shared.items()
        )
        if share < 1.0:
            estimate.notes.append(
                f"budget.max_minutes={config.budget.max_minutes:g} stops starting trials after "
                f"{duration(float(config.budget.max_minutes) * 60)}: about {math.ceil(run_trials)} of them run"
            )
        if len(levels) > 1:
            climbing = ", ".join(f"{share:.0%} reach {count}" for share, count in zip(reached[1:], counts[1:]))
            estimate.notes.append(f"fidelity levels {list(levels)}: every candidate scored on {counts[0]}, {climbing}")
    if planned and cost.get("confirm", True):
        # before the report: the reference (once, when the search times it with a single call) and the front's
        # plans, timed again side by side (``autoaccel.search.confirm``)
        reference_calls = 1 if per_image > LONG_CALL_STEPS else timed_calls
        front = min(len(planned), CONFIRMED_PLANS) * statistics.median(planned) * timed_calls
        estimate.stages["latency confirmation"] = (reference_calls * per_image + front) * timings.batch
    estimate.timings = timings
    return estimate


def _budget_share(config, candidate_seconds: float, trials: int) -> float:
    """The share of ``trials`` that ``budget.max_minutes`` leaves room for (the loop starts none after it; the last
    one started still ends)."""
    minutes = config.budget.get("max_minutes")
    if minutes is None or trials == 0 or candidate_seconds <= 0:
        return 1.0
    return min(1.0, (math.floor(float(minutes) * 60 / candidate_seconds) + 1) / trials)


@dataclass(frozen=True)
class TypicalWork:
    """What the candidates drawn from the space train and calibrate, on average: ``per_level``, one candidate's
    own work when scored at each fidelity level (its training at that level's share), ``shared``, the data and
    models made once per model that the drawn candidates use, and ``used``, the share of draws that use each."""

    per_level: list[SearchWork]
    shared: dict[str, SearchWork]
    used: dict[str, float] = field(default_factory=dict)

    def made_by(self, name: str, trials: float) -> float:
        """The chance that ``trials`` trials proposed like the draws make the shared work ``name`` at least once."""
        return 1.0 - (1.0 - self.used.get(name, 1.0)) ** trials

    def expected(self, reached: list[float]) -> SearchWork:
        """A trial's own work when it reaches each level with the share ``reached``: a promoted candidate's training
        continues from the level below, so each level adds its increment; calibration is done once."""
        if not self.per_level:
            return SearchWork()
        first = self.per_level[0]
        trained, teacher = first.trained, first.teacher
        for share, below, above in zip(reached[1:], self.per_level, self.per_level[1:]):
            trained += share * max(0.0, above.trained - below.trained)
            teacher += share * max(0.0, above.teacher - below.teacher)
        return SearchWork(trained, teacher, first.calibration, first.decoded)


def typical_work(space: SearchSpace, target, config, levels: list[int]) -> TypicalWork:
    """``WORK_DRAWS`` candidates drawn uniformly from ``space`` (seeded), each one's work at every level (its
    training share where ``fidelity.train_shares`` sets one); cheap: no model runs."""
    working = {technique.name for technique in registered_techniques() if technique.search_work is not None}
    if not working & set(space.techniques):
        return TypicalWork([], {})
    shares = [float(share) for share in config.fidelity.get("train_shares") or []] or [1.0] * max(len(levels), 1)
    guidable = target.conditions.guidable
    generator = random.Random(WORK_SEED)
    sums = [SearchWork() for _ in shares]
    shared: dict[str, SearchWork] = {}
    users: dict[str, int] = {}
    drawn = 0
    for _ in range(WORK_DRAWS):
        try:
            params = space.complete(active_params(space, lambda dimension: _draw(dimension, generator)))
        except ConfigError:  # a point the space refuses: the optimizer's trial would fail before it trains
            continue
        drawn += 1
        candidate, calls = Candidate.from_params(params), _calls_per_image(params, guidable)
        names: set[str] = set()
        for index, share in enumerate(shares):
            work = candidate_work(with_train_share(candidate, share).as_dict, space.techniques, target, calls)
            sums[index] = sums[index] + work.scaled(1.0)
            shared.update(work.shared)
            names.update(work.shared)
        for name in names:
            users[name] = users.get(name, 0) + 1
    mean = [work.scaled(1 / max(drawn, 1)) for work in sums]
    return TypicalWork(mean, shared, {name: count / max(drawn, 1) for name, count in users.items()})


def _draw(dimension, generator: random.Random) -> Any:
    """A uniform draw of one dimension (log-uniform on a log scale)."""
    if dimension.kind == "categorical":
        return generator.choice(list(dimension.choices))
    low, high = float(dimension.low), float(dimension.high)
    if dimension.log and low > 0:
        value = math.exp(generator.uniform(math.log(low), math.log(high)))
    else:
        value = generator.uniform(low, high)
    return min(int(high), max(int(low), round(value))) if dimension.kind == "int" else value


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
