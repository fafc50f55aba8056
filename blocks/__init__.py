"""PyTorch modules of the hybrid block families (CMT, AEWin, CoT, Dual-ViT) and the backbone.

Importing the package registers every block type, stem and head; ``build_model(arch)`` turns an
architecture genotype into a model.
"""

from __future__ import annotations

from blocks import aewin, cmt, cot, dualvit  # noqa: F401  (registers the block types)
from blocks.attention import (
    attend,
    explicit_attention,
    fused_attention_enabled,
    set_fused_attention,
)
from blocks.backbone import Backbone, build_model
from blocks.registry import BLOCKS, HEADS, STEMS, BlockOptions

__all__ = [
    "BLOCKS",
    "HEADS",
    "STEMS",
    "Backbone",
    "BlockOptions",
    "attend",
    "build_model",
    "explicit_attention",
    "fused_attention_enabled",
    "set_fused_attention",
]
