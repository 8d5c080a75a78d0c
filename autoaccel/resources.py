"""Where bundled files live: at the top of a source checkout, or inside the installed package."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``conf`` or ``search_spaces``: the checkout's top-level folder if there is one, else the packaged copy."""
    for candidate in (PACKAGE_DIR.parent / name, PACKAGE_DIR / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"autoaccel's {name}/ folder is missing from {PACKAGE_DIR.parent} and {PACKAGE_DIR}")
