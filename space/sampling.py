"""The search space: one function that draws an architecture within a MAC budget from an Optuna
trial, used by every search backend.

A draw picks, per stage, a block type and its hyper-parameters (below, ``SPACE``) with
``trial.suggest_*`` only, and the share of the budget to use (``budget_use``, 0.75 to 1, so that
the search can trade MACs for accuracy). The draw fixes the architecture's shape; its size is
then fitted to that share of the budget: depths and widths are scaled together
(``space.scaling.scale_by``, depth by 1.2^phi and width by 1.3^phi at the fixed resolution) to
the largest phi whose MACs (``space.cost.estimate``, equal to fvcore's count) fit, and one stage
at a time is then deepened or widened while they still fit. An architecture over the budget is
never returned.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Protocol

from blocks.aewin import AEWinOptions
from blocks.cmt import CMTOptions
from blocks.cot import CoTOptions
from blocks.dualvit import DualOptions
from space.cost import estimate
from space.genotype import NUM_STAGES, ArchSpec, StageSpec
from space.scaling import ALPHA, BETA, round_width, scale_by

__all__ = ["SPACE", "TrialLike", "check_budget", "sample", "smallest_macs"]


class TrialLike(Protocol):
    """The part of ``optuna.trial.Trial`` the sampler uses."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_float(self, name: str, low: float, high: float) -> float: ...


SPLITS = {
    "1/4,1/4,1/2": (0.25, 0.25, 0.5),  # the AEWin paper
    "1/2,1/2,0": (0.5, 0.5, 0.0),  # stripes only (CSWin-like)
    "0,0,1": (0.0, 0.0, 1.0),  # windows only (Swin-like)
    "1/8,1/8,3/4": (0.125, 0.125, 0.75),
    "3/8,3/8,1/4": (0.375, 0.375, 0.25),
}

# Per stage (four entries) or per block type. Depths are inclusive ranges.
SPACE: dict[str, Any] = {
    "block": ("cmt", "aewin", "cot", "dual"),
    "stem_width": (16, 24, 32),
    "depth": ((1, 4), (1, 6), (2, 16), (1, 4)),
    "width": ((32, 48, 64, 96), (64, 96, 128, 192), (128, 192, 256, 384), (256, 384, 512, 768)),
    "heads": ((1, 2), (1, 2, 4), (2, 4, 8), (4, 8, 16)),
    "mlp_ratio": (2.0, 3.0, 4.0),
    "cot_ratio": (2.0, 4.0),
    "cot_kernel": (3, 5),
    "kv_reduction": ((4, 8), (2, 4), (1, 2), (1, 2)),
    "split": tuple(SPLITS),
    "stripe": (1, 2, 7),
    "window": 7,
    "dual_pool": (7, 10, 14),
    "dual_mode": (("dual",), ("dual",), ("dual", "merge"), ("dual", "merge")),
    "head_width": 1280,
    "budget_use": (0.75, 1.0),
}
FIT_LOW, FIT_HIGH = -24.0, 8.0  # phi range of the fit; at -24 every depth is 1, widths minimal


def _draw_stage(trial: TrialLike, i: int, pool: list[int]) -> tuple[str, dict[str, Any]]:
    """Draw stage ``i``'s block type and hyper-parameters (width is a target, fitted later)."""
    block = trial.suggest_categorical(f"s{i}_block", SPACE["block"])
    spec: dict[str, Any] = {
        "depth": trial.suggest_int(f"s{i}_depth", *SPACE["depth"][i]),
        "width": trial.suggest_categorical(f"s{i}_width", SPACE["width"][i]),
    }
    if block == "cot":
        spec["heads"] = 1
        spec["mlp_ratio"] = trial.suggest_categorical(f"s{i}_cot_ratio", SPACE["cot_ratio"])
        spec["options"] = CoTOptions(
            trial.suggest_categorical(f"s{i}_cot_kernel", SPACE["cot_kernel"])
        )
        return block, spec
    spec["heads"] = trial.suggest_categorical(f"s{i}_heads", SPACE["heads"][i])
    spec["mlp_ratio"] = trial.suggest_categorical(f"s{i}_mlp_ratio", SPACE["mlp_ratio"])
    if block == "cmt":
        k = trial.suggest_categorical(f"s{i}_kv_reduction", SPACE["kv_reduction"][i])
        spec["options"] = CMTOptions(k)
    elif block == "aewin":
        split = SPLITS[trial.suggest_categorical(f"s{i}_split", SPACE["split"])]
        stripe = trial.suggest_categorical(f"s{i}_stripe", SPACE["stripe"])
        spec["options"] = AEWinOptions(split, SPACE["window"], stripe)
    else:
        if not pool:  # one pool per network: semantic tokens flow between dual stages
            pool.append(trial.suggest_categorical("dual_pool", SPACE["dual_pool"]))
        mode = trial.suggest_categorical(f"s{i}_dual_mode", SPACE["dual_mode"][i])
        spec["options"] = DualOptions(pool[0], mode)
    return block, spec


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


