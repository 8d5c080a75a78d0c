"""Latency, peak memory and energy of one sampling call at the deployment batch size.

Median of repeated timed calls after warm-up. On CUDA: CUDA events, ``max_memory_allocated`` and the NVML
energy counter. On CPU: ``perf_counter``, the process's peak resident memory sampled during the calls (CUDA's
allocator statistics are zero there and tracemalloc cannot see tensors), and no energy.

The process's peak includes the interpreter, the libraries and everything else the process holds, so beside it
``model_memory_mb`` is the model's own need: see ``model_memory_bytes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from autoaccel.errors import TechniqueError
from autoaccel.front.objectives import CPU_RSS, CUDA_ALLOCATED
from autoaccel.measure.energy import EnergyMeter
from autoaccel.measure.size import plain_tensors, tensor_bytes
from autoaccel.pipeline.seeds import SeedBatch
from autoaccel.targets.denoisers import execution_device, offloaded
from autoaccel.techniques.base import COMPILE_SECONDS


@dataclass(frozen=True)
class CostMeasurement:
    latency_ms: float  # median wall time of one call producing ``batch_size`` images
    latency_iqr_ms: float
    peak_memory_mb: float
    memory_kind: str  # "cuda-allocated" or "cpu-rss"
    model_memory_mb: float  # the unet's weights plus one call's peak activations (``model_memory_bytes``)
    energy_j: float  # per call; NaN where NVML is unavailable
    batch_size: int
    repeats: int
    device: str
    threads: int
    # median time per stage of the timed calls (encode: the text encoder(s); denoise: every denoiser step;
    # decode: the VAE), from the same calls as ``latency_ms``
    stage_ms: dict[str, float] = field(default_factory=dict)
    method: str = "median"  # "median" of repeats, or "single call" for a long reference call
    # whether the calls were timed holding the device lock every autoaccel process of this machine takes
    # (``autoaccel.measure.gate``); False: only this process's other trials were kept out
    exclusive: bool = False
    # CPU cores' worth of work other processes did while the calls were timed (a CPU device; NaN on a GPU): load
    # that no lock keeps out (another program, a worker with another lock folder)
    background_cores: float = math.nan

    def as_dict(self) -> dict:
        return asdict(self)


class _RssPeakSampler:
    """Samples the process's resident memory every few milliseconds in a background thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak_bytes = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            time.sleep(self._interval_s)

    def __enter__(self) -> _RssPeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class OtherLoad:
    """CPU cores' worth of work every other process of the machine did during the block: the machine's busy CPU
    time less this process's own, over the wall time (psutil; rounded to 0.01)."""

    def __enter__(self) -> OtherLoad:
        import psutil

        self._process = psutil.Process()
        self._started = (time.perf_counter(), _busy(psutil.cpu_times()), _own(self._process))
        self.cores = math.nan
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        wall, busy, own = time.perf_counter(), _busy(psutil.cpu_times()), _own(self._process)
        elapsed = wall - self._started[0]
        if elapsed > 0:
            other = (busy - self._started[1]) - (own - self._started[2])
            self.cores = round(max(0.0, other / elapsed), 2)


def _busy(times) -> float:
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)  # guest: in user


