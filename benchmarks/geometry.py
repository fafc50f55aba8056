"""Which searched choices a proxy input can tell apart at all (shapes only, no training).

    python benchmarks/geometry.py                 # the table for the usual proxy inputs
    python benchmarks/geometry.py 24 64 224       # chosen inputs

Each cell is distinct/choices: how many of a dimension's choices still give different
computations at that input (``space.geometry``). A dimension with one distinct choice cannot
move the proxy's accuracy; more than one is necessary, not sufficient (the sensitivity study
measures the rest). Training cost grows with the input's area, given relative to 24 px.
Writes ``benchmarks/results/geometry.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blocks.layers import stage_size  # noqa: E402
from space.geometry import visible_choices  # noqa: E402

INPUTS = (24, 32, 48, 64, 96, 128, 224)


def table(inputs: tuple[int, ...]) -> str:
    """The markdown table: one row per dimension and stage, one column per proxy input."""
    columns = {r: visible_choices(r) for r in inputs}
    head = "| dimension | stage | " + " | ".join(f"{r} px" for r in inputs) + " |"
    lines = [head, "|---|---|" + "---|" * len(inputs)]
    sides = " | ".join(",".join(str(stage_size(r, i)) for i in range(4)) for r in inputs)
    lines.append(f"| stage map sides | 1-4 | {sides} |")
    for i, row in enumerate(columns[inputs[0]]):
        cells = " | ".join(f"{columns[r][i].distinct}/{len(row.choices)}" for r in inputs)
        lines.append(f"| {row.dimension} | {row.stage + 1} | {cells} |")
    cost = " | ".join(f"{(r / 24) ** 2:.3g}x" for r in inputs)
    lines.append(f"| training cost vs 24 px | | {cost} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    inputs = tuple(int(a) for a in argv) or INPUTS
    text = table(inputs)
    print(text, end="")
    (ROOT / "benchmarks" / "results" / "geometry.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
