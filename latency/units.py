"""A genotype as the units whose latencies add up to its own: the stem, each stage, the head.

A stage of ``depth`` blocks costs its entry (the transition and first block) plus ``depth - 1``
further blocks, all alike. A stage up to ``MEASURED_DEPTH`` blocks deep is one unit as it is;
a deeper one is predicted from the same stage at depth 1 and at ``MEASURED_DEPTH``, whose
difference gives the cost of one more block: t(d) = t(1) + (d - 1) (t(K) - t(1)) / (K - 1)
(from depths 1 and 2 the noise of one measurement would be multiplied by d - 1; from 1 and 4,
by (d - 1) / 3). A stage whose MLP ratios follow a pattern (its blocks differ) is one unit as it
is. A unit is keyed by everything
that changes its time (block type, options, width, heads, ratio, input width, stride, map sizes,
semantic tokens, and the strides its input map arrives with: a map handed on by AEWin or Dual-ViT
blocks is laid out channels-last in memory, or is a view of a padded one, and a convolution runs
at another speed on it; the stem's width and input; the head's widths, map, tokens and input
strides); the batch and the machine are the table's (``latency.target.Fingerprint``). A unit's
input strides are the output strides of the unit before it, which the table records when it
measures that one, so predicting a network reads the table only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from blocks import BLOCKS, HEADS, STEMS
from blocks.backbone import plan_stages
from blocks.layers import trunc_normal_init
from blocks.registry import StagePlan
from space.genotype import ArchSpec, StageSpec

__all__ = ["MEASURED_DEPTH", "NUM_CLASSES", "Strides", "Unit", "output_strides", "units"]

NUM_CLASSES = 1000  # the head's classes when latency is measured (the ImageNet head)
MEASURED_DEPTH = 4  # deeper stages are extrapolated from depths 1 and 4
Strides = tuple[int, ...]


class Unit(NamedTuple):
    """A part of a network that is measured alone: ``key`` says what it is (JSON text); ``kind``
    is ``stem``, ``stage`` or ``head``; ``spec`` is what builds it."""

    key: str
    kind: str
    spec: dict

    def build(self, batch: int) -> tuple[nn.Module, tuple[Tensor, ...], bool]:
        """The unit's module, random inputs of ``batch`` images, and whether it takes tokens."""
        return _BUILDERS[self.kind](self.spec, batch)


def units(arch: ArchSpec, out_strides: Callable[[Unit], Strides]) -> list[tuple[Unit, float]]:
    """The units of ``arch`` at its own resolution, each with its weight in the sum that
    predicts the whole network's latency; ``out_strides(unit)`` gives the strides of a unit's
    output map (the table's record, measured when missing)."""
    plans = plan_stages(arch)
    stem = _unit("stem", stem=arch.stem, width=arch.stem_width, resolution=arch.resolution)
    found, strides = [(stem, 1.0)], out_strides(stem)
    for plan in plans:
        parts = _stage_units(plan, strides)
        found += parts
        strides = out_strides(parts[-1][0])  # the deepest unit's output
    last = plans[-1]
    tokens = last.stage_type.token_count(last.spec, last.feature_size, last.tokens_in)
    head = _unit(
        "head",
        head=arch.head,
        stage=last.spec.to_dict(),
        width=arch.head_width,
        feature_size=last.feature_size,
        tokens=tokens,
        in_strides=strides,
    )
    return [*found, (head, 1.0)]


def output_strides(output: Tensor | tuple) -> Strides:
    """The strides of a unit's output map (a stage returns the map and its tokens)."""
    return tuple((output[0] if isinstance(output, tuple) else output).stride())


def _map(batch: int, width: int, side: int, strides: Strides) -> Tensor:
    """A random (batch, width, side, side) map laid out with ``strides``."""
    return torch.empty_strided((batch, width, side, side), strides).normal_()


def _unit(kind: str, **spec: object) -> Unit:
    return Unit(json.dumps({"kind": kind, **spec}, sort_keys=True), kind, spec)


def _stage_units(plan: StagePlan, in_strides: Strides) -> list[tuple[Unit, float]]:
    spec = plan.spec
    where = {
        "in_strides": in_strides,
        "in_width": plan.in_width,
        "stride": plan.stride,
        "in_size": plan.in_size,
        "feature_size": plan.feature_size,
        "tokens_in": plan.tokens_in,
        "last": plan.last,
    }
    if isinstance(spec.mlp_ratio, tuple) or spec.depth <= MEASURED_DEPTH:
        return [(_unit("stage", stage=spec.to_dict(), **where), 1.0)]
    one, deep = (dataclasses.replace(spec, depth=d).to_dict() for d in (1, MEASURED_DEPTH))
    blocks = (spec.depth - 1) / (MEASURED_DEPTH - 1)  # further blocks, in units of K - 1
    return [
        (_unit("stage", stage=one, **where), 1.0 - blocks),
        (_unit("stage", stage=deep, **where), blocks),
    ]


def _initialised(module: nn.Module) -> nn.Module:
    trunc_normal_init(module)
    return module.eval()


def _build_stem(spec: dict, batch: int) -> tuple[nn.Module, tuple[Tensor, ...], bool]:
    stem = STEMS.get(spec["stem"])(spec["width"])
    side = spec["resolution"]
    return _initialised(stem), (torch.randn(batch, 3, side, side),), False


def _build_stage(spec: dict, batch: int) -> tuple[nn.Module, tuple[Tensor, ...], bool]:
    stage = StageSpec(**spec["stage"])
    plan = StagePlan(
        stage,
        BLOCKS.get(stage.block),
        spec["in_width"],
        spec["stride"],
        spec["in_size"],
        spec["feature_size"],
        spec["tokens_in"],
        spec["last"],
    )
    module = plan.stage_type(plan, [0.0] * stage.depth)
    side, width = spec["in_size"], spec["in_width"]
    inputs = [_map(batch, width, side, tuple(spec["in_strides"]))]
    if spec["tokens_in"]:
        inputs.append(torch.randn(batch, spec["tokens_in"], width))
    return _initialised(module), tuple(inputs), True


def _build_head(spec: dict, batch: int) -> tuple[nn.Module, tuple[Tensor, ...], bool]:
    last = StageSpec(**spec["stage"])
    head = HEADS.get(spec["head"])(last, width=spec["width"], num_classes=NUM_CLASSES)
    side = spec["feature_size"]
    inputs = [_map(batch, last.width, side, tuple(spec["in_strides"]))]
    if spec["tokens"]:
        inputs.append(torch.randn(batch, spec["tokens"], last.width))
    return _initialised(head), tuple(inputs), True


_BUILDERS = {"stem": _build_stem, "stage": _build_stage, "head": _build_head}
