"""``python -m autoaccel bench quant_kernels``: which quantization backend has CPU kernels worth running.

Times one denoiser call of each embedded digits model (the pixel UNet, the DiT) side by side and interleaved
(every round calls every variant once, so machine load falls on all of them alike): float32, bfloat16, torchao's
int8 weight-only, int8 dynamic-activation and int4 weight-only configs, and optimum-quanto's int8 and int4
weights (quanto also quantizes Conv2d layers), each eager and, where asked, under ``torch.compile``. Reports
the median per call at each batch size, the relative output error against float32 and the in-memory bytes of
the quantized model's tensors (``autoaccel.measure.size.tensor_bytes``). A variant that fails (no kernel for
this device or dtype) is a row with its reason.

Runs without Hydra or a search: torch, diffusers, torchao and optimum-quanto.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoaccel.measure.size import tensor_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Variant:
    label: str
    dtype: torch.dtype
    quantize: Callable[[torch.nn.Module, Callable], None] | None  # (model, one calibration call) -> None
    compiled: bool = False
    model: torch.nn.Module | None = None
    error: str = ""
    times: dict[int, list[float]] = field(default_factory=dict)
    relative_error: float = float("nan")
    bytes: int = 0


def _torchao(config_name: str, **options):
    def quantize(model, calibrate) -> None:
        import torchao.quantization as ao

        ao.quantize_(model, getattr(ao, config_name)(**options))

    return quantize


def _quanto(weights: str, activations: str | None = None):
    def quantize(model, calibrate) -> None:
        import optimum.quanto as quanto

        quanto.quantize(
            model, weights=getattr(quanto, weights), activations=activations and getattr(quanto, activations)
        )
        if activations:
            with quanto.Calibration():
                calibrate(model)
        quanto.freeze(model)

    return quantize


def variants(compile_too: bool) -> list[Variant]:
    """Every backend setting, in both float dtypes; the torchao int8 ones (built for torch.compile) and the float
    baselines also compiled where ``compile_too``."""
    found = []
    for name, dtype in DTYPES.items():
        found += [
            Variant(f"{name}", dtype, None),
            Variant(f"torchao int8 weight-only, {name}", dtype, _torchao("Int8WeightOnlyConfig")),
            Variant(
                f"torchao int8 dynamic act + int8 weight, {name}",
                dtype,
                _torchao("Int8DynamicActivationInt8WeightConfig"),
            ),
            Variant(
                f"torchao int4 weight-only (group 32), {name}", dtype, _torchao("Int4WeightOnlyConfig", group_size=32)
            ),
            Variant(f"quanto int8 weights, {name}", dtype, _quanto("qint8")),
            Variant(f"quanto int4 weights, {name}", dtype, _quanto("qint4")),
            Variant(f"quanto int8 weights + int8 act, {name}", dtype, _quanto("qint8", "qint8")),
        ]
    if compile_too:
        for name, dtype in DTYPES.items():
            found += [
                Variant(f"{name}, compiled", dtype, None, compiled=True),
                Variant(f"torchao int8 weight-only, {name}, compiled", dtype, _torchao("Int8WeightOnlyConfig"), True),
                Variant(
                    f"torchao int8 dynamic act + int8 weight, {name}, compiled",
                    dtype,
                    _torchao("Int8DynamicActivationInt8WeightConfig"),
                    True,
                ),
            ]
    return found


def _inputs(target, batch: int, dtype: torch.dtype) -> tuple[tuple, dict]:
    """One denoiser call's arguments at ``batch``: noise, a mid-schedule timestep and digit classes (both digits
    models are class-conditional)."""
    generator = torch.Generator().manual_seed(batch)
    sample = torch.randn(batch, *target.sample_shape, generator=generator).to(dtype)
    timestep = torch.full((batch,), target.num_train_timesteps // 2)
    return (sample, timestep), {"class_labels": torch.arange(batch) % target.condition_count}


def _call(model, inputs) -> torch.Tensor:
    args, kwargs = inputs
    with torch.no_grad():
        output = model(*args, **kwargs)
    return (output.sample if hasattr(output, "sample") else output[0]).float()


def _build(variant: Variant, denoiser, inputs_by_dtype, reference: torch.Tensor) -> None:
    """The variant's model (quantized, compiled, warmed up once at each batch) and its error and bytes."""
    try:
        model = copy.deepcopy(denoiser).to(variant.dtype).eval()
        if variant.quantize is not None:
            variant.quantize(model, lambda calibrated: _call(calibrated, inputs_by_dtype[variant.dtype][0]))
        variant.bytes = sum(tensor_bytes(parameter) for parameter in model.parameters())
        if variant.compiled:
            model = torch.compile(model)
        outputs = [_call(model, inputs) for inputs in inputs_by_dtype[variant.dtype]]
        variant.relative_error = float((outputs[0] - reference).pow(2).mean() / reference.pow(2).mean())
        variant.model = model
    except Exception as error:  # no kernel for this device or dtype: a row with its reason
        variant.error = f"{type(error).__name__}: {' '.join(str(error).split())[:140]}"


