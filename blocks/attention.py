"""The attention kernel every block calls: fused ``scaled_dot_product_attention`` or explicit.

The fused path is the default. The explicit path computes the same thing with plain matrix
products and is kept for checking (tests compare the two) and for tools that only understand
``matmul``. Switch with ``explicit_attention()`` or ``set_fused_attention(False)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attend",
    "explicit_attention",
    "fused_attention_enabled",
    "merge_heads",
    "set_fused_attention",
    "split_heads",
]

_fused = True


def set_fused_attention(enabled: bool) -> None:
    """Choose the fused kernel (``True``, default) or the explicit softmax path for ``attend``."""
    global _fused
    _fused = bool(enabled)


def fused_attention_enabled() -> bool:
    return _fused


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Run ``attend`` through the explicit softmax path inside the ``with`` block."""
    previous = _fused
    set_fused_attention(False)
    try:
        yield
    finally:
        set_fused_attention(previous)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """``softmax(q @ k^T / sqrt(d) + bias) @ v`` over the last two dimensions.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); bias broadcasts to (..., L, S).
    Leading dimensions beyond (batch, heads) are folded before the fused call, whose kernels
    want 4-D inputs.
    """
    if not _fused:
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        return logits.softmax(dim=-1) @ v
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    if q.dim() <= 4:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])

    def fold(t: Tensor) -> Tensor:
        return t.expand(*lead, *t.shape[-2:]).reshape(-1, lead[-1], *t.shape[-2:])

    out = F.scaled_dot_product_attention(
        fold(q), fold(k), fold(v), attn_mask=None if bias is None else fold(bias)
    )
    return out.reshape(*lead, *out.shape[-2:])


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
