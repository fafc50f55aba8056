"""PyTorch modules of the hybrid block families (CMT, AEWin, CoT, Dual-ViT, BoTNet, HaloNet, MaxViT,
CoAtNet) and the backbone.

Importing the package registers every block type, stem and head; ``build_model(arch)`` turns an
architecture genotype into a model.
"""

from __future__ import annotations

# Importing registers the block types; their registration order is the order in which the
# search space offers them (cmt first).
from blocks import cmt  # noqa: F401

# isort: split
from blocks import aewin, cot, dualvit, heads  # noqa: F401

# isort: split
from blocks import botnet, halonet  # noqa: F401

# isort: split
from blocks import coatnet, maxvit  # noqa: F401
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
