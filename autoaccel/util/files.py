"""Writing a file so that no reader sees half of it and no other writer of the same file gets in the way.

Several workers on one machine fill the same reference cache and may write the same recipe at once: each
writes through a temporary file of its own (process and thread in its name) and renames it into place.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Calls ``write(temporary)`` then renames the temporary file to ``path``; the last writer wins whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
