"""Dual Vision Transformer (Yao et al., TPAMI 2023, arXiv 2207.04976).

Follows the official code (YehLi/ImageNetModel, classification/dualvit.py). Two paths: the pixel
tokens x of the feature map and m semantic tokens z of the same width.

- semantic tokens are made once, from the first Dual stage's map: the map is average-pooled by
  ``pool`` (7 in the paper: a 56x56 map at 224px gives an 8x8 grid, m = 64), learnable queries
  (one per grid cell) attend (one head) to the pooled tokens, and the result is fused with them
  by a two-branch softmax gate, then LayerNorm. As in the official code's latest version, the
  grid follows the input size (round(side / pool), at least 1) and the queries, learnt at the
  genotype's resolution, are resized bicubically to it. Later Dual stages receive the tokens
  through LayerNorm -> Linear(d_prev, d) -> LayerNorm (the official closing LayerNorm of the
  previous stage is applied here, by the stage that uses the tokens);
- Dual block (``mode="dual"``): z += SelfAttn(z); z += CrossAttn(q=z, kv=x); z += MLP(z) (ReLU,
  4d); x += CrossAttn(q=x, kv=z); x += FFN(x), with FFN = fc -> DWConv3x3 -> GELU -> fc. The
  semantic attentions have no output projection; residuals on x and z carry a layer scale (1e-6);
  the pixel path costs O(nmd) rather than O(n^2 d);
- Merge block (``mode="merge"``): MHSA over [x; z], then the FFN above for x and
  Linear(d, 2d) -> GELU -> Linear(2d, d) for z;
- stem: 7x7 conv stride 2 -> BN -> ReLU, two [3x3 conv -> BN -> ReLU]; each stage then opens
  with a 3x3 stride-2 conv -> LayerNorm and, unless it is the last, ends with LayerNorm on x;
- a stage's MLP ratio may be a pattern over its blocks (the official stage 3 alternates 4 and 3);
- head: a class token (the mean of all pixel and semantic tokens) passes one class-attention
  block (CaiT) over all tokens, whose MLP has its own hidden width (``head_width``; 2 x 448 in
  Dual-ViT-S), then LayerNorm and the classifier. The auxiliary token-labelling head of the paper
  is not built.

``dualvit_s`` is the official model: its weights load by a name map and give the same logits
(``docs/macs.md``). One difference remains, invisible at 224px: the official pooling is a 7x7
window with stride 7 (floor), ours is adaptive to round(side / pool).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.attention import attend, merge_heads, split_heads
from blocks.formulas import Cost, attention, conv, linear, norm, per_ratio
from blocks.layers import DepthwiseConv2d, DropPath, Transition, map_to_tokens, tokens_to_map
from blocks.registry import (
    BLOCKS,
    HEADS,
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
    "ClassAttentionHead",
    "DualBlock",
    "DualOptions",
    "DualStage",
    "DualStem",
    "MergeBlock",
    "SemanticTokens",
]

LAYER_SCALE = 1e-6
MODES = ("dual", "merge")


@dataclasses.dataclass(frozen=True)
class DualOptions(BlockOptions):
    """pool: the semantic tokens are the map that makes them pooled by ``pool`` (7: 64 tokens
    from a 56x56 map); mode: "dual" blocks or "merge" blocks."""

    pool: int = 7
    mode: str = "dual"

    def __post_init__(self) -> None:
        check_integer("pool", self.pool)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def check_follows(self, previous: StageLike) -> None:
        if previous.block == "dual" and previous.options.pool != self.pool:
            raise ValueError(
                f"pool ({self.pool}) must equal the previous dual stage's pool "
                f"({previous.options.pool}): semantic tokens flow between consecutive dual stages"
            )


def token_grid(side: int, pool: int) -> int:
    """Side of the semantic-token grid made from a side x side map."""
    return max(1, round(side / pool))


@STEMS.register("dual")
class DualStem(nn.Module):
    """7x7 conv stride 2 -> BN -> ReLU, then two [3x3 conv -> BN -> ReLU]; output stride 2."""

    stride = 2

    def __init__(self, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            conv = (
                nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
                if i == 0
                else nn.Conv2d(width, width, 3, padding=1, bias=False)
            )
            layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)

    @staticmethod
    def cost(width: int, resolution: int) -> Cost:
        pixels = math.ceil(resolution / 2) ** 2
        first = conv(3, width, 7, pixels, bias=False) + norm(width)
        return first + (conv(width, width, 3, pixels, bias=False) + norm(width)) * 2

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SemanticTokens(nn.Module):
    """Make semantic tokens from a (B, C, H, W) map: learnable queries attend to the map pooled
    by ``pool``, gated against the pooled tokens themselves. ``side`` is the map side the
    queries are learnt for; at another side they are resized bicubically."""

    def __init__(self, dim: int, pool: int, side: int) -> None:
        super().__init__()
        self.pool = pool
        self.grid = token_grid(side, pool)
        self.queries = nn.Parameter(torch.zeros(self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.query_embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.gate = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 2 * dim)
        )
        self.norm = nn.LayerNorm(dim)

    @staticmethod
    def cost(dim: int, tokens: int) -> Cost:
        queries = Cost(tokens * dim, 0) + norm(dim) + linear(dim, dim, tokens)
        attend_pooled = linear(dim, 2 * dim, tokens) + attention(tokens, tokens, dim)
        gate = linear(dim, dim, 1) + linear(dim, 2 * dim, 1)
        return queries + attend_pooled + gate + norm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        grid = token_grid(int(x.shape[-1]), self.pool), token_grid(int(x.shape[-2]), self.pool)
        pooled = map_to_tokens(F.adaptive_avg_pool2d(x, grid[::-1]))  # (B, m, C)
        queries = self.queries
        if grid != (self.grid, self.grid):
            queries = tokens_to_map(queries[None], self.grid, self.grid)
            queries = F.interpolate(queries, size=grid[::-1], mode="bicubic", align_corners=False)
            queries = map_to_tokens(queries)[0]
        k, v = self.kv(pooled).chunk(2, dim=-1)
        q = self.query_embed(queries).expand(b, -1, -1)
        attended = attend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        branches = torch.stack([attended, pooled], dim=2)  # (B, m, 2, C)
        gate = self.gate(branches.sum(dim=2).mean(dim=1)).view(b, 2, c).softmax(dim=1)
        return self.norm((branches * gate.unsqueeze(1)).sum(dim=2))


class PixelFFN(nn.Module):
    """fc -> DWConv3x3 -> GELU -> fc on (B, N, C) tokens of an H x W map (PVTv2's FFN)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv2d(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    @staticmethod
    def cost(dim: int, hidden: int, pixels: int) -> Cost:
        fc = linear(dim, hidden, pixels) + linear(hidden, dim, pixels)
        return fc + conv(hidden, hidden, 3, pixels, groups=hidden)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        h = tokens_to_map(self.fc1(x), height, width)
        return self.fc2(F.gelu(map_to_tokens(self.dwconv(h))))


class DualAttention(nn.Module):
    """The semantic path (self-attention, cross-attention to pixels, MLP) then pixels attending
    to the updated semantic tokens. Returns (pixel update, new semantic tokens)."""

    def __init__(self, dim: int, heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.semantic_qkv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 3 * dim))
        self.semantic_q_norm = nn.LayerNorm(dim)
        self.semantic_q = nn.Linear(dim, dim)
        self.pixel_kv = nn.Linear(dim, 2 * dim)
        self.semantic_mlp = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, 4 * dim),
            nn.ReLU(inplace=True),
            nn.Linear(4 * dim, dim),
        )
        self.gammas = nn.Parameter(torch.full((3, dim), LAYER_SCALE))
        self.kv_norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(dim: int, pixels: int, tokens: int) -> Cost:
        d, n, m = dim, pixels, tokens
        semantic_self = norm(d) + linear(d, 3 * d, m) + attention(m, m, d)
        semantic_cross = norm(d) + linear(d, d, m) + linear(d, 2 * d, n) + attention(m, n, d)
        semantic_mlp = norm(d) + linear(d, 4 * d, m) + linear(4 * d, d, m) + Cost(3 * d, 0)
        pixel = norm(d) + linear(d, d, n) + linear(d, 2 * d, m) + attention(n, m, d)
        return semantic_self + semantic_cross + semantic_mlp + pixel + linear(d, d, n)

    def forward(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        h = self.heads
        q, k, v = (split_heads(t, h) for t in self.semantic_qkv(z).chunk(3, dim=-1))
        z = z + self.drop_path(self.gammas[0] * merge_heads(attend(q, k, v)))
        q = split_heads(self.semantic_q(self.semantic_q_norm(z)), h)
        k, v = (split_heads(t, h) for t in self.pixel_kv(x).chunk(2, dim=-1))
        z = z + self.drop_path(self.gammas[1] * merge_heads(attend(q, k, v)))
        z = z + self.drop_path(self.gammas[2] * self.semantic_mlp(z))
        k, v = (split_heads(t, h) for t in self.kv(self.kv_norm(z)).chunk(2, dim=-1))
        out = self.proj(merge_heads(attend(split_heads(self.q(x), h), k, v)))
        return out, z


class DualBlock(nn.Module):
    """Dual block for high-resolution stages: maps ((B, C, H, W), (B, m, C)) to the same shapes."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DualAttention(dim, heads, drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = PixelFFN(dim, int(dim * mlp_ratio))
        self.gammas = nn.Parameter(torch.full((2, dim), LAYER_SCALE))
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(dim: int, mlp_ratio: float, pixels: int, tokens: int) -> Cost:
        ffn = PixelFFN.cost(dim, int(dim * mlp_ratio), pixels)
        return norm(dim) * 2 + DualAttention.cost(dim, pixels, tokens) + ffn + Cost(2 * dim, 0)

    def forward(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        height, width = x.shape[-2:]
        t = map_to_tokens(x)
        update, z = self.attn(self.norm1(t), z)
        t = t + self.drop_path(self.gammas[0] * update)
        t = t + self.drop_path(self.gammas[1] * self.ffn(self.norm2(t), height, width))
        return tokens_to_map(t, height, width), z


class MergeBlock(nn.Module):
    """Merge block for low-resolution stages: MHSA over [x; z], then separate FFNs."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = PixelFFN(dim, int(dim * mlp_ratio))
        self.semantic_ffn = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.gammas = nn.Parameter(torch.full((2, dim), LAYER_SCALE))
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(dim: int, mlp_ratio: float, pixels: int, tokens: int) -> Cost:
        d, length = dim, pixels + tokens
        attn = linear(d, d, length) * 2 + linear(d, 2 * d, length) + attention(length, length, d)
        ffn = PixelFFN.cost(d, int(d * mlp_ratio), pixels)
        ffn += linear(d, 2 * d, tokens) + linear(2 * d, d, tokens)
        return norm(d) * 2 + attn + ffn + Cost(2 * d, 0)

    def forward(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        height, width = x.shape[-2:]
        n = height * width
        t = torch.cat([map_to_tokens(x), z], dim=1)
        s = self.norm1(t)
        k, v = (split_heads(u, self.heads) for u in self.kv(s).chunk(2, dim=-1))
        attn = merge_heads(attend(split_heads(self.q(s), self.heads), k, v))
        t = t + self.drop_path(self.gammas[0] * self.proj(attn))
        s = self.norm2(t)
        ffn = torch.cat([self.ffn(s[:, :n], height, width), self.semantic_ffn(s[:, n:])], dim=1)
        t = t + self.drop_path(self.gammas[1] * ffn)
        return tokens_to_map(t[:, :n], height, width), t[:, n:]


@BLOCKS.register("dual")
class DualStage(Stage):
    """3x3 stride-2 conv -> LayerNorm, semantic tokens (made from the map when ``tokens_in`` is
    0, else the previous stage's through LayerNorm -> Linear -> LayerNorm), ``depth`` Dual or
    Merge blocks, LayerNorm on the pixel path."""

    options_type = DualOptions
    POOLS = (7, 10, 14)  # searched token pools, one per network
    MODES = (("dual",), ("dual",), ("dual", "merge"), ("dual", "merge"))  # searched per stage
    one_shot = True  # its tensors' sharing is declared (oneshot.supernet)
    fused_tensors: ClassVar[dict[str, Fused]] = {
        r".+\.(kv|pixel_kv)\.(weight|bias)": Fused(0, 2),
        r".+\.semantic_qkv\.1\.(weight|bias)": Fused(0, 3),
    }

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec, in_width, feature_size = plan.spec, plan.in_width, plan.feature_size
        dim = spec.width
        self.transition = Transition(in_width, dim, stride=plan.stride, kernel=3)
        self.tokens: nn.Module = (
            nn.Sequential(
                nn.LayerNorm(in_width, eps=1e-6), nn.Linear(in_width, dim), nn.LayerNorm(dim)
            )
            if plan.tokens_in
            else SemanticTokens(dim, spec.options.pool, feature_size)
        )
        block = DualBlock if spec.options.mode == "dual" else MergeBlock
        self.blocks = nn.ModuleList(
            block(dim, spec.heads, ratio, rate)
            for ratio, rate in zip(spec.block_ratios, drop_path, strict=True)
        )
        # The last stage leaves its map to the head, which normalises it itself.
        self.norm = nn.Identity() if plan.last else nn.LayerNorm(dim, eps=1e-6)

    @staticmethod
    def token_count(spec: StageLike, feature_size: int, tokens_in: int) -> int:
        return tokens_in or token_grid(feature_size, spec.options.pool) ** 2

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec, in_width = plan.spec, plan.in_width
        d, n = spec.width, plan.feature_size * plan.feature_size
        m = cls.token_count(spec, plan.feature_size, plan.tokens_in)
        out = Transition.cost(in_width, d, stride=plan.stride, kernel=3, pixels=n)
        if not plan.last:
            out += norm(d)
        if plan.tokens_in:
            out += norm(in_width) + linear(in_width, d, m) + norm(d)
        else:
            out += SemanticTokens.cost(d, m)
        block = DualBlock if spec.options.mode == "dual" else MergeBlock
        return out + per_ratio(spec, lambda ratio: block.cost(d, ratio, n, m))

    @classmethod
    def draw_options(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> DualOptions:
        """The token pool is drawn once per network (tokens flow between Dual stages)."""
        if "dual_pool" not in shared.network:
            shared.network["dual_pool"] = trial.suggest_categorical("dual_pool", cls.POOLS)
        mode = trial.suggest_categorical(f"s{stage}_dual_mode", cls.MODES[stage])
        return DualOptions(shared.network["dual_pool"], mode)

    @classmethod
    def cheapest_options(cls, stage: int) -> DualOptions:
        return DualOptions(max(cls.POOLS), "dual")

    @classmethod
    def costliest_options(cls, stage: int) -> DualOptions:
        """The most tokens, and Merge blocks (attention over every pixel) where allowed."""
        return DualOptions(min(cls.POOLS), cls.MODES[stage][-1])

    @classmethod
    def map_choices(cls, stage: int, side: int) -> list[MapChoice]:
        """The token pool, drawn once per network: the token grid ``token_grid(side, pool)`` of
        a first Dual stage, reported at stage 1, where the space's Dual-led networks start."""
        if stage != 0:
            return []
        grids = tuple(f"{token_grid(side, p)}x{token_grid(side, p)} tokens" for p in cls.POOLS)
        return [MapChoice("Dual pool", cls.POOLS, grids)]

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.transition(x)
        z = self.tokens(x if tokens is None else tokens)
        for block in self.blocks:
            x, z = block(x, z)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), z


@HEADS.register("class_attention")
class ClassAttentionHead(nn.Module):
    """Class token = mean of all tokens; one class-attention block (CaiT) -> LayerNorm -> linear."""

    has_width = True

    def __init__(
        self, last: StageLike, *, width: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        dim = last.width
        self.heads = last.heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    @staticmethod
    def cost(
        last: StageLike, *, width: int, num_classes: int, feature_size: int, tokens: int
    ) -> Cost:
        d, length, hidden = last.width, feature_size * feature_size + tokens + 1, width
        attn = linear(d, d, 1) * 2 + linear(d, 2 * d, length) + attention(1, length, d)
        mlp = linear(d, hidden, 1) + linear(hidden, d, 1)
        return norm(d) * 3 + attn + mlp + linear(d, num_classes, 1)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        t = map_to_tokens(x)
        if tokens is not None:
            t = torch.cat([t, tokens], dim=1)
        t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)
        s = self.norm1(t)
        k, v = (split_heads(u, self.heads) for u in self.kv(s).chunk(2, dim=-1))
        cls = merge_heads(attend(split_heads(self.q(s[:, :1]), self.heads), k, v))
        cls = t[:, 0] + self.proj(cls).squeeze(1)
        cls = cls + self.mlp(self.norm2(cls))
        return self.fc(self.dropout(self.norm(cls)))
