"""The techniques autoaccel searches, one module each, registered on import.

The imports below are the registry of built-in techniques: importing any part of ``autoaccel.techniques`` (its
``base`` included) runs them first, so ``get_technique`` and ``registered_techniques`` always see every one.
``base`` (the ``Technique`` interface and the registry) imports none of them. A technique written outside
autoaccel registers itself the same way, by calling ``register`` when its module is imported.
"""

from autoaccel.techniques import (  # noqa: F401  (each registers its technique)
    assignment,
    caching,
    distillation,
    pruning,
    quantization,
    solver,
    timesteps,
)
