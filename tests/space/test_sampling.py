"""The budget-aware sampler: hard budget, budget used, whole space covered, reproducible."""

from __future__ import annotations

from collections import defaultdict

import optuna
import pytest

from blocks.aewin import AEWinStage
from blocks.cmt import CMTStage
from blocks.cot import CoTStage
from blocks.dualvit import DualStage
from space.cost import count, estimate
from space.genotype import ArchSpec
from space.sampling import (
    DEFAULT_BLOCKS,
    SPACE,
    block_types,
    largest_macs,
    parse_blocks,
    sample,
    smallest_macs,
)

BUDGETS = (600_000_000, 1_500_000_000, 4_000_000_000, 9_000_000_000)


def draw(budget: int, n: int, seed: int = 0) -> tuple[list[ArchSpec], list[dict]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    archs, params = [], []
    for _ in range(n):
        trial = study.ask()
        archs.append(sample(trial, budget))
        params.append(trial.params)
        study.tell(trial, 0.0)
    return archs, params


@pytest.fixture(scope="module")
def drawn() -> dict[int, tuple[list[ArchSpec], list[dict]]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return {budget: draw(budget, 500) for budget in BUDGETS}


@pytest.mark.parametrize("budget", BUDGETS)
def test_never_over_budget_and_budget_used(drawn: dict, budget: int) -> None:
    archs, _ = drawn[budget]
    macs = [estimate(arch).macs for arch in archs]
    assert max(macs) <= budget
    assert sum(m >= 0.7 * budget for m in macs) >= 0.95 * len(macs)


@pytest.mark.parametrize("budget", BUDGETS)
def test_fvcore_agrees_on_a_sampled_architecture(drawn: dict, budget: int) -> None:
    """estimate() is what the sampler trusts; fvcore's count must give the same figures."""
    arch = drawn[budget][0][0]
    assert count(arch) == estimate(arch)
    assert count(arch).macs <= budget


@pytest.mark.slow
def test_fvcore_agrees_on_100_sampled_architectures(drawn: dict) -> None:
    """25 per budget (about 3 minutes)."""
    for budget in BUDGETS:
        for arch in drawn[budget][0][1:26]:
            assert count(arch) == estimate(arch)
            assert count(arch).macs <= budget


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_block_type_and_every_value_appears(drawn: dict, budget: int) -> None:
    archs, params = drawn[budget]
    blocks_at = {(i, stage.block) for arch in archs for i, stage in enumerate(arch.stages)}
    assert DEFAULT_BLOCKS == ("cmt", "aewin", "cot", "dual")
    assert blocks_at == {(i, b) for i in range(4) for b in DEFAULT_BLOCKS}
    seen: dict[str, set] = defaultdict(set)
    for trial_params in params:
        for name, value in trial_params.items():
            seen[name].add(value)
    assert seen["stem_width"] == set(SPACE["stem_width"])
    assert min(seen["budget_use"]) < 0.77 and max(seen["budget_use"]) > 0.98
    assert seen["dual_pool"] == set(DualStage.POOLS)
    for i in range(4):
        low, high = SPACE["depth"][i]
        assert seen[f"s{i}_depth"] == set(range(low, high + 1))
        for name in ("width", "heads"):
            assert seen[f"s{i}_{name}"] == set(SPACE[name][i]), name
        assert seen[f"s{i}_kv_reduction"] == set(CMTStage.KV_REDUCTIONS[i])
        assert seen[f"s{i}_dual_mode"] == set(DualStage.MODES[i])
        assert seen[f"s{i}_mlp_ratio"] == set(SPACE["mlp_ratio"])
        assert seen[f"s{i}_cot_ratio"] == set(CoTStage.RATIOS)
        assert seen[f"s{i}_cot_kernel"] == set(CoTStage.KERNELS)
        assert seen[f"s{i}_split"] == set(AEWinStage.SPLITS)
        assert seen[f"s{i}_stripe"] == set(AEWinStage.STRIPES)
    # the options drawn survive the fit into the architectures
    options = defaultdict(set)
    for arch in archs:
        for stage in arch.stages:
            options[stage.block].add(stage.options)
    assert {o.kv_reduction for o in options["cmt"]} == {1, 2, 4, 8}
    assert {o.stripe for o in options["aewin"]} == set(AEWinStage.STRIPES)
    assert len({o.split for o in options["aewin"]}) == len(AEWinStage.SPLITS)
    assert {o.kernel for o in options["cot"]} == set(CoTStage.KERNELS)
    assert {(o.pool, o.mode) for o in options["dual"]} >= {(7, "dual"), (14, "merge")}


@pytest.mark.parametrize("budget", BUDGETS)
def test_json_of_every_sampled_architecture_round_trips(drawn: dict, budget: int) -> None:
    for arch in drawn[budget][0]:
        assert ArchSpec.from_json(arch.to_json()) == arch


def test_same_seed_same_architectures() -> None:
    first, _ = draw(4_000_000_000, 20, seed=7)
    again, _ = draw(4_000_000_000, 20, seed=7)
    other, _ = draw(4_000_000_000, 20, seed=8)
    assert [a.to_json() for a in first] == [a.to_json() for a in again]
    assert [a.to_json() for a in first] != [a.to_json() for a in other]


def test_budget_below_the_smallest_architecture_names_it() -> None:
    floor = smallest_macs(224)
    trial = optuna.create_study().ask()
    with pytest.raises(ValueError, match=f"smallest architecture .* \\({floor:,} MACs"):
        sample(trial, floor - 1)


def test_budget_just_above_the_smallest_still_fits() -> None:
    """Near the floor most draws cannot shrink enough; they fall back to the smallest one."""
    budget = smallest_macs(224) + 5_000_000
    archs, _ = draw(budget, 20)
    assert all(estimate(arch).macs <= budget for arch in archs)


@pytest.mark.parametrize("resolution", [160, 256])
def test_other_resolutions(resolution: int) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        arch = sample(study.ask(), 2_000_000_000, resolution=resolution)
        assert arch.resolution == resolution
        assert estimate(arch).macs <= 2_000_000_000


def test_the_ceiling_is_the_largest_reachable_architecture() -> None:
    ceiling = largest_macs(224)
    archs, _ = draw(ceiling, 200, seed=3)
    macs = [estimate(arch).macs for arch in archs]
    assert max(macs) <= ceiling and max(macs) > 0.1 * ceiling
    with pytest.raises(ValueError, match=r"above the largest architecture .* GMACs"):
        sample(optuna.create_study().ask(), ceiling + 1)


def test_the_whole_space_draws_every_type_within_the_budget() -> None:
    """``blocks="all"``: every searchable type appears, the budget holds, fvcore agrees."""
    assert block_types() == ("cmt", "aewin", "cot", "dual", "bot", "halo", "coatnet", "maxvit")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    archs, seen = [], defaultdict(set)
    for _ in range(80):
        trial = study.ask()
        archs.append(sample(trial, 4_000_000_000, blocks=block_types()))
        for name, value in trial.params.items():
            seen[name].add(value)
    assert max(estimate(arch).macs for arch in archs) <= 4_000_000_000
    mixes = {stage.block for arch in archs for stage in arch.stages}
    assert mixes == set(block_types())
    assert seen["s2_halo_block"] == {4, 8} and seen["s2_bot_layout"] == {"alternate", "attention"}
    assert seen["s2_maxvit_window"] == {4, 7} and seen["s2_coatnet_kind"] == {"conv", "attention"}
    for block in ("bot", "halo", "coatnet", "maxvit"):
        arch = next(a for a in archs if sum(s.block == block for s in a.stages) >= 2)
        assert count(arch) == estimate(arch), arch.block_mix


def test_only_the_chosen_block_types_are_drawn() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(10):
        arch = sample(study.ask(), 4_000_000_000, blocks=("cmt", "halo"))
        assert {stage.block for stage in arch.stages} <= {"cmt", "halo"}


@pytest.mark.parametrize(
    ("text", "message"),
    [("cmt,levit", "unknown block type 'levit'"), ("", "blocks must be all or block types")],
)
def test_a_bad_block_list_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_blocks(text)


def test_block_lists_parse_in_registration_order() -> None:
    assert parse_blocks("halo, cmt") == ("cmt", "halo")
    assert parse_blocks("all") == block_types()


@pytest.mark.parametrize("block", ["bot", "halo"])
def test_the_costliest_layout_is_the_costliest_at_the_ceiling(block: str) -> None:
    """The ceiling is the space's largest scale; there each stage's costliest layout must cost
    at least as much as the other searched one."""
    import dataclasses

    from blocks import BLOCKS
    from space.sampling import FIT_HIGH, SHARED, _build, scaled

    stage_type = BLOCKS.get(block)
    costliest = [stage_type.costliest(i, SHARED) for i in range(4)]
    stages = [
        (block, {"depth": SPACE["depth"][i][1], "width": max(SPACE["width"][i]), **c._asdict()})
        for i, c in enumerate(costliest)
    ]
    top = scaled(_build(max(SPACE["stem_width"]), 224, stages), FIT_HIGH)
    for i, stage in enumerate(top.stages):
        for layout in stage_type.SEARCHED_LAYOUTS:
            options = dataclasses.replace(stage.options, layout=layout)
            other = dataclasses.replace(stage, options=options)
            changed = dataclasses.replace(
                top, stages=(*top.stages[:i], other, *top.stages[i + 1 :])
            )
            assert estimate(changed).macs <= estimate(top).macs, (i, layout)


@pytest.mark.parametrize("block", ["maxvit", "coatnet"])
def test_the_costliest_and_cheapest_choices_bound_the_others(block: str) -> None:
    """At the ceiling's scale no searched option of a MaxViT or CoAtNet stage costs more than
    its costliest choice; at the floor's none costs less than its cheapest."""
    import dataclasses
    import itertools

    from blocks import BLOCKS
    from blocks.coatnet import CoAtOptions
    from blocks.maxvit import MaxViTOptions
    from space.sampling import FIT_HIGH, FIT_LOW, SHARED, _build, scaled

    stage_type = BLOCKS.get(block)
    own = (
        [MaxViTOptions(w, g) for w, g in itertools.product(stage_type.PARTS, repeat=2)]
        if block == "maxvit"
        else [CoAtOptions(kind) for kind in stage_type.KINDS]
    )
    for bound, phi, depth, width, stem, worse in (
        (stage_type.costliest, FIT_HIGH, 1, max, max, int.__le__),
        (stage_type.cheapest, FIT_LOW, 0, min, min, int.__ge__),
    ):
        choices = [bound(i, SHARED) for i in range(4)]
        stages = [
            (
                block,
                {
                    "depth": SPACE["depth"][i][depth],
                    "width": width(SPACE["width"][i]),
                    **c._asdict(),
                },
            )
            for i, c in enumerate(choices)
        ]
        extreme = scaled(_build(stem(SPACE["stem_width"]), 224, stages), phi)
        for i, stage in enumerate(extreme.stages):
            for options in own:
                other = dataclasses.replace(stage, options=options)
                changed = dataclasses.replace(
                    extreme, stages=(*extreme.stages[:i], other, *extreme.stages[i + 1 :])
                )
                assert worse(estimate(changed).macs, estimate(extreme).macs), (i, options)
