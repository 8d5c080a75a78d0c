"""Solver names and the diffusers schedulers they run: one table for DDPM-family models, one for flow-matching
models (same names where the method is the same), and the bound on a guidance scale."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SolverSpec:
    """How a solver name maps to a diffusers scheduler and which settings it accepts."""

    scheduler_class: str
    orders: tuple[int, ...]
    variants: dict[str, dict] = field(default_factory=lambda: {"default": {}})
    fixed: dict = field(default_factory=dict)
    stochastic: bool = False


SOLVERS: dict[str, SolverSpec] = {
    "ddim": SolverSpec("DPMSolverMultistepScheduler", (1,), fixed={"algorithm_type": "dpmsolver++"}),
    "dpmsolver++": SolverSpec(
        "DPMSolverMultistepScheduler",
        (1, 2, 3),
        variants={"default": {"algorithm_type": "dpmsolver++"}, "sde": {"algorithm_type": "sde-dpmsolver++"}},
    ),
    "dpmsolver_single": SolverSpec("DPMSolverSinglestepScheduler", (1, 2, 3), fixed={"algorithm_type": "dpmsolver++"}),
    "unipc": SolverSpec(
        "UniPCMultistepScheduler",
        (1, 2, 3),
        variants={"default": {"solver_type": "bh2"}, "bh1": {"solver_type": "bh1"}},
    ),
    "deis": SolverSpec("DEISMultistepScheduler", (1, 2, 3)),
    "euler": SolverSpec("EulerDiscreteScheduler", (1,)),
    "heun": SolverSpec("HeunDiscreteScheduler", (2,)),
    "ddpm": SolverSpec("DDPMScheduler", (1,), stochastic=True),
}

MAX_GUIDANCE = 100.0  # far beyond any useful classifier-free scale; larger ones only saturate the images

# --- flow-matching solvers ---------------------------------------------------------------------------------------

# UniPC and DPM-Solver integrate in log SNR with these; the sigmas come from set_exact_sigmas, unshifted.
_FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}

# Same names as the DDPM-family table where the method is the same. Not here: DDIM and DPM-Solver++ of order 1
# (the same update as flow_euler for a velocity model), UniPC's bh1 (NaN on flow sigmas in diffusers 0.42), DEIS
# and SA-Solver (their flow schedules end above sigma 0), FlowMatchEuler's stochastic_sampling (re-noises from
# the x0 estimate: a sampler for distilled models that shrinks the sample's spread on an ordinary one).
FLOW_SOLVERS: dict[str, SolverSpec] = {
    "flow_euler": SolverSpec("FlowMatchEulerDiscreteScheduler", (1,), fixed={"stochastic_sampling": False}),
    "flow_heun": SolverSpec("FlowMatchHeunDiscreteScheduler", (2,)),
    "unipc": SolverSpec(
        "UniPCMultistepScheduler", (1, 2, 3), variants={"default": {"solver_type": "bh2"}}, fixed=_FLOW_SIGMAS
    ),
    "dpmsolver++": SolverSpec(
        "DPMSolverMultistepScheduler",
        (1, 2, 3),
        variants={"default": {"algorithm_type": "dpmsolver++"}, "sde": {"algorithm_type": "sde-dpmsolver++"}},
        fixed=_FLOW_SIGMAS,
    ),
    "dpmsolver_single": SolverSpec(
        "DPMSolverSinglestepScheduler", (1, 2, 3), fixed={**_FLOW_SIGMAS, "algorithm_type": "dpmsolver++"}
    ),
}


def all_solver_names() -> tuple[str, ...]:
    """Every solver name of either table, DDPM-family ones first."""
    return tuple(dict.fromkeys([*SOLVERS, *FLOW_SOLVERS]))


def check_guidance_scale(guidance, where: str, error: type[Exception]) -> float:
    """A guidance scale read from a file: a number (not a bool) in [1, MAX_GUIDANCE]; else one line naming
    ``where`` (e.g. ``recipe.yaml: guidance_scale``)."""
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 1 <= guidance <= MAX_GUIDANCE:
        raise error(f"{where}={guidance!r} must be a number in [1, {MAX_GUIDANCE:g}]")
    return float(guidance)
