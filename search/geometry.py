"""What the proxy's input lets it see: the searched choices that stay distinct at a proxy input.

A searched choice acts on a stage's map, and the proxy trains on smaller maps than the target:
at a 24 px input the four stages see 6, 3, 2 and 1 pixels a side. Choices that give the same
computation there cannot differ in the proxy's accuracy, whatever its seeds: Dual-ViT's token
pools 7, 10 and 14 all pool a 6x6 map to one token. ``visible_choices`` works this out from
shapes alone (no training), for each dimension whose effect depends on the map size:

- CMT's k: the key grid ceil(side / k) of each choice;
- AEWin's stripe width: min(stripe, side) rows, a stripe as wide as the map being all of it;
- AEWin's head split: whether stripes and the 7x7 window still differ from global attention
  (a map no wider than the window makes every head type attend to the whole map);
- Dual-ViT's token pool: the token grid ``token_grid(side, pool)`` of a first Dual stage in
  stage 1 (where the space's Dual-led networks start).

``benchmarks/geometry.py`` prints the table for the usual proxy inputs; the sensitivity study
(``benchmarks/sensitivity.py``) measures whether the distinct choices also move the accuracy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from blocks.aewin import AEWinStage
from blocks.cmt import CMTStage
from blocks.dualvit import DualStage, token_grid
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


def visible_choices(resolution: int) -> list[Visibility]:
    """Each map-dependent searched dimension at each stage it is searched in, at an input of
    ``resolution`` pixels (see the module docstring)."""
    rows = []
    for stage, ks in enumerate(CMTStage.KV_REDUCTIONS):
        side = stage_size(resolution, stage)
        keys = tuple(f"{math.ceil(side / k)}x{math.ceil(side / k)} keys" for k in ks)
        rows.append(Visibility("CMT k", stage, side, ks, keys))
    for stage in range(4):
        side = stage_size(resolution, stage)
        stripes = AEWinStage.STRIPES
        rows.append(
            Visibility(
                "AEWin stripe",
                stage,
                side,
                stripes,
                tuple(f"{min(s, side)}-row stripes" for s in stripes),
            )
        )
        # Head types: stripes of the widest choice and the window still local, or global.
        kinds = ("horizontal", "vertical", "window")
        local = (side > min(stripes), side > min(stripes), side > AEWinStage.WINDOW)
        effective = tuple(
            kind if is_local else "global attention"
            for kind, is_local in zip(kinds, local, strict=True)
        )
        rows.append(Visibility("AEWin head split", stage, side, kinds, effective))
    side = stage_size(resolution, 0)
    grids = tuple(f"{token_grid(side, p)}x{token_grid(side, p)} tokens" for p in DualStage.POOLS)
    rows.append(Visibility("Dual pool", 0, side, DualStage.POOLS, grids))
    return rows


def blind_spots(resolution: int) -> list[str]:
    """One phrase per dimension and stage whose choices collapse at input ``resolution``:
    which choices give the same computation there (empty when every choice is distinct)."""
    phrases = []
    for row in visible_choices(resolution):
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
