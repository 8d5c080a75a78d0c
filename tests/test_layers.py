"""autoaccel's layers hold (the contracts in pyproject.toml, checked by import-linter) and no module imports itself
back through others; both checks fail on a deliberately added upward import or cycle, in a copy of the package."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import networkx
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


# Imports inside functions: the commands import what they run when they run (and ``autoaccel.apply_recipe``
# loads the recipe module on first use); modules kept off a search's path
# (trainers, the W&B report, the test kit) are imported where used. Every other import is at the top.
LAZY_FOLDERS = ("cli/", "__init__.py")  # and the package's own lazy apply_recipe
OFF_THE_RUNTIME_PATH = (
    "autoaccel.testing",
    "autoaccel.targets.digits.teacher",
    "autoaccel.targets.digits.classifier_training",
    "autoaccel.targets.digits.latent.train",
    "autoaccel.targets.digits.latent.training",
    "autoaccel.report.wandb_report",
)


def _module_of(relative: str) -> str:
    parts = ["autoaccel", *Path(relative).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, inside_functions: bool) -> list[str]:
    """autoaccel modules imported inside functions, or at module level (``TYPE_CHECKING`` blocks left out)."""
    nested, annotations = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nested.update(id(inner) for inner in ast.walk(node))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            annotations.update(id(inner) for inner in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if (id(node) in nested) != inside_functions or id(node) in annotations:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoaccel"):
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("autoaccel")]
    return found


def _sources(package: Path = ROOT / "autoaccel") -> dict[str, ast.AST]:
    return {path.relative_to(package).as_posix(): ast.parse(path.read_text()) for path in package.rglob("*.py")}


def unexplained_lazy_imports(package: Path) -> list[str]:
    """``file: module`` for each import of an autoaccel module inside a function that is none of the lazy ones."""
    unexplained = []
    for relative, tree in _sources(package).items():
        if relative.startswith(LAZY_FOLDERS) or _module_of(relative).startswith(OFF_THE_RUNTIME_PATH):
            continue
        for module in _imports(tree, inside_functions=True):
            named = {module, module.rpartition(".")[0]}  # ``from a.b import c``: a.b's module or a.b.c's
            if not any(name.startswith(OFF_THE_RUNTIME_PATH) for name in named):
                unexplained.append(f"{relative}: {module}")
    return unexplained


def test_imports_inside_functions_are_only_the_lazy_ones():
    assert unexplained_lazy_imports(ROOT / "autoaccel") == [], "move these imports to the top of their module"


def test_a_new_import_inside_a_function_is_reported(package_copy):
    loop = package_copy / "autoaccel" / "search" / "loop.py"
    add_line(loop, "def _late():\n    from autoaccel.front.pareto import knee_point\n\n    return knee_point")
    assert unexplained_lazy_imports(package_copy / "autoaccel") == [
        "search/loop.py: autoaccel.front.pareto",
        "search/loop.py: autoaccel.front.pareto.knee_point",
    ]


def test_module_level_imports_have_no_import_time_cycle():
    """What Python runs when a module is imported: its module-level imports, and for each the ``__init__`` of every
    package around the imported module that the importer is not inside."""
    sources = _sources()
    modules = {_module_of(relative) for relative in sources}
    graph = networkx.DiGraph()
    for relative, tree in sources.items():
        importer = _module_of(relative)
        graph.add_node(importer)
        for imported in _imports(tree, inside_functions=False):
            parts = imported.split(".")
            for ancestor in (".".join(parts[:end]) for end in range(1, len(parts) + 1)):
                if ancestor in modules and ancestor != importer and not importer.startswith(ancestor + "."):
                    graph.add_edge(importer, ancestor)
    assert networkx.is_directed_acyclic_graph(graph), next(iter(networkx.simple_cycles(graph)))


def test_plan_and_a_folder_target_import_no_feature_extractor():
    """``plan RUN`` and loading a folder target never run an extractor: they must not pay for importing torchvision
    and torch-fidelity (seconds); the embedded models' module is imported when one of them is loaded."""
    code = (
        "import sys, autoaccel.cli.plan_command, autoaccel.targets.registry as r; r.registered_target_kinds(); "
        "heavy = ('torchvision', 'torch_fidelity', 'autoaccel.targets.digits.model'); "
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
