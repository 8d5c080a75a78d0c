"""Latency, peak memory and energy of one sampling call at the deployment batch size.

Median of repeated timed calls after warm-up. On CUDA: CUDA events, ``max_memory_allocated`` and the NVML
energy counter. On CPU: ``perf_counter``, the process's peak resident memory sampled during the calls (CUDA's
allocator statistics are zero there and tracemalloc cannot see tensors), and no energy.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass

import torch

from autoaccel.measure.energy import EnergyMeter
from autoaccel.measure.seeds import SeedBatch


@dataclass(frozen=True)
class CostMeasurement:
    latency_ms: float  # median wall time of one call producing ``batch_size`` images
    latency_iqr_ms: float
    peak_memory_mb: float
    memory_kind: str  # "cuda-allocated" or "cpu-rss"
    energy_j: float  # per call; NaN where NVML is unavailable
    batch_size: int
    repeats: int
    device: str
    threads: int

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


def _timed_call(pipeline, seeds: SeedBatch, on_cuda: bool) -> float:
    generator = torch.Generator(device=pipeline.unet.device).manual_seed(seeds.seed)
    if on_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        pipeline(seeds.noise, seeds.class_labels, generator=generator)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    started = time.perf_counter()
    pipeline(seeds.noise, seeds.class_labels, generator=generator)
    return (time.perf_counter() - started) * 1000


def measure_cost(pipeline, seeds: SeedBatch, warmup: int = 2, repeats: int = 5) -> CostMeasurement:
    """Times ``repeats`` calls on ``seeds`` (the deployment batch) after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is not valid; it must be >= 1")
    device = str(pipeline.unet.device)
    on_cuda = device.startswith("cuda")
    for _ in range(warmup):
        _timed_call(pipeline, seeds, on_cuda)
    energy = EnergyMeter(device)
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with energy:
            times = [_timed_call(pipeline, seeds, on_cuda) for _ in range(repeats)]
        peak_mb, memory_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda-allocated"
    else:
        with _RssPeakSampler() as sampler, energy:
            times = [_timed_call(pipeline, seeds, on_cuda) for _ in range(repeats)]
        peak_mb, memory_kind = sampler.peak_bytes / 2**20, "cpu-rss"
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return CostMeasurement(
        latency_ms=statistics.median(times),
        latency_iqr_ms=quartiles[2] - quartiles[0],
        peak_memory_mb=peak_mb,
        memory_kind=memory_kind,
        energy_j=energy.joules / repeats,
        batch_size=seeds.count,
        repeats=repeats,
        device=device,
        threads=torch.get_num_threads(),
    )
