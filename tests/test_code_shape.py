"""The code stays readable in one sitting: no function in the search core, the space, the
reports, the retraining or the command lines is over 60 lines."""

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
    *sorted(ROOT.glob("*.py")),
]
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
