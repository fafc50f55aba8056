"""Property-based tests of the genotype (hypothesis): whatever the validators accept builds,
runs at its own resolution and at another one, costs the same by formula and by fvcore, and
round-trips through JSON; whatever they reject is a ValueError that names a field.

The default run tries a few examples of each property; ``-m slow`` tries many more.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks import BLOCKS, HEADS, STEMS, build_model
from space.cost import count, estimate
from space.genotype import ArchSpec, StageSpec

FEW, MANY = 6, 80
FIELDS = {f for cls in (ArchSpec, StageSpec) for f in cls.__dataclass_fields__} | {
    "split",
    "window",
    "stripe",
    "kv_reduction",
    "kernel",
    "pool",
    "mode",
    "options",
    "JSON",
    "object",
    "list",
}
OPTIONS = {
    "cmt": st.fixed_dictionaries({"kv_reduction": st.integers(1, 4)}),
    "aewin": st.fixed_dictionaries(
        {
            "split": st.sampled_from([(0.25, 0.25, 0.5), (0.5, 0.5, 0.0), (0.0, 0.0, 1.0)]),
            "window": st.integers(1, 7),
            "stripe": st.integers(1, 4),
        }
    ),
    "cot": st.fixed_dictionaries({"kernel": st.sampled_from([3, 5])}),
    "dual": st.fixed_dictionaries({"pool": st.just(3), "mode": st.sampled_from(["dual", "merge"])}),
}


@st.composite
def stage_dicts(draw: st.DrawFn) -> dict[str, Any]:
    block = draw(st.sampled_from(sorted(OPTIONS)))
    heads = 1 if block == "cot" else draw(st.sampled_from([1, 2, 4]))
    width = heads * 8 * draw(st.integers(1, 3))
    ratio = 2.0 if block == "cot" else draw(st.sampled_from([1.0, 1.5, 2.0, 3.0]))
    if block == "cot":
        width = 16 * draw(st.integers(1, 3))
    return {
        "block": block,
        "depth": draw(st.integers(1, 2)),
        "width": width,
        "heads": heads,
        "mlp_ratio": ratio,
        "options": draw(OPTIONS[block]),
    }


@st.composite
def arch_dicts(draw: st.DrawFn) -> dict[str, Any]:
    head = draw(st.sampled_from(HEADS.names()))
    return {
        "resolution": draw(st.sampled_from([32, 40, 48, 64])),
        "stem": draw(st.sampled_from(STEMS.names())),
        "stem_width": 8 * draw(st.integers(1, 3)),
        "head": head,
        "head_width": 32 if head == "conv" else 0,
        "stages": [draw(stage_dicts()) for _ in range(4)],
    }


GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def broken_arch_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid architecture with one field of it, or of one stage, replaced or removed."""
    data = draw(arch_dicts())
    target = data if draw(st.booleans()) else data["stages"][draw(st.integers(0, 3))]
    key = draw(st.sampled_from([*sorted(target), "colour"]))
    if draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = draw(GARBAGE)
    return data


def accepted_architecture_behaves(data: dict[str, Any]) -> None:
    try:
        arch = ArchSpec.from_dict(data)
    except ValueError:
        return  # rejected: the other property covers it
    assert ArchSpec.from_json(arch.to_json()) == arch
    assert estimate(arch) == count(arch)
    model = build_model(arch, num_classes=5).eval()
    with torch.no_grad():
        for side in (arch.resolution, arch.resolution + 24):
            out = model(torch.randn(2, 3, side, side))
            assert out.shape == (2, 5) and torch.isfinite(out).all()


def rejection_is_a_value_error_naming_a_field(data: dict[str, Any]) -> None:
    try:
        ArchSpec.from_dict(data)
    except ValueError as error:
        assert any(name in str(error) for name in FIELDS), str(error)


def arbitrary_text_is_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        ArchSpec.from_json(text)


PROPERTIES = (
    (accepted_architecture_behaves, arch_dicts()),
    (rejection_is_a_value_error_naming_a_field, broken_arch_dicts()),
    (arbitrary_text_is_a_value_error, st.one_of(st.text(), st.builds(json.dumps, GARBAGE))),
)


def _check(index: int, examples: int, *, fixed: bool) -> None:
    """Run property ``index`` on ``examples`` examples (10x for the cheap ones); ``fixed``
    draws the same examples every run."""
    prop, strategy = PROPERTIES[index]

    @settings(
        max_examples=examples if index == 0 else 10 * examples,
        deadline=None,
        derandomize=fixed,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(strategy)
    def check(value: Any) -> None:
        prop(value)

    check()


IDS = [p.__name__ for p, _ in PROPERTIES]


@pytest.mark.parametrize("index", range(len(PROPERTIES)), ids=IDS)
def test_property(index: int) -> None:
    _check(index, FEW, fixed=True)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PROPERTIES)), ids=IDS)
def test_property_many_examples(index: int) -> None:
    _check(index, MANY, fixed=False)


def test_non_finite_ratios_are_refused() -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="mlp_ratio"):
            StageSpec("cmt", 1, 16, 1, bad)
    assert "cmt" in BLOCKS
