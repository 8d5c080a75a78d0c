"""Checks of single values a user gives (a count, a seed, a folder, a file), shared by the configuration's checks
and the commands that take flags: each raises a ConfigError naming the value and what is valid."""

from __future__ import annotations

import tempfile
from pathlib import Path

from autoaccel.errors import ConfigError

MAX_SAMPLES = 1_000_000  # images of one seed batch: 20x FID-50k, yet its labels still fit in memory
MAX_SEED = 2**47  # |seed| below it keeps seed * 100003 + chunk start inside torch's 64-bit seed range


def check_flag_range(flag: str, value: int, low: int, high: int) -> None:
    """A command-line count or seed, before anything runs: ``--steps -1`` would train nothing and still write."""
    if not low <= value <= high:
        raise ConfigError(f"{flag} {value} is not valid; it must be an int in [{low}, {high}]")


def check_seed_flag(value: int, flag: str = "--seed") -> None:
    check_flag_range(flag, value, -MAX_SEED, MAX_SEED - 1)


def check_file_destination(key: str, path: str | Path) -> None:
    """``path`` can be written as a file: it is not a folder, and its folder can be written (``check_folder``)."""
    if Path(path).expanduser().is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a folder; give a file path")
    check_folder(key, Path(path).expanduser().parent, writable=True)


def check_folder(key: str, folder: str | Path, writable: bool = False) -> None:
    """``folder`` is, or can be made, a directory: neither it nor its closest existing parent is a file. With
    ``writable``, a file can be created there: a temporary one is made in its closest existing folder (and removed),
    which asks the file system itself (permissions, read-only mounts, /proc) rather than guessing."""
    path = Path(folder).expanduser()
    existing = next((candidate for candidate in (path, *path.parents) if candidate.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {str(existing)!r}, which is a file"
        raise ConfigError(f"{key}={str(folder)!r} {where}; give a folder (it is created if missing)")
    if not writable or existing is None:
        return
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "" if existing == path else f" (its closest existing folder {str(existing)!r})"
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"{key}={str(folder)!r} cannot be written{where}: {reason}; give a folder you can write to"
        ) from None
