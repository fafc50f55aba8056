"""The architecture genotype, the published presets, and cost counting with budgets."""

from __future__ import annotations

from space import cost, genotype, presets
from space.cost import Cost, count, parse_budget
from space.genotype import ArchSpec, StageSpec

__all__ = ["ArchSpec", "Cost", "StageSpec", "cost", "count", "genotype", "parse_budget", "presets"]
