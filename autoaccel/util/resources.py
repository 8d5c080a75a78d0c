"""Where bundled files live: inside the installed package (a wheel carries them there: ``setup.py``), or at the top
of a source checkout (an editable install, or ``PYTHONPATH``)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the autoaccel package folder
CHECKOUT_MARKER = "pyproject.toml"  # beside the top-level folders in a checkout; a site-packages folder has none


def resource_dir(name: str) -> Path:
    """``conf`` or ``search_spaces``: the packaged copy if there is one, else the checkout's top-level folder
    (never a folder of that name some other package left beside an installed autoaccel)."""
    checkout = PACKAGE_DIR.parent
    candidates = [PACKAGE_DIR / name] + ([checkout / name] if (checkout / CHECKOUT_MARKER).is_file() else [])
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"autoaccel's {name}/ folder is missing from {' and '.join(map(str, candidates))}; reinstall autoaccel"
    )
