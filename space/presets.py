"""Named architectures that reproduce published models.

Each builder's body is a literal table of the model's hyper-parameters. MACs are counted with
attention included (``space.cost.count``); the published figures these presets must match live
in ``PUBLISHED`` and are checked by ``tests/space/test_presets.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from blocks.aewin import AEWinOptions
from blocks.botnet import BoTOptions
from blocks.cmt import CMTOptions
from blocks.coatnet import CoAtOptions
from blocks.cot import CoTOptions
from blocks.dualvit import DualOptions
from blocks.halonet import HaloOptions
from blocks.maxvit import MaxViTOptions
from space.genotype import ArchSpec, StageSpec

__all__ = ["PUBLISHED", "Published", "get", "names"]


class Published(NamedTuple):
    """A model's published size: parameters and MACs (the papers' "FLOPs"), with the source;
    ``macs`` is None where nothing was published."""

    params: float
    macs: float | None
    source: str


def _cmt(
    *,
    resolution: int,
    stem_width: int,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    mlp_ratio: float,
    heads: tuple[int, ...] = (1, 2, 4, 8),
    kv_reductions: tuple[int, ...] = (8, 4, 2, 1),
) -> ArchSpec:
    stages = tuple(
        StageSpec("cmt", depth, width, head, mlp_ratio, CMTOptions(kv_reduction=k))
        for depth, width, head, k in zip(depths, widths, heads, kv_reductions, strict=True)
    )
    return ArchSpec(
        stages, resolution, stem="cmt", stem_width=stem_width, head="conv", head_width=1280
    )


def cmt_ti() -> ArchSpec:
    return _cmt(
        resolution=160,
        stem_width=16,
        widths=(46, 92, 184, 368),
        depths=(2, 2, 10, 2),
        mlp_ratio=3.6,
    )


def cmt_xs() -> ArchSpec:
    return _cmt(
        resolution=192,
        stem_width=16,
        widths=(52, 104, 208, 416),
        depths=(3, 3, 12, 3),
        mlp_ratio=3.77,
    )


def cmt_s() -> ArchSpec:
    return _cmt(
        resolution=224,
        stem_width=32,
        widths=(64, 128, 256, 512),
        depths=(3, 3, 16, 3),
        mlp_ratio=4.0,
    )


def cmt_b() -> ArchSpec:
    return _cmt(
        resolution=256,
        stem_width=38,
        widths=(76, 152, 304, 608),
        depths=(4, 4, 20, 4),
        mlp_ratio=4.0,
    )


def cotnet_50() -> ArchSpec:
    """ResNet-50 layout, every bottleneck's 3x3 conv a CoT layer (mlp_ratio: width / bottleneck)."""
    stages = tuple(
        StageSpec("cot", depth, width, 1, 4.0, CoTOptions(kernel=3))
        for depth, width in zip((3, 4, 6, 3), (256, 512, 1024, 2048), strict=True)
    )
    return ArchSpec(stages, 224, stem="resnet", stem_width=64, head="pool", head_width=0)


def dualvit_s() -> ArchSpec:
    """Dual blocks in stages 1-2, Merge blocks in 3-4, semantic tokens pooled by 7 (64 at
    224px). As in the official code, stage 3's blocks alternate MLP ratios 4 and 3, and the
    class-attention head's MLP is 2 x 448 wide (its own ratio, the last of
    ``mlp_ratios = [8, 8, 4, 3, 2]``)."""
    table = (
        # depth, width, heads, mlp_ratio, mode
        (3, 64, 2, 8.0, "dual"),
        (4, 128, 4, 8.0, "dual"),
        (6, 320, 10, (4.0, 3.0), "merge"),
        (3, 448, 14, 3.0, "merge"),
    )
    stages = tuple(
        StageSpec("dual", depth, width, heads, ratio, DualOptions(pool=7, mode=mode))
        for depth, width, heads, ratio, mode in table
    )
    return ArchSpec(
        stages, 224, stem="dual", stem_width=32, head="class_attention", head_width=2 * 448
    )


def aewin_t() -> ArchSpec:
    """No official table: the CSWin-T layout (embed 64, depths 1/2/21/1, heads 2/4/8/16, MLP
    ratio 4, CSWin's stripe widths 1/2/7/7) with the paper's 1/4, 1/4, 1/2 split and window 7."""
    table = (
        # depth, width, heads, stripe
        (1, 64, 2, 1),
        (2, 128, 4, 2),
        (21, 256, 8, 7),
        (1, 512, 16, 7),
    )
    stages = tuple(
        StageSpec("aewin", depth, width, heads, 4.0, AEWinOptions((0.25, 0.25, 0.5), 7, stripe))
        for depth, width, heads, stripe in table
    )
    return ArchSpec(stages, 224, stem="patch", stem_width=64, head="norm", head_width=0)


