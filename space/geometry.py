"""What the proxy's input lets it see: the searched choices that stay distinct at a proxy input.

A searched choice acts on a stage's map, and the proxy trains on smaller maps than the target:
at a 24 px input the four stages see 6, 3, 2 and 1 pixels a side. Choices that give the same
computation there cannot differ in the proxy's accuracy, whatever its seeds: Dual-ViT's token
pools 7, 10 and 14 all pool a 6x6 map to one token. ``visible_choices`` works this out from
shapes alone (no training), for each dimension whose effect depends on the map size, as
each registered block type states it (``Stage.map_choices``): CMT's k, AEWin's stripe width
and head split, Dual-ViT's token pool, MaxViT's window and grid, and whatever a new block type
declares.

``benchmarks/geometry.py`` prints the table for the usual proxy inputs; the sensitivity study
(``benchmarks/sensitivity.py``) measures whether the distinct choices also move the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from blocks import BLOCKS
from blocks.layers import stage_size

__all__ = ["Visibility", "blind_spots", "visible_choices"]


class Visibility(NamedTuple):
    """One dimension at one stage: its choices, what each becomes at the input, how many stay
    distinct."""

    dimension: str
    stage: int
    side: int
    choices: tuple
    effective: tuple

    @property
    def distinct(self) -> int:
        return len(set(self.effective))


def visible_choices(resolution: int, blocks: Sequence[str] | None = None) -> list[Visibility]:
    """Each map-dependent searched dimension of each block type of ``blocks`` (default: every
    searchable type) at each stage, at an input of ``resolution`` pixels (see the module
    docstring)."""
    rows = []
    for name in BLOCKS.names():
        stage_type = BLOCKS.get(name)
        if not stage_type.searchable or (blocks is not None and name not in blocks):
            continue
        for stage in range(4):
            side = stage_size(resolution, stage)
            rows += [
                Visibility(choice.dimension, stage, side, choice.choices, choice.effective)
                for choice in stage_type.map_choices(stage, side)
            ]
    return rows


def blind_spots(resolution: int, blocks: Sequence[str] | None = None) -> list[str]:
    """One phrase per dimension and stage of the block types ``blocks`` (default: every
    searchable type) whose choices collapse at input ``resolution``: which choices give the
    same computation there (empty when every choice is distinct)."""
    phrases = []
    for row in visible_choices(resolution, blocks):
        if row.distinct == len(row.choices):
            continue
        groups: dict[object, list[str]] = {}
        for choice, effect in zip(row.choices, row.effective, strict=True):
            groups.setdefault(effect, []).append(str(choice))
        same = "; ".join(
            f"{', '.join(choices)} give {effect}"
            for effect, choices in groups.items()
            if len(choices) > 1
        )
        phrases.append(f"{row.dimension} in stage {row.stage + 1} ({row.side}px map): {same}")
    return phrases
