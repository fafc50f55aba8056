"""The search space: one function that draws an architecture within a MAC budget from an Optuna
trial, used by every search backend.

A draw picks, per stage, a block type and its hyper-parameters with ``trial.suggest_*`` only
(the choices all block types share are ``SPACE`` below; each block type draws its own options
through ``Stage.draw``, beside its module), and the share of the budget to use
(``budget_use``, 0.75 to 1, so that the search can trade MACs for accuracy). The draw fixes the
architecture's shape; its size is then fitted to that share of the budget: depths and widths
are scaled together (``space.scaling.scale_by``, depth by 1.2^phi and width by 1.3^phi at the
fixed resolution) to the largest phi whose MACs (``space.cost.estimate``, equal to fvcore's
count) fit, and one stage at a time is then deepened or widened while they still fit. An
architecture over the budget is never returned.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import Any

from blocks import BLOCKS
from blocks.registry import SharedChoices, TrialLike
from space.cost import estimate
from space.genotype import NUM_STAGES, ArchSpec, StageSpec
from space.scaling import ALPHA, BETA, largest_phi, round_width, scale_by

__all__ = [
    "DEFAULT_BLOCKS",
    "SHARED",
    "SPACE",
    "TrialLike",
    "block_types",
    "check_budget",
    "draw",
    "largest_macs",
    "largest_within",
    "parse_blocks",
    "sample",
    "scaled",
    "smallest",
    "smallest_macs",
]

# The choices every block type shares, per stage (four entries) or for all stages. A block
# type's own choices (CMT's k, AEWin's splits...) live beside it (``Stage.draw``). Depths are
# inclusive ranges.
SPACE: dict[str, Any] = {
    "stem_width": (16, 24, 32),
    "depth": ((1, 4), (1, 6), (2, 16), (1, 4)),
    "width": ((32, 48, 64, 96), (64, 96, 128, 192), (128, 192, 256, 384), (256, 384, 512, 768)),
    "heads": ((1, 2), (1, 2, 4), (2, 4, 8), (4, 8, 16)),
    "mlp_ratio": (2.0, 3.0, 4.0),
    "head_width": 1280,
    "budget_use": (0.75, 1.0),
}
# The default space: the block types whose proxy fidelity was measured (docs/data.md). The
# others registered (BoTNet, HaloNet, CoAtNet, MaxViT) join with ``blocks="all"`` or by name.
DEFAULT_BLOCKS = ("cmt", "aewin", "cot", "dual")
SHARED = SharedChoices(heads=SPACE["heads"], mlp_ratios=SPACE["mlp_ratio"])
FIT_LOW, FIT_HIGH = -24.0, 8.0  # phi range of the fit; at -24 every depth is 1, widths minimal


def block_types() -> tuple[str, ...]:
    """The searchable block types, in registration order."""
    return tuple(name for name in BLOCKS.names() if BLOCKS.get(name).searchable)


def parse_blocks(text: str) -> tuple[str, ...]:
    """The block types a search draws from: ``all`` (every searchable type) or names,
    comma-separated; returned in registration order. An unknown or unsearchable name is a
    ``ValueError`` that lists the searchable ones."""
    searchable = block_types()
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"blocks must be all or block types, got {text!r}")
    if text.strip() == "all":
        return searchable
    names = {name.strip() for name in text.split(",")}
    unknown = sorted(names - set(searchable))
    if unknown:
        raise ValueError(
            f"unknown block type {unknown[0]!r} in blocks; searchable: {', '.join(searchable)}"
        )
    return tuple(name for name in searchable if name in names)


def _types(blocks: Sequence[str] | None) -> tuple[str, ...]:
    return DEFAULT_BLOCKS if blocks is None else tuple(blocks)


def _draw_stage(
    trial: TrialLike, i: int, network: dict[str, Any], blocks: tuple[str, ...]
) -> tuple[str, dict[str, Any]]:
    """Draw stage ``i``'s block type, depth, width target, then the block's own choices."""
    block = trial.suggest_categorical(f"s{i}_block", blocks)
    depth = trial.suggest_int(f"s{i}_depth", *SPACE["depth"][i])
    width = trial.suggest_categorical(f"s{i}_width", SPACE["width"][i])
    shared = dataclasses.replace(SHARED, network=network)
    choice = BLOCKS.get(block).draw(trial, i, shared)
    return block, {"depth": depth, "width": width, **choice._asdict()}


def _build(stem_width: int, resolution: int, stages: list[tuple[str, dict[str, Any]]]) -> ArchSpec:
    """The drawn architecture, each width rounded to the nearest valid one."""
    specs = tuple(
        round_width(
            lambda w, b=block, s=spec: StageSpec(
                b, s["depth"], w, s["heads"], s["mlp_ratio"], s["options"]
            ),
            spec["width"],
            spec["heads"],
        )
        for block, spec in stages
    )
    return ArchSpec(
        specs,
        resolution,
        stem="cmt",
        stem_width=stem_width,
        head="conv",
        head_width=SPACE["head_width"],
    )


def scaled(arch: ArchSpec, phi: float) -> ArchSpec:
    """Compound scaling at the architecture's own resolution: depth 1.2^phi, width 1.3^phi."""
    return scale_by(arch, depth=ALPHA**phi, width=BETA**phi)