def time_model(target, batches: list[int], rounds: int, compile_too: bool, log=print) -> list[Variant]:
    """Every variant on ``target``'s denoiser, built first, then timed interleaved over ``rounds`` rounds."""
    torch.manual_seed(0)
    denoiser = target.denoiser.float().eval()
    inputs_by_dtype = {dtype: [_inputs(target, batch, dtype) for batch in batches] for dtype in DTYPES.values()}
    reference = _call(denoiser, inputs_by_dtype[torch.float32][0])
    built = variants(compile_too)
    for variant in built:
        started = time.perf_counter()
        _build(variant, denoiser, inputs_by_dtype, reference)
        log(f"{target.name}: built {variant.label} in {time.perf_counter() - started:.1f} s {variant.error}")
    ready = [variant for variant in built if variant.model is not None]
    for _ in range(rounds):
        for variant in ready:
            for batch, inputs in zip(batches, inputs_by_dtype[variant.dtype]):
                started = time.perf_counter()
                _call(variant.model, inputs)
                variant.times.setdefault(batch, []).append((time.perf_counter() - started) * 1000)
    return built


def write_markdown(path: Path, command: str, results: dict[str, list[Variant]], batches: list[int]) -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Quantized kernels on a CPU",
        "",
        f"Generated by `{command}` on {cpu} ({torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"torchao {_version('torchao')}, optimum-quanto {_version('optimum-quanto')}). One denoiser call per "
        "variant per round, all variants interleaved; median milliseconds per call. Error: mean squared difference "
        "from the float32 output over its mean square (batch "
        f"{batches[0]}). Bytes: the model's parameters as held in memory (quantized data and scales).",
    ]
    for name, built in results.items():
        base = next(variant for variant in built if variant.label == "float32")
        lines += [
            "",
            f"## {name} ({type(base.model).__name__ if base.model is not None else ''})",
            "",
            "| variant | " + " | ".join(f"ms, batch {batch} | vs float32" for batch in batches) + " | error | bytes |",
            "|---|" + "---|---|" * len(batches) + "---|---|",
        ]
        for variant in built:
            if variant.error:
                lines.append(f"| {variant.label} | failed: {variant.error} |" + " |" * (2 * len(batches) + 1))
                continue
            cells = []
            for batch in batches:
                median = statistics.median(variant.times[batch])
                cells += [f"{median:.1f}", f"{median / statistics.median(base.times[batch]):.2f}x"]
            lines.append(
                f"| {variant.label} | {' | '.join(cells)} | {variant.relative_error:.1e} | {variant.bytes:,} |"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoaccel bench quant_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "digits_dit"], choices=["digits", "digits_dit"])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (minutes)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/quantization-kernels-cpu.md"))
    args = parser.parse_args(argv)
    from autoaccel.targets.digits.model import load_digits_dit_target, load_digits_target

    loaders = {"digits": load_digits_target, "digits_dit": load_digits_dit_target}
    command = "python -m autoaccel bench quant_kernels " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = {}
    for name in args.models:
        results[name] = time_model(loaders[name](), args.batches, args.rounds, args.compile)
        write_markdown(args.out, command.strip(), results, args.batches)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
