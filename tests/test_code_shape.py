"""The code stays readable in one sitting: no function in the search core, the space, the
reports, the retraining, the one-shot strategy or the command lines is over 60 lines; and its
floors stay in order: the retraining never imports the search, the search never a block
family's own file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [
    *sorted((ROOT / "search").glob("*.py")),
    *sorted((ROOT / "space").glob("*.py")),
    *sorted((ROOT / "reports").glob("*.py")),
    *sorted((ROOT / "retraining").glob("*.py")),
    *sorted((ROOT / "common").glob("*.py")),
    *sorted((ROOT / "oneshot").glob("*.py")),
    *sorted(ROOT.glob("*.py")),
]
FAMILIES = {"blocks.cmt", "blocks.aewin", "blocks.cot", "blocks.dualvit"}
LIMIT = 60


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_is_over_60_lines(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > LIMIT
    ]
    assert not long, f"{path.name}: {', '.join(long)}"


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (``from a import b`` gives both
    ``a`` and ``a.b``: ``b`` may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_retraining_imports_nothing_of_the_search() -> None:
    paths = [*sorted((ROOT / "retraining").glob("*.py")), ROOT / "retrain.py"]
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in paths
        for name in imported(path)
        if name == "search" or name.startswith("search.")
    }
    assert not found


def test_the_search_imports_no_block_family_file() -> None:
    """The search reads block types from the registry, so a new type needs no edit there."""
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "search").glob("*.py"))
        for name in imported(path)
        if name in FAMILIES
    }
    assert not found


def test_the_ground_floor_imports_no_wing() -> None:
    wings = ("blocks", "space", "search", "reports", "retraining")
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "common").glob("*.py"))
        for name in imported(path)
        if name.split(".")[0] in wings
    }
    assert not found