def _fit(arch: ArchSpec, budget_macs: int) -> ArchSpec | None:
    """The largest compound scaling of ``arch`` within the budget, then single-stage steps up
    while they fit; None if even the smallest scaling is over."""
    at_phi = functools.partial(scaled, arch)
    phi = largest_phi(lambda p: estimate(at_phi(p)).macs, budget_macs, FIT_LOW, FIT_HIGH)
    if phi is None:
        return None
    return at_phi(phi) if phi == FIT_HIGH else _grow(at_phi(phi), budget_macs)


def _grow(arch: ArchSpec, budget_macs: int) -> ArchSpec:
    """Add one block, or one width step, to a stage while the result stays within the budget,
    taking each time the step that uses the most of the remaining budget."""
    while True:
        best, best_macs = None, estimate(arch).macs
        for i, stage in enumerate(arch.stages):
            for step in (
                lambda s: dataclasses.replace(s, depth=s.depth + 1),
                lambda s: round_width(
                    lambda w: dataclasses.replace(s, width=w), s.width + 8, s.heads
                ),
            ):
                try:
                    stages = list(arch.stages)
                    stages[i] = step(stage)
                    candidate = dataclasses.replace(arch, stages=tuple(stages))
                except ValueError:
                    continue
                macs = estimate(candidate).macs
                if best_macs < macs <= budget_macs:
                    best, best_macs = candidate, macs
        if best is None:
            return arch
        arch = best


def _cheapest_stage(block: str, i: int) -> dict[str, Any]:
    """Stage ``i`` of type ``block`` with its cheapest choices, one block of minimal width."""
    choice = BLOCKS.get(block).cheapest(i, SHARED)
    return {"depth": 1, "width": 8, **choice._asdict()}


@functools.lru_cache(maxsize=16)
def _smallest(resolution: int, blocks: tuple[str, ...]) -> ArchSpec:
    """The architecture of the space with the fewest MACs at ``resolution``: every block mix,
    each stage with its cheapest options, at the fit's smallest scale (depths 1, widths and
    the stem at their minimum)."""
    best, best_macs = None, None
    for mix in itertools.product(blocks, repeat=NUM_STAGES):
        stages = [(block, _cheapest_stage(block, i)) for i, block in enumerate(mix)]
        arch = scaled(_build(min(SPACE["stem_width"]), resolution, stages), FIT_LOW)
        macs = estimate(arch).macs
        if best_macs is None or macs < best_macs:
            best, best_macs = arch, macs
    assert best is not None
    return best


def smallest_macs(resolution: int = 224, blocks: Sequence[str] | None = None) -> int:
    """MACs of the smallest architecture the space of ``blocks`` (default:
    ``DEFAULT_BLOCKS``) can reach at ``resolution``."""
    return estimate(_smallest(resolution, _types(blocks))).macs


