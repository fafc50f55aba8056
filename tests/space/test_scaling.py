"""Compound scaling: monotone in phi, valid widths, the family, measured exponents."""

from __future__ import annotations

import itertools

import pytest

from space import presets
from space.cost import estimate
from space.scaling import (
    coefficient_grid,
    family,
    mac_exponents,
    phi_for_macs,
    scale,
)


def test_cmt_s_family(capsys: pytest.CaptureFixture[str]) -> None:
    members = family(presets.get("cmt_s"))
    assert list(members) == ["Ti", "XS", "S", "B"]
    assert members["S"] == presets.get("cmt_s")
    macs = [estimate(arch).macs for arch in members.values()]
    steps = [b / a for a, b in itertools.pairwise(macs)]
    assert all(2.0 <= step <= 3.0 for step in steps), steps
    assert [arch.resolution for arch in members.values()] == [160, 192, 224, 256]
    for arch in members.values():
        for stage in arch.stages:
            assert stage.width % stage.heads == 0 and stage.width % 8 == 0 and stage.depth >= 1
    exponents = mac_exponents(presets.get("cmt_s"))
    with capsys.disabled():
        print(f"\ncmt_s MAC exponents: {exponents}; family steps {[round(s, 2) for s in steps]}")
    assert 0.8 < exponents.depth <= 1.0
    assert 1.8 < exponents.width <= 2.0
    assert exponents.resolution > 2.0  # attention grows with the square of the token count


@pytest.mark.parametrize("name", presets.names())
def test_scaling_is_monotone_and_valid(name: str) -> None:
    arch = presets.get(name)
    previous = 0
    for phi in (-3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2):
        scaled = scale(arch, phi)
        macs = estimate(scaled).macs
        assert macs >= previous, (phi, macs, previous)
        previous = macs
        for stage in scaled.stages:
            assert stage.depth >= 1 and stage.width % stage.heads == 0


def test_phi_for_a_mac_target() -> None:
    arch = presets.get("cmt_s")
    phi = phi_for_macs(arch, 9e9)
    assert estimate(scale(arch, phi)).macs <= 9e9 < estimate(scale(arch, phi + 0.01)).macs
    with pytest.raises(ValueError, match="over the target"):
        phi_for_macs(arch, 1000)


def test_coefficient_grid_meets_the_constraint() -> None:
    exponents = mac_exponents(presets.get("cmt_s"))
    grid = coefficient_grid(exponents)
    assert len(grid) > 10
    for alpha, beta, gamma in grid:
        assert min(alpha, beta, gamma) >= 1
        product = alpha * beta**exponents.width * gamma**exponents.resolution
        assert product == pytest.approx(2.5, rel=1e-3)
