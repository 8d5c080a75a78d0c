"""Calibration data for the model techniques, drawn from the target's own teacher: no dataset is ever needed.

Two kinds, both family-agnostic because they come from the sampling loop and the scheduler's own time variable:

- ``trajectory_calls``: the exact denoiser calls (positional and keyword arguments) the ODE reference makes along
  its trajectory, every step kept, guided calls with their doubled batch as they are. Replaying them
  (``replay``) is how quantization measures its error and calibrates activations, and how pruning measures
  which transformer blocks matter: the denoiser sees the inputs it sees in deployment, over the whole schedule.
- ``noised_batch``: clean ODE-reference samples noised at random points of the model's own time variable, with
  the prediction the model was trained to make there. Taylor importance needs a loss whose gradient is not zero
  on the unpruned model, which a teacher-output target cannot give (the teacher matches itself exactly), so
  pruning's Taylor importance uses this batch instead of the trajectory calls. Recovery distillation
  (``autoaccel.distill.recovery``) draws on both kinds.

Both come from seeds of their own (never the seeds candidates are scored on) and are cached per target content.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from autoaccel.pipeline.seeds import make_seed_batch
from autoaccel.reference.sampling import ode_reference_pipeline
from autoaccel.targets.denoisers import execution_device
from autoaccel.techniques.base import SearchWork, guided_rows
from autoaccel.techniques.timesteps import TimestepsConfig, apply_timesteps
from autoaccel.util.interrupts import raise_if_cancelled
from autoaccel.util.progress import Progress

CALIBRATION_STEPS = 20
TRAJECTORY_SEED_OFFSET = 20_000  # trajectory seeds: apart from the scoring seeds and from noised batches'
NOISED_SEED_OFFSET = 10_000
CLEAN_SAMPLE_STEPS = 25  # ODE-reference steps kept for clean samples: accurate enough to noise again
REPLAY_CHUNK = 256

Call = tuple[tuple, dict[str, Any]]

_TRAJECTORIES: OrderedDict[tuple, list[Call]] = OrderedDict()
_CLEAN_SAMPLES: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
_ALPHAS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_LOCK = threading.Lock()
_CACHE_SIZE = 8


def cached(cache: OrderedDict, key: tuple, compute: Callable[[], Any]):
    """``cache[key]``, computed once (outside the lock: calibration runs for seconds) and kept among the last few."""
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = compute()
    with _LOCK:
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


# ------------------------------------------------------------------------------ calls along the teacher's trajectory


def trajectory_calls(target, samples: int, seed: int, steps: int = CALIBRATION_STEPS) -> list[Call]:
    """The denoiser's calls, ``(args, kwargs)`` on the CPU, along the ODE reference at ``steps`` uniform steps.

    The reference runs on a seed batch of ``samples`` conditioned as the target is (classes or prompts, balanced),
    at its default guidance: a guided call holds both branches (``2 * samples`` rows), as deployment runs it.
    """
    key = (target.content_hash, samples, seed, steps)
    return cached(_TRAJECTORIES, key, lambda: _capture_trajectory(target, samples, seed, steps))


def _capture_trajectory(target, samples: int, seed: int, steps: int) -> list[Call]:
    pipeline = ode_reference_pipeline(target)
    apply_timesteps(pipeline, TimestepsConfig(steps=steps), target)
    pipeline.vae = None  # the calls are what is wanted, not the decoded images
    seeds = make_seed_batch(target.sample_shape, samples, TRAJECTORY_SEED_OFFSET + seed, target.condition_count)
    calls: list[Call] = []

    def capture(module, args, kwargs):
        previous = calls[-1][1] if calls else {}
        kept = {name: _kept(value, previous.get(name)) for name, value in kwargs.items()}
        calls.append((tuple(_kept(value, None) for value in args), kept))

    handle = pipeline.denoiser.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with Progress("calibration trajectory", samples, announce=False) as progress:
            pipeline(seeds.noise, seeds.class_labels, on_step=progress.steps(0, samples))
    finally:
        handle.remove()
    return calls


def _kept(value: Any, previous: Any) -> Any:
    """A CPU copy of one argument; a tensor equal to the previous call's (prompt embeddings, labels) is shared
    with it rather than stored once per step."""
    if isinstance(value, torch.Tensor):
        copied = value.detach().to("cpu", copy=True)
        if isinstance(previous, torch.Tensor) and previous.shape == copied.shape and torch.equal(previous, copied):
            return previous
        return copied
    if isinstance(value, dict):
        previous = previous if isinstance(previous, dict) else {}
        return {name: _kept(item, previous.get(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_kept(item, None) for item in value)
    return value


def call_size(call: Call) -> int:
    """Rows in a call: the batch of its sample (the first positional argument)."""
    args, kwargs = call
    sample = args[0] if args else next(iter(kwargs.values()))
    return len(sample)


def replay(denoiser: torch.nn.Module, calls: list[Call], chunk: int = REPLAY_CHUNK) -> torch.Tensor:
    """The denoiser's outputs on ``calls``, concatenated on the CPU; consecutive calls are joined into batches of
    at most ``chunk`` rows. A learned-variance half is dropped, as the sampling loop drops it."""
    device = next(denoiser.parameters()).device
    outputs = []
    with torch.no_grad():
        for args, kwargs in _batches(calls, chunk):
            raise_if_cancelled()  # calibration of an interrupted run stops within a batch
            outputs.append(call_output(denoiser, (to_device(args, device), to_device(kwargs, device))).cpu())
    return torch.cat(outputs)


def call_output(denoiser: torch.nn.Module, call: Call) -> torch.Tensor:
    """The denoiser's prediction on one call, a learned-variance half dropped as the sampling loop drops it."""
    args, kwargs = call
    output = denoiser(*args, **kwargs)
    output = output.sample if hasattr(output, "sample") else output[0]
    channels = args[0].shape[1]
    return output[:, :channels] if output.shape[1] == 2 * channels else output