def _own(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def structure_id(key: str) -> str:
    """A short, stable name for a cost structure (``Evaluator.structure_key``): trials that share it share one
    latency, so a latency confirmed for one plan holds for all of them."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


SINGLE_CALL = "single call"  # the latency method of a reference call hundreds of steps long: timed once


class _LiveTensorPeak(TorchDispatchMode):
    """Peak total size of the tensors the operators run inside it produce and that are still alive.

    Tensors whose storage existed before (weights, inputs; ``known``) are not counted; a storage leaves the total
    when the last tensor on it is freed (checked after every operator). Scratch memory a kernel allocates and
    frees inside one operator is not seen.
    """

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self._known = known
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            self.live_bytes -= self._live.pop(key)[1]
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return output

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._known or key in self._live or storage.nbytes() == 0:
            return
        self._live[key] = (StorageWeakRef(storage), storage.nbytes())
        self.live_bytes += storage.nbytes()


def weight_bytes(unet: torch.nn.Module) -> int:
    """Parameter and buffer bytes of the module as it runs (a tensor shared by two names counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*unet.parameters(), *unet.buffers()]:
        for data in plain_tensors(tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor):
            seen.setdefault(id(data) if data.is_meta else data.data_ptr(), tensor_bytes(data))
    return sum(seen.values())


class _FirstUnetCall(Exception):
    """Stops a sampling call at its first unet call, once that call's inputs are captured."""


def first_unet_inputs(pipeline, seeds: SeedBatch) -> tuple[tuple, dict[str, Any]]:
    """The exact arguments the pipeline passes the unet at its first step on ``seeds`` (the deployment batch;
    doubled under guidance), without running the remaining steps."""
    captured: dict[str, Any] = {}

    def capture(module, args, kwargs):
        captured.update(args=args, kwargs=kwargs)
        raise _FirstUnetCall

    handle = pipeline.denoiser.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        timed_call(pipeline, seeds, on_cuda=False)
    except _FirstUnetCall:
        pass
    finally:
        handle.remove()
    return captured["args"], captured["kwargs"]


def model_memory_bytes(pipeline, seeds: SeedBatch) -> int:
    """The memory the model itself needs for one unet call at the deployment batch size: the unet's parameter
    and buffer bytes as it runs, plus the peak bytes of the activations one call holds at once, on the exact
    inputs the pipeline gives the unet (``first_unet_inputs``).

    On CUDA the activation peak is ``torch.cuda.max_memory_allocated`` during the call minus what was allocated
    before it. On CPU there are no allocator statistics: it is the peak total size of live tensors produced by
    the call's operators, tracked operator by operator (``_LiveTensorPeak``). Unlike ``peak_memory_mb`` on a
    CPU (the process's resident peak), it leaves out the interpreter, the libraries and the sampling loop.
    """
    unet = pipeline.denoiser
    args, kwargs = first_unet_inputs(pipeline, seeds)
    if str(unet.device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            unet(*args, **kwargs)
        torch.cuda.synchronize()
        activations = torch.cuda.max_memory_allocated() - before
    else:
        inputs = [tensor for tensor in tree_leaves((args, kwargs)) if isinstance(tensor, torch.Tensor)]
        held = [plain for tensor in [*unet.parameters(), *unet.buffers()] for plain in plain_tensors(tensor)]
        known = {tensor.untyped_storage().data_ptr() for tensor in [*held, *inputs]}
        # a compiled model's operators are not seen one by one: its eager form is tracked (an upper bound)
        compiled = getattr(unet, COMPILE_SECONDS, None) is not None
        eager = torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()
        with torch.no_grad(), eager, _LiveTensorPeak(known) as tracker:
            unet(*args, **kwargs)
        activations = tracker.peak_bytes
    return weight_bytes(unet) + activations


def timed_call(pipeline, seeds: SeedBatch, on_cuda: bool, **options) -> float:
    """One whole deployment call: prompts encoded by the text encoder(s), every step, the VAE decode.
    ``options``: passed to the call (``on_step``: the progress of a call hundreds of steps long)."""
    generator = torch.Generator(device=execution_device(pipeline.denoiser)).manual_seed(seeds.seed)
    if on_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        pipeline(seeds.noise, seeds.class_labels, generator=generator, encode=True, **options)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    started = time.perf_counter()
    pipeline(seeds.noise, seeds.class_labels, generator=generator, encode=True, **options)
    return (time.perf_counter() - started) * 1000


def _stage_medians(stages: list[dict[str, float]]) -> dict[str, float]:
    names = dict.fromkeys(name for stage in stages for name in stage)
    return {name: statistics.median(stage.get(name, 0.0) for stage in stages) for name in names}


class RecompiledWhileTimed(TechniqueError):
    """A compiled model compiled again during its timed calls: their time would include a compile."""


@contextlib.contextmanager
def no_compiling(compiled: bool) -> Iterator[None]:
    """Fails (``RecompiledWhileTimed``) where a compiled model would compile during the block, instead of timing
    the compile: torch's ``fail_on_recompile`` stance, for a model torch.compile runs."""
    if not compiled:
        yield
        return
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            yield
    except RuntimeError as error:
        if "fail_on_recompile" not in str(error):
            raise
        reason = " ".join(str(error).split())
        raise RecompiledWhileTimed(
            f"the compiled model compiled again during its timed calls (a measurement error, not a latency): {reason}"
        ) from None


def measure_cost(pipeline, seeds: SeedBatch, warmup: int = 2, repeats: int = 5, **options) -> CostMeasurement:
    """Times ``repeats`` calls on ``seeds`` (the deployment batch) after ``warmup`` untimed ones; ``options`` go
    to each timed call (``timed_call``). A compiled model gets at least one warm-up call (it compiles there for
    the deployment batch), and a compile during the timed calls fails the measurement (``no_compiling``)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is not valid; it must be >= 1")
    device = str(execution_device(pipeline.denoiser))
    on_cuda = device.startswith("cuda")
    # an offloaded model's times include moving its weights to the device: the device it is shown on says so
    shown = f"{device}, offloaded" if offloaded(pipeline.denoiser) else device
    compiled = getattr(pipeline.denoiser, COMPILE_SECONDS, None) is not None
    model_memory_mb = model_memory_bytes(pipeline, seeds) / 2**20
    for _ in range(max(warmup, 1) if compiled else warmup):
        timed_call(pipeline, seeds, on_cuda)
    energy = EnergyMeter(device)
    stages: list[dict[str, float]] = []

    def timed() -> float:
        elapsed = timed_call(pipeline, seeds, on_cuda, **options)
        stages.append(dict(pipeline.stage_ms))
        return elapsed

    background = math.nan
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with energy, no_compiling(compiled):
            times = [timed() for _ in range(repeats)]
        peak_mb, memory_kind = torch.cuda.max_memory_allocated() / 2**20, CUDA_ALLOCATED
    else:
        with _RssPeakSampler() as sampler, energy, OtherLoad() as load, no_compiling(compiled):
            times = [timed() for _ in range(repeats)]
        peak_mb, memory_kind, background = sampler.peak_bytes / 2**20, CPU_RSS, load.cores
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return CostMeasurement(
        latency_ms=statistics.median(times),
        latency_iqr_ms=quartiles[2] - quartiles[0],
        peak_memory_mb=peak_mb,
        memory_kind=memory_kind,
        model_memory_mb=model_memory_mb,
        energy_j=energy.joules / repeats,
        batch_size=seeds.count,
        repeats=repeats,
        device=shown,
        threads=torch.get_num_threads(),
        stage_ms=_stage_medians(stages),
        method="median" if repeats > 1 else SINGLE_CALL,
        background_cores=background,
    )