def _resnet26t(block_type: str, heads: int, options: type, **own: int) -> ArchSpec:
    """timm's ResNet-26-T layout (tiered stem of 64, 2/2/2/2 bottlenecks of widths
    256/512/1024/2048, bottleneck ratio 1/4, average pool head): stages 1-2 convolution, stage 3
    a conv then an attention block, stage 4 attention."""
    table = (
        # depth, width, layout
        (2, 256, "conv"),
        (2, 512, "conv"),
        (2, 1024, "alternate"),
        (2, 2048, "attention"),
    )
    stages = tuple(
        StageSpec(block_type, depth, width, heads, 4.0, options(layout=layout, **own))
        for depth, width, layout in table
    )
    return ArchSpec(stages, 256, stem="tiered", stem_width=64, head="pool", head_width=0)


def botnet26t() -> ArchSpec:
    """timm's ``botnet26t_256``: ResNet-26-T with 4-head global attention (relative positions)."""
    return _resnet26t("bot", 4, BoTOptions)


def halonet26t() -> ArchSpec:
    """timm's ``halonet26t``: ResNet-26-T with 8-head halo attention, blocks of 8, halo 2."""
    return _resnet26t("halo", 8, HaloOptions, block=8, halo=2)


def maxvit_tiny() -> ArchSpec:
    """timm's ``maxvit_tiny_tf_224`` (MaxViT-T): stem of 64, depths 2/2/5/2, widths
    64/128/256/512, heads of 32 channels, MLP ratio 4, windows and grids of 7, the norm-MLP head
    of 512."""
    table = (
        # depth, width
        (2, 64),
        (2, 128),
        (5, 256),
        (2, 512),
    )
    stages = tuple(
        StageSpec("maxvit", depth, width, width // 32, 4.0, MaxViTOptions(window=7, grid=7))
        for depth, width in table
    )
    return ArchSpec(stages, 224, stem="maxvit", stem_width=64, head="norm-mlp", head_width=512)


def coatnet_0() -> ArchSpec:
    """timm's ``coatnet_0_rw_224``: stem of 64, C-C-T-T with depths 2/3/7/2 (deeper than the
    paper's CoAtNet-0), widths 96/192/384/768, heads of 32 channels, ratios 4."""
    table = (
        # depth, width, kind
        (2, 96, "conv"),
        (3, 192, "conv"),
        (7, 384, "attention"),
        (2, 768, "attention"),
    )
    stages = tuple(
        StageSpec(
            "coatnet",
            depth,
            width,
            width // 32 if kind == "attention" else 1,
            4.0,
            CoAtOptions(kind),
        )
        for depth, width, kind in table
    )
    return ArchSpec(stages, 224, stem="coatnet", stem_width=64, head="coat", head_width=0)


_PRESETS: dict[str, Callable[[], ArchSpec]] = {
    "cmt_ti": cmt_ti,
    "cmt_xs": cmt_xs,
    "cmt_s": cmt_s,
    "cmt_b": cmt_b,
    "cotnet_50": cotnet_50,
    "dualvit_s": dualvit_s,
    "aewin_t": aewin_t,
    "botnet26t": botnet26t,
    "halonet26t": halonet26t,
    "maxvit_tiny": maxvit_tiny,
    "coatnet_0": coatnet_0,
}

PUBLISHED: dict[str, Published] = {
    "cmt_ti": Published(9.49e6, 0.64e9, "CMT paper, Table 2"),
    "cmt_xs": Published(15.24e6, 1.54e9, "CMT paper, Table 2"),
    "cmt_s": Published(25.14e6, 4.04e9, "CMT paper, Table 2 (official code: 26.26M params)"),
    "cmt_b": Published(45.72e6, 9.33e9, "CMT paper, Table 2"),
    "cotnet_50": Published(22.2e6, 3.3e9, "CoTNet README"),
    "dualvit_s": Published(
        24.6e6, 5.4e9, "Dual-ViT README: 25.1M less the 0.5M token-labelling head"
    ),
    "aewin_t": Published(22e6, None, "AEWin abstract (no per-variant table was published)"),
    "botnet26t": Published(12.49e6, 3.32e9, "timm's botnet26t_256 (its table, at 256 px)"),
    "halonet26t": Published(12.48e6, 3.19e9, "timm's halonet26t (its table, at 256 px)"),
    "maxvit_tiny": Published(30.92e6, 5.60e9, "timm's maxvit_tiny_tf_224 (its table)"),
    "coatnet_0": Published(27.44e6, 4.43e9, "timm's coatnet_0_rw_224 (its table)"),
}


def names() -> tuple[str, ...]:
    """The preset names, in table order."""
    return tuple(_PRESETS)


def get(name: str) -> ArchSpec:
    """The named preset; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(_PRESETS)}") from None