def _batches(calls: list[Call], chunk: int):
    """Calls joined along the batch into pieces of at most ``chunk`` rows (a larger call is split)."""
    pending: list[Call] = []
    rows = 0
    for call in calls:
        for start in range(0, call_size(call), chunk):
            piece = _rows(call, start, start + chunk)
            if pending and rows + call_size(piece) > chunk:
                yield join_calls(pending)
                pending, rows = [], 0
            pending.append(piece)
            rows += call_size(piece)
    if pending:
        yield join_calls(pending)


def _rows(call: Call, start: int, stop: int) -> Call:
    size = call_size(call)
    if start == 0 and stop >= size:
        return call
    return call_rows(call, slice(start, stop))


def call_rows(call: Call, rows: slice | torch.Tensor) -> Call:
    """The rows ``rows`` (a slice or an index tensor) of a call: per-row tensors cut, shared ones kept."""
    size = call_size(call)

    def cut(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == size:
            return value[rows]
        if isinstance(value, dict):
            return {name: cut(item) for name, item in value.items()}
        return value

    args, kwargs = call
    return tuple(cut(value) for value in args), cut(kwargs)


def join_calls(calls: list[Call]) -> Call:
    """One call holding the rows of ``calls``: per-row tensors concatenated, everything else from the first."""
    if len(calls) == 1:
        return calls[0]
    sizes = [call_size(call) for call in calls]

    def joined(values: list):
        first = values[0]
        if isinstance(first, torch.Tensor) and first.dim() > 0 and len(first) == sizes[0]:
            return torch.cat(values)
        if isinstance(first, dict):
            return {name: joined([value[name] for value in values]) for name in first}
        return first

    args = tuple(joined([call[0][index] for call in calls]) for index in range(len(calls[0][0])))
    return args, joined([call[1] for call in calls])


def to_device(value: Any, device) -> Any:
    """A call's arguments (tensors, nested in tuples and dicts) on ``device``; the rest as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {name: to_device(item, device) for name, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_device(item, device) for item in value)
    return value


# ------------------------------------------------------------------- noised teacher samples with training targets


@dataclass
class NoisedBatch:
    """Samples noised at ``timestep`` (the model's own time variable), their conditioning keyword arguments for
    ``predict`` (which adds the arguments every call of the architecture takes), and ``wanted``: what the model
    was trained to predict there (noise, v, x0 or velocity)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    keywords: dict[str, Any]
    wanted: torch.Tensor

    def __len__(self) -> int:
        return len(self.sample)

    def select(self, index: torch.Tensor) -> NoisedBatch:
        """The rows ``index`` (per-sample keyword tensors indexed with them, shared ones kept)."""
        size = len(self)

        def pick(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == size:
                return value[index.to(value.device)]
            return value

        keywords = {name: pick(value) for name, value in self.keywords.items()}
        return NoisedBatch(pick(self.sample), pick(self.timestep), keywords, pick(self.wanted))


def noised_batch(target, count: int, generator: torch.Generator, device=None) -> NoisedBatch:
    """``count`` clean ODE-reference samples (latents under a VAE) noised at uniformly random points of the model's
    time variable: DDPM-family ``sqrt(abar) x0 + sqrt(1 - abar) noise`` at an integer timestep, flow
    ``(1 - s) x0 + s noise`` at timestep ``s * num_train_timesteps``. Conditioned on each sample's own condition
    (no guidance branch: the conditional prediction is what is trained)."""
    device = device if device is not None else execution_device(target.denoiser)
    clean, labels = clean_samples(target, count, NOISED_SEED_OFFSET + int(generator.initial_seed()))
    return noised(target, clean.to(device), labels, generator)


def noised(target, clean: torch.Tensor, labels, generator: torch.Generator) -> NoisedBatch:
    """``clean`` samples noised at uniformly random points of the model's time variable, drawn from
    ``generator`` (``noised_batch``'s noising, for callers that draw fresh noise every step)."""
    device, count = clean.device, len(clean)
    keywords = target.conditions.keywords(labels, False, device)
    if target.schedule.places_sigmas:
        sigma = torch.rand(count, generator=generator).to(device)
        noise = torch.randn(clean.shape, generator=generator).to(device)
        s = sigma.view(-1, 1, 1, 1)
        sample = (1 - s) * clean + s * noise
        return NoisedBatch(sample, sigma * target.num_train_timesteps, keywords, noise - clean)
    alphas = _alphas_cumprod(target).to(device)
    timesteps = torch.randint(0, len(alphas), (count,), generator=generator).to(device)
    noise = torch.randn(clean.shape, generator=generator).to(device)
    abar = alphas[timesteps].view(-1, 1, 1, 1)
    sample = abar.sqrt() * clean + (1 - abar).sqrt() * noise
    prediction_type = target.scheduler_config.get("prediction_type", "epsilon")
    wanted = {
        "epsilon": noise,
        "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * clean,
        "sample": clean,
    }.get(prediction_type, noise)
    return NoisedBatch(sample, timesteps, keywords, wanted)


def _alphas_cumprod(target) -> torch.Tensor:
    """The reference sampler's ``alphas_cumprod``, built once per target: recovery noises a batch every step."""
    return cached(_ALPHAS, (target.content_hash,), lambda: ode_reference_pipeline(target).scheduler.alphas_cumprod)


def trajectory_work(target, samples: int, seed: int, steps: int = CALIBRATION_STEPS) -> SearchWork:
    """What ``trajectory_calls`` computes, once per model and settings: the ODE reference's calls on ``samples``
    seeds at ``steps`` steps, both branches where it guides (``SearchWork.shared``)."""
    rows = samples * steps * guided_rows(target)
    return SearchWork(
        shared={f"teacher trajectories ({samples}, {steps} steps, seed {seed})": SearchWork(teacher=rows)}
    )


def clean_sample_work(target, count: int, seed: int) -> SearchWork:
    """What ``clean_samples`` computes, once per model and settings: ``count`` ODE-reference samples at about
    ``CLEAN_SAMPLE_STEPS`` of the reference's ODE steps."""
    ode_steps = min(int(getattr(target, "ode_steps", 200)), int(target.num_train_timesteps))
    steps = len(range(0, ode_steps, max(1, ode_steps // CLEAN_SAMPLE_STEPS)))
    rows = count * steps * guided_rows(target)
    return SearchWork(shared={f"teacher samples ({count}, seed {seed})": SearchWork(teacher=rows)})


def clean_samples(target, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``count`` clean ODE-reference samples on seed ``seed`` with their condition indices, cached per target."""
    return cached(_CLEAN_SAMPLES, (target.content_hash, count, seed), lambda: _clean(target, count, seed))


def _clean(target, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ODE reference's final samples (before decoding) on ``count`` seeds, with their condition indices."""
    seeds = make_seed_batch(target.sample_shape, count, seed, target.condition_count)
    pipeline = ode_reference_pipeline(target)
    pipeline.vae = None
    plan = pipeline.plan
    if plan.sigmas:
        plan.sigmas = plan.sigmas[:: max(1, len(plan.sigmas) // CLEAN_SAMPLE_STEPS)]
    else:
        plan.timesteps = plan.timesteps[:: max(1, len(plan.timesteps) // CLEAN_SAMPLE_STEPS)]
    clean = pipeline(seeds.noise, seeds.class_labels).images
    return clean, seeds.class_labels
