"""Compound scaling (CMT, after EfficientNet): depth x alpha^phi, width x beta^phi, resolution
x gamma^phi, with alpha * beta^b * gamma^c ~= 2.5 so that each step of phi multiplies MACs by
about 2.5 (b and c are the MAC exponents of width and resolution: 2 and 2 for a CNN, more for
attention, whose cost grows with the square of the token count).

Rounding: depths up, widths to the nearest multiple of 8 that gives a valid stage (its heads
divide it, at least 8 channels per head, its block's options accept it), the resolution to the
nearest multiple of 32 (the network's stride; the CMT family's 160/192/224/256 follow from
224 and gamma = 1.15). The stem width scales with the widths; the conv head's width stays
(CMT keeps 1280 across its family). Everything here is pure and uses ``space.cost.estimate``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

from space.cost import estimate
from space.genotype import MIN_RESOLUTION, ArchSpec, StageSpec

__all__ = [
    "ALPHA",
    "BETA",
    "FAMILY_PHI",
    "GAMMA",
    "Exponents",
    "coefficient_grid",
    "family",
    "largest_phi",
    "mac_exponents",
    "phi_for_macs",
    "round_width",
    "scale",
    "scale_by",
    "spread_candidates",
]

ALPHA, BETA, GAMMA = 1.2, 1.3, 1.15
FAMILY_PHI = {"Ti": -2.0, "XS": -1.0, "S": 0.0, "B": 1.0}
WIDTH_MULTIPLE = 8
RESOLUTION_MULTIPLE = 32
MIN_HEAD_WIDTH = 8


def round_width(make: Callable[[int], StageSpec], target: float, heads: int = 1) -> StageSpec:
    """The stage ``make(width)`` at the multiple of 8 nearest ``target`` for which it is valid.

    Candidates start at 8 channels per head; ties go to the narrower width. Raises
    ``ValueError`` when no width within 64 steps of the target is valid.
    """
    lowest = max(WIDTH_MULTIPLE, MIN_HEAD_WIDTH * heads)
    centre = max(lowest, WIDTH_MULTIPLE * round(target / WIDTH_MULTIPLE))
    candidates = sorted(
        (w for w in range(lowest, centre + 64 * WIDTH_MULTIPLE, WIDTH_MULTIPLE)),
        key=lambda w: (abs(w - target), w),
    )
    errors = []
    for width in candidates[:64]:
        try:
            return make(width)
        except ValueError as error:
            errors.append(str(error))
    raise ValueError(f"no valid width near {target:g}: {errors[0] if errors else 'none tried'}")


def _ceil(x: float) -> int:
    return max(1, math.ceil(x - 1e-9))


def scale_by(
    arch: ArchSpec, *, depth: float = 1.0, width: float = 1.0, resolution: float = 1.0
) -> ArchSpec:
    """``arch`` with depths, widths (and the stem width) and resolution multiplied, rounded."""
    stages = tuple(
        round_width(
            lambda w, s=s: dataclasses.replace(s, width=w, depth=_ceil(s.depth * depth)),
            s.width * width,
            s.heads,
        )
        for s in arch.stages
    )
    stem_width = max(WIDTH_MULTIPLE, WIDTH_MULTIPLE * round(arch.stem_width * width / 8))
    side = RESOLUTION_MULTIPLE * round(arch.resolution * resolution / RESOLUTION_MULTIPLE)
    return dataclasses.replace(
        arch, stages=stages, stem_width=stem_width, resolution=max(MIN_RESOLUTION, side)
    )


def scale(
    arch: ArchSpec,
    phi: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> ArchSpec:
    """Compound scaling: depth x alpha^phi, width x beta^phi, resolution x gamma^phi.

    ``phi`` may be fractional; ``scale(arch, 0)`` is ``arch`` itself.
    """
    if phi == 0:
        return arch
    return scale_by(arch, depth=alpha**phi, width=beta**phi, resolution=gamma**phi)


def family(
    arch: ArchSpec, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> dict[str, ArchSpec]:
    """The Ti, XS, S, B family of ``arch`` (phi = -2, -1, 0, +1; ``arch`` is S)."""
    return {name: scale(arch, phi, alpha, beta, gamma) for name, phi in FAMILY_PHI.items()}


def largest_phi(
    macs: Callable[[float], float],
    limit: float,
    low: float,
    high: float,
    tolerance: float = 1e-3,
) -> float | None:
    """The largest phi in [low, high] (by bisection, to ``tolerance``) with ``macs(phi) <=
    limit``, for MACs that grow with phi; ``high`` if it fits, None if even ``low`` is over."""
    if macs(low) > limit:
        return None
    if macs(high) <= limit:
        return high
    while high - low > tolerance:
        mid = (low + high) / 2
        low, high = (mid, high) if macs(mid) <= limit else (low, mid)
    return low


def phi_for_macs(
    arch: ArchSpec,
    target_macs: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    *,
    low: float = -8.0,
    high: float = 8.0,
) -> float:
    """The largest phi in [low, high] (to 1e-3) whose scaled architecture has at most
    ``target_macs`` MACs; raises ``ValueError`` if even ``low`` is over it."""

    def macs(phi: float) -> int:
        return estimate(scale(arch, phi, alpha, beta, gamma)).macs

    phi = largest_phi(macs, target_macs, low, high)
    if phi is None:
        raise ValueError(
            f"even phi = {low:g} gives {macs(low):,} MACs, over the target {target_macs:,.0f}"
        )
    return phi


class Exponents(NamedTuple):
    """How MACs grow with each multiplier: MACs ~ depth^a * width^b * resolution^c."""

    depth: float
    width: float
    resolution: float


def mac_exponents(arch: ArchSpec) -> Exponents:
    """The genotype's own MAC exponents, measured between x1 and x2 of each dimension.

    Doubling keeps every width a valid multiple and the resolution a multiple of 32, so the
    measurement has no rounding noise; attention makes the resolution exponent exceed 2.
    """
    base = estimate(arch).macs

    def exponent(**multiplier: float) -> float:
        return math.log2(estimate(scale_by(arch, **multiplier)).macs / base)

    return Exponents(exponent(depth=2.0), exponent(width=2.0), exponent(resolution=2.0))


def coefficient_grid(
    exponents: Exponents,
    target: float = 2.5,
    *,
    step: float = 0.05,
    highest: float = 1.5,
) -> list[tuple[float, float, float]]:
    """Candidate (alpha, beta, gamma) with alpha * beta^b * gamma^c = ``target``, b and c the
    measured width and resolution exponents (depth counts as 1, as in EfficientNet's rule).

    alpha and beta run over a grid of ``step`` in [1, highest]; gamma is solved and kept when it
    lies in [1, highest]. These are the candidates a scaling search scores at phi = 1.
    """
    grid = [round(1 + step * i, 6) for i in range(round((highest - 1) / step) + 1)]
    out = []
    for alpha, beta in itertools.product(grid, grid):
        rest = target / (alpha * beta**exponents.width)
        if rest < 1:
            continue
        gamma = rest ** (1 / exponents.resolution)
        if gamma <= highest:
            out.append((alpha, beta, round(gamma, 4)))
    return out


def spread_candidates(
    grid: list[tuple[float, float, float]],
    count: int,
    first: tuple[float, float, float] = (ALPHA, BETA, GAMMA),
) -> list[tuple[float, float, float]]:
    """``count`` coefficient triples spread over ``grid``: ``first`` (CMT's), then each time
    the grid's triple farthest (in log alpha, log beta, log gamma) from those already chosen."""

    def distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return math.dist([math.log(x) for x in a], [math.log(x) for x in b])

    chosen = [first]
    pool = [c for c in grid if c != first]
    while len(chosen) < count and pool:
        best = max(pool, key=lambda c: (min(distance(c, d) for d in chosen), c))
        chosen.append(best)
        pool.remove(best)
    return chosen
