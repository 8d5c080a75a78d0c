"""Builds autoaccel with its bundled configuration inside the package.

``conf/`` and ``search_spaces/`` live at the top of the repository (Hydra's config folder, the bundled spaces), not
inside ``autoaccel/``; a wheel carries them as ``autoaccel/conf`` and ``autoaccel/search_spaces``, which is where
``autoaccel.util.resources.resource_dir`` finds them in an installed package. They are copied when the wheel is built,
so the top-level folders stay the one copy that is edited. Everything else is in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RESOURCE_DIRS = ("conf", "search_spaces")  # top-level folders shipped inside the package
RESOURCE_SUFFIX = ".yaml"


def resource_files(root: Path) -> list[Path]:
    """Every file of ``RESOURCE_DIRS`` the wheel carries, relative to the repository root ``root``."""
    return sorted(
        path.relative_to(root)
        for folder in RESOURCE_DIRS
        for path in (root / folder).rglob(f"*{RESOURCE_SUFFIX}")
        if path.is_file()
    )


class BuildWithResources(build_py):
    """``build_py``, then the resource folders copied into the built package (not for an editable install: it
    runs from the checkout, where ``resource_dir`` finds the top-level folders themselves)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for relative in resource_files(root):
            destination = Path(self.build_lib) / "autoaccel" / relative
            self.mkpath(str(destination.parent))
            self.copy_file(str(root / relative), str(destination))


setup(cmdclass={"build_py": BuildWithResources})
