"""A genotype's latency: predicted from the table's units, or measured whole.

``predict_ms(arch, table)`` sums each unit's median latency with its weight
(``latency.units.units``); ``measure(arch, target)`` builds the whole model and times it.
``benchmarks/latency_prediction.py`` compares the two over the presets and sampled genotypes.
"""

from __future__ import annotations

import torch

from blocks import build_model
from latency.table import LatencyTable
from latency.target import Target
from latency.timing import Timing, time_module
from latency.units import NUM_CLASSES, units
from space.genotype import ArchSpec

__all__ = ["measure", "predict_ms"]


def predict_ms(arch: ArchSpec, table: LatencyTable) -> float:
    """The predicted latency of ``arch`` at its own resolution on the table's target, in ms
    (units the table lacks are measured and added to it first)."""
    found = units(arch, lambda unit: table.entry(unit).out_strides)
    return sum(weight * table.entry(unit).timing.median_ms for unit, weight in found)


def measure(arch: ArchSpec, target: Target) -> Timing:
    """The measured latency of the whole model of ``arch`` (its ImageNet head) on ``target``."""
    model = build_model(arch, NUM_CLASSES).eval()
    side = arch.resolution
    return time_module(model, (torch.randn(target.batch, 3, side, side),), target)
