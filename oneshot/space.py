"""The one-shot space: the architectures of the search space as drawn (``space.sampling.draw``,
no fitting to the budget) whose MACs lie within the budget's window, ``SPACE["budget_use"]``
of it (75-100%: the share the trials strategy fits its draws to).

The trials strategy fits every draw to the budget by compound scaling, which takes widths and
depths past the space's listed largest (at 4 GFLOPs, widths of 1,376 channels and 26-block
stages): a supernet holding those would be several times the 324M numbers it holds now, and 85
of 100 fitted draws fell outside it. Unfitted draws are all inside it, and at 4 GFLOPs about one
draw in six falls in the window (``share_within``); a draw outside it costs an estimate
(0.2 ms), not a score.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from blocks.registry import TrialLike
from space.cost import estimate
from space.genotype import ArchSpec
from space.sampling import SPACE, draw

__all__ = [
    "MAX_DRAWS",
    "RandomTrial",
    "draw_within",
    "random_within",
    "share_within",
    "window",
]

MAX_DRAWS = 10_000  # draws for one architecture in the window before giving up


class RandomTrial:
    """A trial that answers every ``suggest_*`` at random from ``rng``: the search space's draw
    without an Optuna study (thousands of them cost nothing)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence) -> object:
        return self.rng.choice(list(choices))

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def suggest_float(self, name: str, low: float, high: float) -> float:
        return self.rng.uniform(low, high)


def window(budget_macs: int) -> tuple[int, int]:
    """The MACs a one-shot architecture may have: ``SPACE["budget_use"]`` of the budget."""
    low, high = SPACE["budget_use"]
    return int(low * budget_macs), int(high * budget_macs)


def draw_within(
    trial: TrialLike,
    budget_macs: int,
    resolution: int = 224,
    blocks: Sequence[str] | None = None,
) -> ArchSpec | None:
    """``trial``'s draw if its MACs lie in the budget's window, else None."""
    arch = draw(trial, resolution, blocks)
    low, high = window(budget_macs)
    return arch if low <= estimate(arch).macs <= high else None


def random_within(
    rng: random.Random,
    budget_macs: int,
    resolution: int = 224,
    blocks: Sequence[str] | None = None,
) -> ArchSpec:
    """A random architecture of the one-shot space; ``ValueError`` after ``MAX_DRAWS`` draws
    outside the window."""
    for _ in range(MAX_DRAWS):
        arch = draw_within(RandomTrial(rng), budget_macs, resolution, blocks)
        if arch is not None:
            return arch
    low, high = window(budget_macs)
    raise ValueError(f"no draw of {MAX_DRAWS:,} has between {low:,} and {high:,} MACs")


def share_within(
    budget_macs: int,
    resolution: int = 224,
    blocks: Sequence[str] | None = None,
    draws: int = 2000,
    seed: int = 0,
) -> float:
    """The share of ``draws`` random draws that fall in the budget's window."""
    rng = random.Random(seed)
    hits = sum(
        draw_within(RandomTrial(rng), budget_macs, resolution, blocks) is not None
        for _ in range(draws)
    )
    return hits / draws
