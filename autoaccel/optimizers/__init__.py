"""Optimizer backends behind one small interface; no torch or diffusers here."""

from autoaccel.optimizers.base import OptimizerBackend, make_backend, registered_backends

__all__ = ["OptimizerBackend", "make_backend", "registered_backends"]
