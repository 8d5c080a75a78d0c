"""autoaccel: finds the fastest way to run a diffusion model at the quality you need.

python -m autoaccel search                 # measured Pareto front on the embedded default model
fast = autoaccel.apply_recipe(pipe, "reports/<run>/recipes/<trial>.yaml")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["apply_recipe", "load_recipe", "__version__"]


def __getattr__(name: str):
    # Lazy, so `python -m autoaccel --help` does not pay for torch and diffusers.
    if name in ("apply_recipe", "load_recipe"):
        from autoaccel.plan import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'autoaccel' has no attribute {name!r}")
