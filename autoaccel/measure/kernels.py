"""Which kernels a latency measurement runs: never a simulation's time presented as a deployment's.

A technique that simulates on a model (fake quantization) says what a deployment of that model runs
(``Technique.deployment``): quantization times real quantized kernels where a backend has them (torchao on CUDA),
and elsewhere float kernels with its activation fake-quant switched off, the trial then recording its quantized
latency as "not measured" (``autoaccel.techniques.quantization_kernels``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from autoaccel.techniques.base import deployment

FLOAT = "float"
NOT_MEASURED = "not measured"
NOT_APPLICABLE = "n/a"  # a plan without quantization: there is no quantized latency to measure


@dataclass(frozen=True)
class KernelChoice:
    """What the timed model runs: ``label`` goes into the trial's details."""

    label: str
    quantized_latency: str  # "measured", "not measured", or "n/a" for a plan without quantization


def kernel_key(unet: torch.nn.Module) -> str:
    """The part of a cost-cache key that the kernels decide: empty where a plan runs float kernels."""
    deployed = deployment(unet)
    return deployed.key if deployed is not None else ""


def kernel_choice(unet: torch.nn.Module) -> KernelChoice:
    """What a timing of ``unet`` runs, without timing it: the label every trial records."""
    deployed = deployment(unet)
    if deployed is None:
        return KernelChoice(FLOAT, NOT_APPLICABLE)
    return KernelChoice(deployed.label, "measured" if deployed.real_kernels else NOT_MEASURED)


@contextlib.contextmanager
def deployment_kernels(pipeline, real_kernels: bool = True) -> Iterator[KernelChoice]:
    """Swaps the pipeline's unet for what a deployment of its plan would run, for the duration of a timing:
    the simulation is off either way (it is not a cost), and where a backend has them the unet runs the
    deployment's real kernels (unless ``real_kernels`` is False: the plan on float kernels, which
    ``bench kernels`` times beside it)."""
    deployed = deployment(pipeline.denoiser)
    choice = kernel_choice(pipeline.denoiser) if real_kernels else KernelChoice(f"{FLOAT} kernels", NOT_MEASURED)
    if deployed is None:
        yield choice
        return
    with deployed.running(pipeline, real_kernels):
        yield choice