def _scaled(arch: ArchSpec, phi: float) -> ArchSpec:
    """Compound scaling at the architecture's own resolution: depth 1.2^phi, width 1.3^phi."""
    return scale_by(arch, depth=ALPHA**phi, width=BETA**phi)


def _fit(arch: ArchSpec, budget_macs: int) -> ArchSpec | None:
    """The largest compound scaling of ``arch`` within the budget, then single-stage steps up
    while they fit; None if even the smallest scaling is over."""
    scaled = functools.partial(_scaled, arch)
    low, high = FIT_LOW, FIT_HIGH
    if estimate(scaled(low)).macs > budget_macs:
        return None
    if estimate(scaled(high)).macs <= budget_macs:
        return scaled(high)
    while high - low > 1e-3:
        mid = (low + high) / 2
        low, high = (mid, high) if estimate(scaled(mid)).macs <= budget_macs else (low, mid)
    return _grow(scaled(low), budget_macs)


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
    options = {
        "cmt": CMTOptions(max(SPACE["kv_reduction"][i])),
        "aewin": AEWinOptions(SPLITS["0,0,1"], SPACE["window"], 1),
        "cot": CoTOptions(min(SPACE["cot_kernel"])),
        "dual": DualOptions(max(SPACE["dual_pool"]), "dual"),
    }[block]
    if block == "cot":
        return {
            "depth": 1,
            "width": 8,
            "heads": 1,
            "mlp_ratio": max(SPACE["cot_ratio"]),
            "options": options,
        }
    heads, ratio = min(SPACE["heads"][i]), min(SPACE["mlp_ratio"])
    return {"depth": 1, "width": 8, "heads": heads, "mlp_ratio": ratio, "options": options}


@functools.lru_cache(maxsize=16)
def _smallest(resolution: int) -> ArchSpec:
    """The architecture of the space with the fewest MACs at ``resolution``: every block mix,
    each stage with its cheapest options, at the fit's smallest scale (depths 1, widths and
    the stem at their minimum)."""
    best, best_macs = None, None
    for mix in itertools.product(SPACE["block"], repeat=NUM_STAGES):
        stages = [(block, _cheapest_stage(block, i)) for i, block in enumerate(mix)]
        arch = _scaled(_build(min(SPACE["stem_width"]), resolution, stages), FIT_LOW)
        macs = estimate(arch).macs
        if best_macs is None or macs < best_macs:
            best, best_macs = arch, macs
    assert best is not None
    return best


def smallest_macs(resolution: int = 224) -> int:
    """MACs of the smallest architecture the space can reach at ``resolution``."""
    return estimate(_smallest(resolution)).macs


def check_budget(budget_macs: int, resolution: int = 224) -> int:
    """Raise ``ValueError`` naming the smallest reachable MACs if the budget is below them;
    return them otherwise."""
    floor = smallest_macs(resolution)
    if budget_macs < floor:
        raise ValueError(
            f"the budget of {budget_macs:,} MACs is below the smallest architecture of the "
            f"search space at {resolution}px ({floor:,} MACs = {floor / 1e9:.3f} GMACs)"
        )
    return floor


def sample(trial: TrialLike, budget_macs: int, resolution: int = 224) -> ArchSpec:
    """Draw an architecture from ``trial`` and fit it to its drawn share of ``budget_macs``.

    Only ``trial.suggest_*`` is called, so any Optuna sampler (and Ray Tune's Optuna searcher)
    drives it; the same suggestions give the same architecture. A draw whose smallest scaling
    is still over a small budget falls back to the space's smallest architecture, fitted.
    Raises ``ValueError`` naming the smallest reachable MACs when the budget is below it.
    """
    floor = check_budget(budget_macs, resolution)
    pool: list[int] = []
    target = max(floor, int(trial.suggest_float("budget_use", *SPACE["budget_use"]) * budget_macs))
    stem_width = trial.suggest_categorical("stem_width", SPACE["stem_width"])
    stages = [_draw_stage(trial, i, pool) for i in range(NUM_STAGES)]
    fitted = _fit(_build(stem_width, resolution, stages), target)
    if fitted is None:
        fitted = _fit(_smallest(resolution), target)
    assert fitted is not None and estimate(fitted).macs <= budget_macs
    return fitted
