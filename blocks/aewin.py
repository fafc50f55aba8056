"""AEWin: Axially Expanded Windows for Local-Global Interaction in Vision Transformers
(Zhang and Gong, arXiv 2209.08726).

The heads of one attention layer are split into three groups that run in parallel on their own
channels: horizontal-axis heads attend within horizontal stripes (``stripe`` rows spanning the
width), vertical-axis heads within vertical stripes, and window heads within non-overlapping
M x M windows (M = ``window``). The paper's split is K/4, K/4, K/2 heads; here the split ratio is
a searchable option. The group outputs are concatenated and projected. Block:
x = x + Attn(LN(x)); x = x + MLP(LN(x)). The layout is CSWin's: 7x7 stride-4 conv stem ->
LayerNorm, a 3x3 stride-2 conv -> LayerNorm between stages, LayerNorm -> pool -> linear head.

No official code or per-variant table was published; the choices the paper leaves open are:

- heads split by channels: group g gets ``width * split[g]`` channels (a whole number) and
  ``max(1, round(heads * split[g]))`` heads, so CSWin-T's 2 heads of stage 1 become three
  one-head groups of 16, 16 and 32 channels rather than half heads;
- position: the window group uses a Swin relative position bias table ((2M-1)^2, heads) and
  Swin's shifted windows (by M // 2) in every second block; the axial groups use CSWin's LePE, a
  3x3 depthwise conv on V added to their output (applied to the whole map, where CSWin applies
  it per stripe), which works at any resolution;
- stripe width per stage, CSWin's 1, 2, 7, 7 in the ``aewin_t`` preset;
- maps the window or stripe does not divide are zero-padded on the bottom and right and cropped
  back; padded keys are masked. A map smaller than the window uses a window of the map's size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.attention import attend
from blocks.formulas import Cost, attention, conv, linear, norm, per_ratio
from blocks.layers import (
    DepthwiseConv2d,
    DropPath,
    LayerNorm2d,
    Transition,
    pad_to_multiple,
    shape_cached,
)
from blocks.registry import (
    BLOCKS,
    STEMS,
    BlockOptions,
    Fused,
    MapChoice,
    SharedChoices,
    Stage,
    StageLike,
    StagePlan,
    TrialLike,
)
from common.fields import check_integer

__all__ = [
    "AEWinBlock",
    "AEWinOptions",
    "AEWinStage",
    "AxialWindowAttention",
    "PatchStem",
]

MASKED = -100.0  # Swin's additive mask value
GROUP_KINDS = ("horizontal", "vertical", "window")


class HeadGroup(NamedTuple):
    kind: str
    channels: int
    heads: int


@dataclasses.dataclass(frozen=True)
class AEWinOptions(BlockOptions):
    """split: channel ratios of the horizontal, vertical and window groups (sum 1);
    window: window side M; stripe: stripe width of the axial groups."""

    split: tuple[float, float, float] = (0.25, 0.25, 0.5)
    window: int = 7
    stripe: int = 1

    def __post_init__(self) -> None:
        try:
            split = tuple(float(r) for r in self.split)
        except (TypeError, ValueError):
            raise ValueError(f"split must be three numbers, got {self.split!r}") from None
        object.__setattr__(self, "split", split)
        if len(split) != 3 or min(split) < 0:
            raise ValueError(
                f"split must be three ratios >= 0 (horizontal, vertical, window), got {split}"
            )
        if abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {split} (sum {sum(split):g})")
        check_integer("window", self.window)
        check_integer("stripe", self.stripe)

    def groups(self, width: int, heads: int) -> list[HeadGroup]:
        """The non-empty head groups of a ``width``-channel, ``heads``-head layer."""
        out = []
        for kind, ratio in zip(GROUP_KINDS, self.split, strict=True):
            if ratio == 0:
                continue
            channels = width * ratio
            group_heads = max(1, round(heads * ratio))
            if abs(channels - round(channels)) > 1e-6 or round(channels) % group_heads:
                raise ValueError(
                    f"split: the {kind} group gets width {width} x {ratio:g} = {channels:g} "
                    f"channels, which must be a whole number divisible by its {group_heads} heads"
                )
            out.append(HeadGroup(kind, round(channels), group_heads))
        return out

    def check(self, stage: StageLike) -> None:
        self.groups(stage.width, stage.heads)


@STEMS.register("patch")
class PatchStem(nn.Module):
    """7x7 conv stride 4 -> LayerNorm (CSWin); output stride 4."""

    stride = 4

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 7, stride=4, padding=2)
        self.norm = LayerNorm2d(width)

    @staticmethod
    def cost(width: int, resolution: int) -> Cost:
        return conv(3, width, 7, math.ceil(resolution / 4) ** 2) + norm(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(pad_to_multiple(x, 4, 4)))


# The helpers below depend only on shapes: each is built once per (shape, device), on that
# device, so that a forward pass never copies from the host (nor waits for it on a GPU).


@shape_cached
def relative_index(
    window: int, height: int, width: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Index into the ((2M-1)^2, heads) table of each (query, key) pair of an H x W window."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, N)
    delta = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return delta[0] * (2 * window - 1) + delta[1]  # (N, N)


@shape_cached
def window_mask(
    height: int,
    width: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    device: torch.device | str = "cpu",
) -> Tensor | None:
    """Additive mask (windows, N, N) for a rolled, padded map, or None when nothing is masked.

    Keys from a different region of the rolled map (Swin's shift mask) and padded keys get
    ``MASKED``.
    """
    wh, ww = window
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    if shift == (0, 0) and (hp, wp) == (height, width):
        return None

    def labels(size: int, padded: int, win: int, s: int) -> tuple[Tensor, Tensor]:
        pos = torch.arange(padded, device=device)
        region = (pos >= padded - win).long() + (pos >= padded - s).long() if s else pos * 0
        return region, (pos + s) % padded >= size

    region_h, pad_h = labels(height, hp, wh, shift[0])
    region_w, pad_w = labels(width, wp, ww, shift[1])
    region = region_h[:, None] * 3 + region_w[None, :]
    padded = pad_h[:, None] | pad_w[None, :]

    def windows(t: Tensor) -> Tensor:
        return t.view(hp // wh, wh, wp // ww, ww).transpose(1, 2).reshape(-1, wh * ww)

    region, padded = windows(region), windows(padded)
    masked = (region[:, :, None] != region[:, None, :]) | padded[:, None, :]
    return masked.float() * MASKED


@shape_cached
def stripe_mask(
    height: int, rows: int, width: int, device: torch.device | str = "cpu"
) -> Tensor | None:
    """Additive mask (stripes, 1, 1, rows * W) of the padded rows of an H x W map cut into
    stripes of ``rows`` rows, or None when the stripes divide the map."""
    pad = -height % rows
    if not pad:
        return None
    padded = torch.arange(height + pad, device=device) >= height  # (H + pad,)
    keys = padded[:, None].expand(height + pad, width).reshape(-1, 1, 1, rows * width)
    return keys.float() * MASKED


class AxialWindowAttention(nn.Module):
    """Horizontal-stripe, vertical-stripe and window heads in parallel on split channels.
    Maps (B, H, W, C) to itself."""

    def __init__(self, dim: int, heads: int, options: AEWinOptions, *, shift: bool = False) -> None:
        super().__init__()
        self.groups = options.groups(dim, heads)
        self.window = options.window
        self.stripe = options.stripe
        self.shift = shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.ModuleDict(
            {g.kind: DepthwiseConv2d(g.channels) for g in self.groups if g.kind != "window"}
        )
        window_heads = [g.heads for g in self.groups if g.kind == "window"]
        if window_heads:
            table = torch.zeros((2 * self.window - 1) ** 2, window_heads[0])
            self.bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))

    @staticmethod
    def cost(dim: int, heads: int, options: AEWinOptions, side: int) -> Cost:
        """On a side x side map; stripes and windows count their padded tokens, as they run."""
        n = side * side
        out = linear(dim, 3 * dim, n) + linear(dim, dim, n)
        for group in options.groups(dim, heads):
            c = group.channels
            if group.kind == "window":
                win = min(options.window, side)
                padded = math.ceil(side / win) * win
                out += attention(padded * padded, win * win, c)
                out += Cost((2 * options.window - 1) ** 2 * group.heads, 0)
            else:
                rows = min(options.stripe, side)
                padded = math.ceil(side / rows) * rows
                out += attention(padded * side, rows * side, c) + conv(c, c, 3, n, groups=c)
        return out

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        outs, start = [], 0
        for group in self.groups:
            part = slice(start, start + group.channels)
            start += group.channels
            qg, kg, vg = q[..., part], k[..., part], v[..., part]
            if group.kind == "window":
                outs.append(self.window_attention(qg, kg, vg, group.heads))
                continue
            if group.kind == "vertical":
                qg, kg, vg = (t.transpose(1, 2) for t in (qg, kg, vg))
            out = self.stripe_attention(qg, kg, vg, group.heads)
            lepe = self.lepe[group.kind](vg.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            out = out + lepe
            outs.append(out.transpose(1, 2) if group.kind == "vertical" else out)
        return self.proj(torch.cat(outs, dim=-1))

    def stripe_attention(self, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
        """Attention within horizontal stripes of ``stripe`` rows; (B, H, W, c) -> (B, H, W, c)."""
        b, h, w, c = q.shape
        rows = min(self.stripe, h)
        pad = -h % rows
        n_stripes = (h + pad) // rows

        def split(t: Tensor) -> Tensor:
            t = F.pad(t, (0, 0, 0, 0, 0, pad))
            return t.reshape(b, n_stripes, rows * w, heads, c // heads).transpose(2, 3)

        bias = stripe_mask(h, rows, w, q.device)
        out = attend(split(q), split(k), split(v), bias)  # (B, S, heads, rows*W, d)
        out = torch.cat(out.unbind(2), dim=-1).reshape(b, h + pad, w, c)  # heads concatenated
        return out[:, :h]

    def window_attention(self, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
        """Attention within (shifted) windows with a relative position bias; (B, H, W, c)."""
        b, h, w, c = q.shape
        wh, ww = min(self.window, h), min(self.window, w)
        shift = (wh // 2 if self.shift and h > wh else 0, ww // 2 if self.shift and w > ww else 0)
        hp, wp = -(-h // wh) * wh, -(-w // ww) * ww

        def split(t: Tensor) -> Tensor:
            t = F.pad(t, (0, 0, 0, wp - w, 0, hp - h))
            if shift != (0, 0):
                t = torch.roll(t, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            t = t.reshape(b, hp // wh, wh, wp // ww, ww, heads, c // heads)
            return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, -1, heads, wh * ww, c // heads)

        index = relative_index(self.window, wh, ww, q.device)
        bias = self.bias_table[index].permute(2, 0, 1)  # (heads, N, N)
        mask = window_mask(h, w, (wh, ww), shift, q.device)
        if mask is not None:
            bias = bias + mask[:, None]  # (windows, heads, N, N)
        out = attend(split(q), split(k), split(v), bias)  # (B, windows, heads, N, d)
        # heads concatenated by a copy: a view of the kernel's output is one that torch.export's
        # decomposition cannot take (the ONNX export of a one-window map failed)
        out = torch.cat(out.unbind(2), dim=-1).view(b, hp // wh, wp // ww, wh, ww, c)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shift != (0, 0):
            out = torch.roll(out, shifts=shift, dims=(1, 2))
        return out[:, :h, :w]


class AEWinBlock(nn.Module):
    """x = x + Attn(LN(x)); x = x + MLP(LN(x)). Maps (B, C, H, W) to itself."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        options: AEWinOptions,
        *,
        shift: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = AxialWindowAttention(dim, heads, options, shift=shift)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(dim: int, heads: int, mlp_ratio: float, options: AEWinOptions, side: int) -> Cost:
        hidden, n = int(dim * mlp_ratio), side * side
        mlp = linear(dim, hidden, n) + linear(hidden, dim, n)
        return norm(dim) * 2 + AxialWindowAttention.cost(dim, heads, options, side) + mlp

    def forward(self, x: Tensor) -> Tensor:
        t = x.permute(0, 2, 3, 1)
        t = t + self.drop_path(self.attn(self.norm1(t)))
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t.permute(0, 3, 1, 2)


@BLOCKS.register("aewin")
class AEWinStage(Stage):
    """3x3 stride-2 conv -> LayerNorm, then ``depth`` AEWin blocks, windows shifted in every
    second block."""

    options_type = AEWinOptions
    # Searched head splits (horizontal, vertical, window channel ratios), by name.
    SPLITS: ClassVar[dict[str, tuple[float, float, float]]] = {
        "1/4,1/4,1/2": (0.25, 0.25, 0.5),  # the AEWin paper
        "1/2,1/2,0": (0.5, 0.5, 0.0),  # stripes only (CSWin-like)
        "0,0,1": (0.0, 0.0, 1.0),  # windows only (Swin-like)
        "1/8,1/8,3/4": (0.125, 0.125, 0.75),
        "3/8,3/8,1/4": (0.375, 0.375, 0.25),
    }
    STRIPES = (1, 2, 7)  # searched stripe widths
    WINDOW = 7  # the window side is not searched
    one_shot = True  # its tensors' sharing is declared (oneshot.supernet)
    fused_tensors: ClassVar[dict[str, Fused]] = {
        r"blocks\.\d+\.attn\.qkv\.(weight|bias)": Fused(0, 3)
    }

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec = plan.spec
        self.transition = Transition(plan.in_width, spec.width, stride=plan.stride, kernel=3)
        self.blocks = nn.Sequential(
            *(
                AEWinBlock(
                    spec.width,
                    spec.heads,
                    ratio,
                    spec.options,
                    shift=i % 2 == 1,
                    drop_path=rate,
                )
                for i, (ratio, rate) in enumerate(zip(spec.block_ratios, drop_path, strict=True))
            )
        )

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec, side = plan.spec, plan.feature_size
        entry = Transition.cost(
            plan.in_width, spec.width, stride=plan.stride, kernel=3, pixels=side * side
        )
        blocks = per_ratio(
            spec, lambda ratio: AEWinBlock.cost(spec.width, spec.heads, ratio, spec.options, side)
        )
        return entry + blocks

    @classmethod
    def draw_options(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> AEWinOptions:
        split = cls.SPLITS[trial.suggest_categorical(f"s{stage}_split", tuple(cls.SPLITS))]
        stripe = trial.suggest_categorical(f"s{stage}_stripe", cls.STRIPES)
        return AEWinOptions(split, cls.WINDOW, stripe)

    @classmethod
    def cheapest_options(cls, stage: int) -> AEWinOptions:
        return AEWinOptions(cls.SPLITS["0,0,1"], cls.WINDOW, min(cls.STRIPES))

    @classmethod
    def costliest_options(cls, stage: int) -> AEWinOptions:
        """Stripes only, at the widest stripe: each token attends to the most keys."""
        return AEWinOptions(cls.SPLITS["1/2,1/2,0"], cls.WINDOW, max(cls.STRIPES))

    @classmethod
    def map_choices(cls, stage: int, side: int) -> list[MapChoice]:
        """The stripe width (min(stripe, side) rows: a stripe as wide as the map is all of it)
        and the head split (whether stripes of the narrowest width and the window stay local:
        on a map no wider than them every head type attends to the whole map)."""
        stripes = tuple(f"{min(s, side)}-row stripes" for s in cls.STRIPES)
        kinds = ("horizontal", "vertical", "window")
        local = (side > min(cls.STRIPES), side > min(cls.STRIPES), side > cls.WINDOW)
        split = tuple(
            kind if is_local else "global attention"
            for kind, is_local in zip(kinds, local, strict=True)
        )
        return [
            MapChoice("AEWin stripe", cls.STRIPES, stripes),
            MapChoice("AEWin head split", kinds, split),
        ]

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, None]:
        return self.blocks(self.transition(x)), None
