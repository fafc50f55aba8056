"""The proxy's geometry: stage maps at the proxy input, the choices it can tell apart, and the
target's count untouched by it."""

from __future__ import annotations

import pytest
import torch

from blocks import build_model
from blocks.backbone import plan_stages
from search.config import SearchConfig
from search.proxy import ProxySettings
from space import presets
from space.cost import count
from space.geometry import visible_choices
from space.sampling import DEFAULT_BLOCKS, block_types


def distinct(
    resolution: int, blocks: tuple[str, ...] = DEFAULT_BLOCKS
) -> dict[tuple[str, int], int]:
    rows = visible_choices(resolution, blocks)
    return {(row.dimension, row.stage + 1): row.distinct for row in rows}


def test_the_default_proxy_cannot_tell_the_dual_pools_apart() -> None:
    """At 24 px the first map is 6x6: pools 7, 10 and 14 all make one token (as measured:
    the sensitivity study's three pool variants score alike)."""
    at_24 = distinct(24)
    assert at_24[("Dual pool", 1)] == 1
    assert at_24[("CMT k", 4)] == 1 and at_24[("AEWin stripe", 4)] == 1
    assert at_24[("CMT k", 1)] == 2  # 6 / 4 -> 2x2 keys, 6 / 8 -> 1x1


def test_48px_is_the_smallest_input_where_every_dimension_varies() -> None:
    """In the default space; MaxViT's windows and grids of 4 and 7 both cover stage 4's map up
    to 128 px (4 px), so with every type the smallest such input is 160 px."""
    assert min(distinct(48).values()) == 2 and min(distinct(32).values()) == 1
    assert distinct(128)[("Dual pool", 1)] == 3
    assert min(distinct(224).values()) >= 2
    every = block_types()
    assert min(distinct(128, every).values()) == 1 and min(distinct(160, every).values()) == 2
    assert distinct(128, every)[("MaxViT window", 4)] == 1


@pytest.mark.parametrize("proxy", [24, 48, 64])
def test_stage_maps_at_the_proxy_input_and_the_count_unchanged(proxy: int) -> None:
    """Every stage runs at ceil(input / 4, 8, 16, 32) of the proxy input; the MACs and
    parameters the budget and reports use are the target genotype's at its own resolution."""
    arch = presets.get("cmt_s")
    count.cache_clear()
    target = count(arch)
    config = SearchConfig(proxy=ProxySettings(resolution=proxy))
    side = config.proxy_for(arch.resolution).resolution
    assert side == proxy
    plans = plan_stages(arch, side)
    assert [plan.feature_size for plan in plans] == [-(-side // 2 ** (i + 2)) for i in range(4)]
    model = build_model(arch, 10, resolution=side).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, side, side)).shape == (1, 10)
    count.cache_clear()
    assert count(arch) == target
    assert (target.params, target.macs) == (26_256_160, 4_031_742_464)


def test_the_report_names_what_the_proxy_input_cannot_see() -> None:
    from reports.report import _blind_spot_lines

    at_24 = "\n".join(_blind_spot_lines(24))
    assert "cannot tell these searched choices apart" in at_24
    assert "Dual pool in stage 1 (6px map): 7, 10, 14 give 1x1 tokens" in at_24
    assert "every searched choice gives its own model" in _blind_spot_lines(224)[0]
