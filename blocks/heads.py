"""The generic classifier heads, shared by every block family (as timm keeps its heads in one
file). A family's own head (Dual-ViT's class attention over its tokens) stays in its family file.
Each head maps the last stage's (B, C, H, W) map, and its tokens if any, to (B, num_classes)
logits; ``cost`` gives its parameters and MACs without building it."""

from __future__ import annotations

from torch import Tensor, nn

from blocks.formulas import Cost, conv, linear, norm
from blocks.registry import HEADS, StageLike

__all__ = ["ConvHead", "NormHead", "NormMlpHead", "PoolHead"]


@HEADS.register("conv")
class ConvHead(nn.Module):
    """1x1 conv to ``width`` -> BN -> Swish -> global average pool -> dropout -> linear (CMT)."""

    has_width = True

    def __init__(
        self, last: StageLike, *, width: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(last.width, width, 1)
        self.norm = nn.BatchNorm2d(width)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    @staticmethod
    def cost(
        last: StageLike, *, width: int, num_classes: int, feature_size: int, tokens: int
    ) -> Cost:
        expand = conv(last.width, width, 1, feature_size * feature_size) + norm(width)
        return expand + linear(width, num_classes, 1)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        x = self.act(self.norm(self.conv(x)))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


@HEADS.register("pool")
class PoolHead(nn.Module):
    """Global average pool -> dropout -> linear (ResNet)."""

    has_width = False

    def __init__(
        self, last: StageLike, *, width: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last.width, num_classes)

    @staticmethod
    def cost(
        last: StageLike, *, width: int, num_classes: int, feature_size: int, tokens: int
    ) -> Cost:
        return linear(last.width, num_classes, 1)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


@HEADS.register("norm")
class NormHead(nn.Module):
    """LayerNorm -> global average pool -> dropout -> linear (Swin, CSWin)."""

    has_width = False
    eps = 1e-5

    def __init__(
        self, last: StageLike, *, width: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(last.width, eps=self.eps)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last.width, num_classes)

    @staticmethod
    def cost(
        last: StageLike, *, width: int, num_classes: int, feature_size: int, tokens: int
    ) -> Cost:
        return norm(last.width) + linear(last.width, num_classes, 1)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        x = self.norm(x.permute(0, 2, 3, 1)).mean(dim=(1, 2))
        return self.fc(self.dropout(x))


@HEADS.register("norm-mlp")
class NormMlpHead(nn.Module):
    """Global average pool -> LayerNorm -> linear to ``width`` -> tanh -> dropout -> linear
    (timm's ``NormMlpClassifierHead``, MaxViT's)."""

    has_width = True

    def __init__(
        self, last: StageLike, *, width: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(last.width)
        self.pre_logits = nn.Linear(last.width, width)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    @staticmethod
    def cost(
        last: StageLike, *, width: int, num_classes: int, feature_size: int, tokens: int
    ) -> Cost:
        return norm(last.width) + linear(last.width, width, 1) + linear(width, num_classes, 1)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        x = self.pre_logits(self.norm(x.mean(dim=(2, 3)))).tanh()
        return self.fc(self.dropout(x))
