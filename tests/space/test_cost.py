"""Budget parsing and MAC counting, attention included whatever kernel computes it."""

from __future__ import annotations

import math

import pytest
import torch

from blocks import build_model, explicit_attention
from blocks.layers import stage_size
from space import presets
from space.cost import count, count_model, mac_analysis, parse_budget, parse_latency


@pytest.mark.parametrize(
    ("text", "macs"),
    [
        ("4GFLOPs", 4_000_000_000),
        ("4G", 4_000_000_000),
        ("4e9", 4_000_000_000),
        ("600MFLOPs", 600_000_000),
        ("600M", 600_000_000),
        ("4 GMACs", 4_000_000_000),
        ("4gflops", 4_000_000_000),
        (" 1.5 gmac ", 1_500_000_000),
        ("0.6GFLOPs", 600_000_000),
    ],
)
def test_parse_budget(text: str, macs: int) -> None:
    assert parse_budget(text) == macs


@pytest.mark.parametrize("text", ["", "four G", "4GB", "4 G G", "G4", "4e", "FLOPs"])
def test_unreadable_budget_quotes_the_input(text: str) -> None:
    with pytest.raises(ValueError, match=f"cannot read the budget {text!r}"):
        parse_budget(text)


@pytest.mark.parametrize("text", ["0", "0G", "-4G", "-1e9"])
def test_zero_or_negative_budget(text: str) -> None:
    with pytest.raises(ValueError, match=f"{text!r} must be a positive"):
        parse_budget(text)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30ms", 30.0), ("30 ms", 30.0), ("0.03s", 30.0), ("500us", 0.5), ("12.5", 12.5), ("2S", 2e3)],
)
def test_parse_latency(text: str, ms: float) -> None:
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "30 min", "-30ms", "ms"])
def test_unreadable_latency_quotes_the_input(text: str) -> None:
    with pytest.raises(ValueError, match=f"cannot read the latency budget {text!r}"):
        parse_latency(text)


def test_zero_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="'0ms' must be a positive time"):
        parse_latency("0ms")


def test_count_includes_attention_computed_by_the_fused_kernel() -> None:
    """fvcore alone sees the fused kernel as zero; our count adds exactly the attention products
    q k^T and (attention) v, 2 * n * n/k^2 * d per CMT block, and equals the explicit-path count."""
    arch = presets.get("cmt_ti")
    model = build_model(arch).eval()
    image = torch.zeros(1, 3, arch.resolution, arch.resolution)
    with torch.no_grad():
        fvcore_alone = mac_analysis(model, image, attention_handle=False).total()
    attention = 0
    for i, stage in enumerate(arch.stages):
        side = stage_size(arch.resolution, i)
        n, n_kv = side**2, math.ceil(side / stage.options.kv_reduction) ** 2
        attention += stage.depth * 2 * n * n_kv * stage.width
    assert attention > 0
    assert count(arch).macs == fvcore_alone + attention
    with explicit_attention():
        assert count_model(build_model(arch), arch.resolution).macs == count(arch).macs


@pytest.mark.parametrize("name", ["dualvit_s", "aewin_t"])
def test_fused_and_explicit_counts_agree(name: str) -> None:
    arch = presets.get(name)
    with explicit_attention():
        explicit = count_model(build_model(arch), arch.resolution)
    assert explicit == count(arch)


def test_count_is_cached_by_genotype() -> None:
    arch = presets.get("cmt_ti")
    assert count(arch) is count(presets.get("cmt_ti"))