@functools.lru_cache(maxsize=16)
def _largest(resolution: int, blocks: tuple[str, ...]) -> ArchSpec:
    """The architecture of the space with the most MACs at ``resolution``: every block mix,
    each stage with its costliest choices at its deepest and widest draw, at the fit's largest
    scale (a draw is never scaled beyond it)."""
    best, best_macs = None, -1
    for mix in itertools.product(blocks, repeat=NUM_STAGES):
        stages = [
            (
                block,
                {
                    "depth": SPACE["depth"][i][1],
                    "width": max(SPACE["width"][i]),
                    **BLOCKS.get(block).costliest(i, SHARED)._asdict(),
                },
            )
            for i, block in enumerate(mix)
        ]
        arch = scaled(_build(max(SPACE["stem_width"]), resolution, stages), FIT_HIGH)
        macs = estimate(arch).macs
        if macs > best_macs:
            best, best_macs = arch, macs
    assert best is not None
    return best


def smallest(resolution: int = 224, blocks: Sequence[str] | None = None) -> ArchSpec:
    """The architecture of the space with the fewest MACs at ``resolution``."""
    return _smallest(resolution, _types(blocks))


def largest_within(
    budget_macs: int, resolution: int = 224, blocks: Sequence[str] | None = None
) -> ArchSpec:
    """The space's largest architecture fitted to ``budget_macs`` (the smallest when even
    that does not fit)."""
    fitted = _fit(_largest(resolution, _types(blocks)), budget_macs)
    return fitted if fitted is not None else _smallest(resolution, _types(blocks))


def largest_macs(resolution: int = 224, blocks: Sequence[str] | None = None) -> int:
    """MACs of the largest architecture the space can reach at ``resolution``."""
    return estimate(_largest(resolution, _types(blocks))).macs


def check_budget(
    budget_macs: int, resolution: int = 224, blocks: Sequence[str] | None = None
) -> int:
    """Raise ``ValueError`` naming the limit if the budget is below the smallest architecture
    of the space or above its largest; return the smallest's MACs otherwise."""
    floor = smallest_macs(resolution, blocks)
    if budget_macs < floor:
        raise ValueError(
            f"the budget of {budget_macs:,} MACs is below the smallest architecture of the "
            f"search space at {resolution}px ({floor:,} MACs = {floor / 1e9:.3f} GMACs)"
        )
    ceiling = largest_macs(resolution, blocks)
    if budget_macs > ceiling:
        raise ValueError(
            f"the budget of {budget_macs:,} MACs is above the largest architecture of the "
            f"search space at {resolution}px ({ceiling:,} MACs = {ceiling / 1e9:,.1f} GMACs)"
        )
    return floor


def draw(trial: TrialLike, resolution: int = 224, blocks: Sequence[str] | None = None) -> ArchSpec:
    """The architecture ``trial`` draws from the block types ``blocks`` (default:
    ``DEFAULT_BLOCKS``) before any fitting: the stem width, then per stage its block type,
    depth, width (each rounded to the nearest valid one), heads, ratio and options, as listed in
    ``SPACE`` and by each block type. ``sample`` fits it to a budget; the one-shot supernet
    (``oneshot``) scores it as drawn."""
    network: dict[str, Any] = {}
    stem_width = trial.suggest_categorical("stem_width", SPACE["stem_width"])
    stages = [_draw_stage(trial, i, network, _types(blocks)) for i in range(NUM_STAGES)]
    return _build(stem_width, resolution, stages)


def sample(
    trial: TrialLike,
    budget_macs: int,
    resolution: int = 224,
    blocks: Sequence[str] | None = None,
) -> ArchSpec:
    """Draw an architecture of the block types ``blocks`` (default: ``DEFAULT_BLOCKS``)
    from ``trial`` and fit it to its drawn share of ``budget_macs``.

    Only ``trial.suggest_*`` is called, so any Optuna sampler (and Ray Tune's Optuna searcher)
    drives it; the same suggestions give the same architecture. A draw whose smallest scaling
    is still over a small budget falls back to the space's smallest architecture, fitted.
    Raises ``ValueError`` naming the smallest reachable MACs when the budget is below it.
    """
    blocks = _types(blocks)
    floor = check_budget(budget_macs, resolution, blocks)
    target = max(floor, int(trial.suggest_float("budget_use", *SPACE["budget_use"]) * budget_macs))
    fitted = _fit(draw(trial, resolution, blocks), target)
    if fitted is None:
        fitted = _fit(_smallest(resolution, blocks), target)
    assert fitted is not None and estimate(fitted).macs <= budget_macs
    return fitted
