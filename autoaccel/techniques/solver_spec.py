"""How a solver name maps to a diffusers scheduler: shared by the DDPM-family and the flow-matching solver tables."""

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
