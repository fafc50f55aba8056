"""A search's latency: each trial's predicted latency on the run's target, the limit it must keep,
and the check that a limit is within the space's reach.

The prediction comes from the machine's unit table (``latency.table``), one per process and
target, measuring the units it lacks. An architecture whose prediction is over the limit is
scaled down (depth 1.2^phi, width 1.3^phi, as the MAC fit does) to the largest phi whose
prediction keeps it, so no trial is trained over the limit; the fit stops at a quarter step
of phi, where rounded widths and depths change anyway.
"""

from __future__ import annotations

import functools

from latency.predict import predict_ms
from latency.table import LatencyTable
from latency.target import Target
from search.config import SearchConfig
from space.genotype import ArchSpec
from space.sampling import FIT_LOW, largest_within, scaled, smallest
from space.scaling import largest_phi

__all__ = ["check_limit", "predicted_ms", "within_limit"]

PHI_STEP = 0.25  # the fit's tolerance in phi


@functools.lru_cache(maxsize=4)
def _table(target: Target) -> LatencyTable:
    return LatencyTable(target)


def predicted_ms(arch: ArchSpec, config: SearchConfig) -> float:
    """The predicted latency of ``arch`` on the run's latency target, in ms."""
    target = config.latency_target()
    assert target is not None, "the run has no latency device"
    return predict_ms(arch, _table(target))


def within_limit(arch: ArchSpec, config: SearchConfig) -> ArchSpec:
    """``arch`` if its prediction keeps the run's latency limit, else its largest scaling down
    that does; the space's smallest architecture if none does."""
    limit = config.latency_limit_ms
    if limit is None or predicted_ms(arch, config) <= limit:
        return arch
    at_phi = functools.partial(scaled, arch)
    phi = largest_phi(
        lambda p: predicted_ms(at_phi(p), config), limit, FIT_LOW, 0.0, tolerance=PHI_STEP
    )
    return smallest(config.resolution, config.block_types) if phi is None else at_phi(phi)


def check_limit(config: SearchConfig) -> None:
    """``ValueError`` naming the limit when it is below the predicted latency of the space's
    smallest architecture, or above that of its largest fitted to the MAC budget (a limit no
    architecture within the budget comes near); their units are measured if the table lacks
    them."""
    limit = config.latency_limit_ms
    if limit is None:
        return
    floor = predicted_ms(smallest(config.resolution, config.block_types), config)
    if limit < floor:
        raise ValueError(
            f"the latency budget of {limit:g} ms is below the smallest architecture of the "
            f"search space at {config.resolution}px ({floor:.1f} ms predicted on "
            f"{config.latency_device}, batch {config.latency_batch})"
        )
    ceiling = predicted_ms(
        largest_within(config.budget_macs, config.resolution, config.block_types), config
    )
    if limit > ceiling:
        raise ValueError(
            f"the latency budget of {limit:g} ms is above the largest architecture of the "
            f"search space within {config.budget} at {config.resolution}px ({ceiling:.1f} ms "
            f"predicted on {config.latency_device}, batch {config.latency_batch})"
        )
