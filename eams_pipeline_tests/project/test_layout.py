"""The house's rules that a file move could break: a module's name tells its room, tests
mirror the package, and test helpers stand on their own."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "eams_pipeline"
TESTS = ROOT / "eams_pipeline_tests"
LAYERS = {"core", "db", "io", "services", "orchestration", "devtools", "cli", "project"}


def _modules(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.py") if p.name != "__init__.py"]


def repeated_names(paths: list[Path]) -> dict[str, list[str]]:
    """File names standing in more than one folder."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        where[path.name].append(str(path.parent))
    return {name: folders for name, folders in where.items() if len(folders) > 1}


def test_repeated_names_are_found() -> None:
    paths = [Path("a/core/x.py"), Path("a/db/x.py"), Path("a/db/y.py")]
    assert repeated_names(paths) == {"x.py": ["a/core", "a/db"]}


def test_no_module_name_stands_in_two_layers() -> None:
    assert repeated_names(_modules(PACKAGE)) == {}


def test_tests_live_in_the_folder_of_their_layer() -> None:
    misplaced = [
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("test_*.py")
        if p.parent == TESTS or p.relative_to(TESTS).parts[0] not in LAYERS
    ]
    assert misplaced == []
    for layer in LAYERS:
        if (TESTS / layer).is_dir():
            assert (TESTS / layer / "__init__.py").is_file(), layer


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_test_module_imports_conftest() -> None:
    offenders = [
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("*.py")
        if any(m.split(".")[-1] == "conftest" for m in _imported(p))
    ]
    assert offenders == []


def test_test_helpers_import_no_test_module() -> None:
    """Shared helpers live in support modules (builders, cli_runner, orchestration_env...),
    never in a test module another test would import."""
    helpers = [p for p in TESTS.glob("*.py") if not p.name.startswith("test_")]
    offenders = [
        f"{p.name} imports {m}"
        for p in helpers
        for m in _imported(p)
        if m.startswith("eams_pipeline_tests.") and m.split(".")[-1].startswith("test_")
    ]
    assert offenders == []


def test_every_module_is_on_the_map() -> None:
    """docs/architecture.md names every module of the package, so a newcomer finds each room."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = [
        str(p.relative_to(PACKAGE))
        for p in _modules(PACKAGE)
        if f"`{p.name}`" not in text and f"/{p.name}`" not in text
    ]
    assert unnamed == []
