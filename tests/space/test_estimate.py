"""The closed-form estimate equals fvcore's count."""

from __future__ import annotations

import dataclasses

import pytest

from space import presets
from space.cost import count, estimate


@pytest.mark.parametrize("name", presets.names())
def test_estimate_equals_count_on_presets(name: str) -> None:
    arch = presets.get(name)
    assert estimate(arch) == count(arch)


@pytest.mark.parametrize("name", presets.names())
def test_estimate_equals_count_at_a_size_nothing_divides(name: str) -> None:
    """At 200 px the stages are 50, 25, 13, 7: windows, stripes and k are padded."""
    arch = dataclasses.replace(presets.get(name), resolution=200)
    assert estimate(arch) == count(arch)
