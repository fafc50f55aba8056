"""Parameters and MACs of a genotype, and the budget parser.

The convention: the "FLOPs" of CMT, Swin, Dual-ViT and CoTNet are
multiply-accumulates (MACs). ``count`` traces the model at the genotype's own resolution with
fvcore and counts the MACs of convolutions, linear layers, matrix products and einsums, and of
attention whatever kernel computes it: fvcore does not know
``aten::scaled_dot_product_attention`` and would count it as zero, so a handle is registered
for it here (and one for ``aten::einsum``, which fvcore rounds to four digits). Normalisation
layers, activations, pooling and element-wise operations are not counted (BatchNorm folds into
the preceding conv at inference; the papers' tables leave them out too).

``estimate`` sums the blocks' own closed-form formulas instead of tracing: it is meant for
sampling and scaling loops, is thousands of times faster, and equals ``count`` exactly (the
tests check it on every preset and on sampled architectures). Reported figures come from
``count``.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from typing import Any

import torch

with warnings.catch_warnings():
    # fvcore scripts a loss function at import; torch >= 2.14 warns that torch.jit.script is
    # deprecated (a FutureWarning, shown to every user of the command lines). Not our call.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from blocks import build_model
from blocks.backbone import estimate_cost
from blocks.formulas import Cost
from space.genotype import ArchSpec

__all__ = [
    "Cost",
    "count",
    "count_model",
    "einsum_macs",
    "estimate",
    "mac_analysis",
    "parse_budget",
    "parse_latency",
    "sdpa_macs",
]

# Operators fvcore counts by default that are not multiply-accumulates of the linear algebra.
# (fvcore's ``set_op_handle(name, None)`` does not remove a default handle, so these get a
# handle that returns zero.)
NOT_COUNTED = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: q k^T and (attention) v.

    With q (..., L, d), k (..., S, d) and v (..., S, dv) that is ``batch * L * S * (d + dv)``.
    """
    q, k, v = (get_shape(value) for value in inputs[:3])
    batch = math.prod(torch.broadcast_shapes(tuple(q[:-2]), tuple(k[:-2]), tuple(v[:-2])))
    length, source = q[-2], k[-2]
    return batch * length * source * (q[-1] + v[-1])


def einsum_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::einsum``: the product of every index's size (one multiply per
    combination of indices), exact where fvcore's own handle rounds numpy's printed FLOP count
    to four digits."""
    equation = inputs[0].toIValue().replace(" ", "")
    operands = equation.split("->")[0].split(",")
    shapes = [get_shape(value) for value in inputs[1].node().inputs()]
    sizes: dict[str, int] = {}
    for letters, shape in zip(operands, shapes, strict=True):
        sizes.update(zip(letters, shape, strict=True))
    return math.prod(sizes.values())


def mac_analysis(
    model: torch.nn.Module, image: torch.Tensor, *, attention_handle: bool = True
) -> FlopCountAnalysis:
    """fvcore's analysis set to our convention; ``attention_handle=False`` leaves fvcore's own
    blind spot for the fused attention kernel, for comparison."""
    analysis = FlopCountAnalysis(model, image)
    if attention_handle:
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
    analysis.set_op_handle("aten::einsum", einsum_macs)
    analysis.set_op_handle(**dict.fromkeys(NOT_COUNTED, _zero))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def count_model(model: torch.nn.Module, resolution: int) -> Cost:
    """Parameters and MACs of ``model`` on one ``resolution`` x ``resolution`` image."""
    image = torch.zeros(1, 3, resolution, resolution)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs = int(mac_analysis(model, image).total())
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Cost(params=params, macs=macs)


@functools.lru_cache(maxsize=4096)
def count(arch: ArchSpec) -> Cost:
    """Parameters and MACs of ``arch`` at its own resolution, counted with fvcore (1000 classes).

    Cached by genotype: a genotype is a frozen, hashable value.
    """
    torch.manual_seed(0)
    return count_model(build_model(arch, num_classes=1000), arch.resolution)


@functools.lru_cache(maxsize=65536)
def estimate(arch: ArchSpec) -> Cost:
    """Parameters and MACs of ``arch`` at its own resolution from the blocks' formulas."""
    return estimate_cost(arch, num_classes=1000)


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BUDGET = re.compile(
    r"""^\s*
    (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)   # 4, 4.5, .5, 4e9
    \s*(?P<unit>[kmgt]?)                               # K, M, G, T
    \s*(?:flops?|macs?)?                               # FLOPs or MACs (the same thing here)
    \s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def parse_budget(text: str) -> int:
    """Parse a compute budget into MACs: ``4GFLOPs``, ``4G``, ``4e9``, ``600MFLOPs``, ``600M``,
    ``4 GMACs`` (case-insensitive; FLOPs mean MACs, the papers' convention).

    Anything else, zero or a negative number raises ``ValueError`` quoting the input.
    """
    match = _BUDGET.match(str(text))
    if match is None:
        raise ValueError(
            f"cannot read the budget {text!r}: write a number with an optional K/M/G/T unit and "
            f"an optional FLOPs or MACs suffix, e.g. 4GFLOPs, 600M, 4e9 or '4 GMACs'"
        )
    value = float(match["number"]) * _UNITS[match["unit"].lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"the budget {text!r} must be a positive number of MACs")
    return round(value)


_LATENCY = re.compile(
    r"^\s*(?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>ms|s|us)?\s*$", re.IGNORECASE
)
_SECONDS_TO_MS = {"ms": 1.0, "s": 1e3, "us": 1e-3}


def parse_latency(text: str) -> float:
    """Parse a latency limit into milliseconds: ``30ms``, ``30 ms``, ``0.03s``, ``500us``, or a
    bare number of milliseconds. Anything else, or zero, raises ``ValueError`` quoting it."""
    match = _LATENCY.match(str(text))
    if match is None:
        raise ValueError(
            f"cannot read the latency budget {text!r}: write a time with an optional unit, "
            f"e.g. 30ms, 0.03s or 500us (a bare number is milliseconds)"
        )
    value = float(match["number"]) * _SECONDS_TO_MS[(match["unit"] or "ms").lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"the latency budget {text!r} must be a positive time")
    return value
