"""The architecture genotype, presets, cost counting and budgets, sampling, compound scaling."""

from __future__ import annotations

from space import cost, genotype, presets, sampling, scaling
from space.cost import Cost, count, estimate, parse_budget
from space.genotype import ArchSpec, StageSpec

__all__ = [
    "ArchSpec",
    "Cost",
    "StageSpec",
    "cost",
    "count",
    "estimate",
    "genotype",
    "parse_budget",
    "presets",
    "sampling",
    "scaling",
]
