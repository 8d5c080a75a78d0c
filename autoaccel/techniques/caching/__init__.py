"""Feature caching: the ``caching`` technique and its methods, one module each.

The import below is the method registry: each module registers its ``CacheMethod`` on import (its ``order`` places
it in ``caching.method``'s choices); the technique module comes after, so those choices hold every method.
"""

from autoaccel.techniques.caching import deep, first_block, mag, pab, taylorseer  # noqa: F401  (registers them)
from autoaccel.techniques.caching.method import CacheMethod, CachingConfig, register_method
from autoaccel.techniques.caching.technique import (
    CACHING,
    apply_caching,
    cache_methods,
    caching_methods,
)

__all__ = [
    "CACHING",
    "CacheMethod",
    "CachingConfig",
    "apply_caching",
    "cache_methods",
    "caching_methods",
    "register_method",
]
