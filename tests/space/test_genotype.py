"""The genotype: JSON round trips, hashing, and validation errors that name the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from blocks.aewin import AEWinOptions
from blocks.cmt import CMTOptions
from blocks.dualvit import DualOptions
from space import presets
from space.genotype import ArchSpec, StageSpec


@pytest.mark.parametrize("name", presets.names())
def test_presets_round_trip_through_json(name: str) -> None:
    arch = presets.get(name)
    again = ArchSpec.from_json(arch.to_json())
    assert again == arch
    assert hash(again) == hash(arch)
    assert json.loads(again.to_json()) == json.loads(arch.to_json())


def test_block_mix_summary() -> None:
    assert presets.get("cmt_s").block_mix == "cmt-cmt-cmt-cmt"


def test_replace_revalidates() -> None:
    stage = presets.get("cmt_s").stages[1]  # 2 heads
    with pytest.raises(ValueError, match=r"width \(127\) must be divisible by heads \(2\)"):
        dataclasses.replace(stage, width=127)


def cmt_json(**stage0: object) -> str:
    data = presets.get("cmt_ti").to_dict()
    data["stages"][0].update(stage0)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"width": 45, "heads": 2}, "width"),
        ({"block": "resnext"}, "block type 'resnext'"),
        ({"depth": 0}, "depth"),
        ({"heads": 0}, "heads"),
        ({"mlp_ratio": -1}, "mlp_ratio"),
        ({"options": {"kv_reduction": 0}}, "options.kv_reduction"),
        ({"options": {"reduction": 2}}, "unknown field.*reduction"),
        ({"colour": "red"}, "unknown field.*colour"),
    ],
)
def test_invalid_stage_fields_raise_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"stages\[0\].*{field}"):
        ArchSpec.from_json(cmt_json(**change))


def test_invalid_split_ratios() -> None:
    with pytest.raises(ValueError, match="split ratios must sum to 1"):
        AEWinOptions(split=(0.5, 0.25, 0.5))
    with pytest.raises(ValueError, match="split"):
        AEWinOptions(split=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"split.*horizontal.*whole number"):
        StageSpec("aewin", 1, 36, 4, 4.0, AEWinOptions(split=(0.125, 0.125, 0.75)))


def test_kv_reduction_below_one() -> None:
    with pytest.raises(ValueError, match="kv_reduction"):
        CMTOptions(kv_reduction=0)


@pytest.mark.parametrize("resolution", [0, 16, 31])
def test_resolution_the_stages_cannot_downsample(resolution: int) -> None:
    with pytest.raises(ValueError, match="resolution"):
        dataclasses.replace(presets.get("cmt_s"), resolution=resolution)


def test_arch_level_fields() -> None:
    arch = presets.get("cmt_s")
    with pytest.raises(ValueError, match="stages must hold 4"):
        dataclasses.replace(arch, stages=arch.stages[:3])
    with pytest.raises(ValueError, match="unknown stem 'vit'"):
        dataclasses.replace(arch, stem="vit")
    with pytest.raises(ValueError, match="unknown head"):
        dataclasses.replace(arch, head="mlp")
    with pytest.raises(ValueError, match="head_width"):
        dataclasses.replace(arch, head="pool")
    with pytest.raises(ValueError, match="stem_width"):
        dataclasses.replace(arch, stem_width=0)


def test_options_of_the_wrong_block_type() -> None:
    with pytest.raises(ValueError, match="CMTOptions"):
        StageSpec("cmt", 1, 64, 1, 4.0, DualOptions())


def test_consecutive_dual_stages_share_their_tokens() -> None:
    arch = presets.get("dualvit_s")
    stages = list(arch.stages)
    stages[2] = dataclasses.replace(stages[2], options=DualOptions(pool=10, mode="merge"))
    with pytest.raises(ValueError, match=r"stages\[2\]\.options: pool"):
        dataclasses.replace(arch, stages=tuple(stages))


def test_not_json() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        ArchSpec.from_json("{stages: ")
