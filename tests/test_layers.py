"""autoaccel's layers hold (the contracts in pyproject.toml, checked by import-linter) and no module imports itself
back through others; both checks fail on a deliberately added upward import or cycle, in a copy of the package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"
CYCLES = """
import json, grimp, networkx
graph = grimp.build_graph("autoaccel", cache_dir=None, exclude_type_checking_imports=True)
edges = networkx.DiGraph()
for module in graph.modules:
    edges.add_node(module)
    edges.add_edges_from((module, imported) for imported in graph.find_modules_directly_imported_by(module))
print(json.dumps([sorted(group) for group in networkx.strongly_connected_components(edges) if len(group) > 1]))
"""


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
        + ["--config", str(CONFIG), "--no-cache"],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def cycles(package_parent: Path) -> list[list[str]]:
    found = subprocess.run(
        [sys.executable, "-c", CYCLES],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(found.stdout)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """The package's Python files alone (no weights), copied: a tree to break on purpose."""
    parent = tmp_path_factory.mktemp("copy")
    shutil.copytree(
        ROOT / "autoaccel",
        parent / "autoaccel",
        ignore=lambda folder, names: [
            name
            for name in names
            if name in ("weights", "__pycache__") or (Path(folder, name).is_file() and not name.endswith(".py"))
        ],
    )
    return parent


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_layers_hold_and_no_module_imports_itself_back():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert cycles(ROOT) == []


def test_an_upward_import_breaks_the_layers(package_copy):
    add_line(package_copy / "autoaccel" / "targets" / "base.py", "from autoaccel.cli import main  # upward")
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "autoaccel.targets is not allowed to import autoaccel.cli" in result.stdout


def test_an_import_of_the_test_kit_breaks_its_contract(package_copy):
    add_line(package_copy / "autoaccel" / "search" / "loop.py", "import autoaccel.testing.synthetic  # the kit")
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "autoaccel.search.loop -> autoaccel.testing" in result.stdout


def test_a_module_importing_back_is_a_cycle(package_copy):
    add_line(package_copy / "autoaccel" / "techniques" / "base.py", "from autoaccel.techniques import solver  # back")
    found = cycles(package_copy)
    assert any("autoaccel.techniques.base" in group and "autoaccel.techniques.solver" in group for group in found)
