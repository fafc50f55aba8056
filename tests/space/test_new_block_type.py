"""A new block type is one module and its registration: sampling, cost counting and the reports
take it with no other edit (the toy type below is registered for these tests only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
import pytest
from torch import Tensor, nn

from blocks import BLOCKS
from blocks.formulas import Cost, conv
from blocks.layers import Transition
from blocks.registry import BlockOptions, MapChoice, SharedChoices, Stage, StagePlan, TrialLike
from reports.report import write_reports
from search import pipeline
from space.cost import count, estimate
from space.geometry import blind_spots
from space.sampling import block_types, parse_blocks, sample
from tests.conftest import tiny


@dataclasses.dataclass(frozen=True)
class ToyOptions(BlockOptions):
    kernel: int = 3


class ToyStage(Stage):
    """Transition, then ``depth`` residual depthwise convs of ``kernel`` x ``kernel``."""

    options_type = ToyOptions

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec, k = plan.spec, plan.spec.options.kernel
        self.transition = Transition(plan.in_width, spec.width, stride=plan.stride, kernel=3)
        self.blocks = nn.ModuleList(
            nn.Conv2d(spec.width, spec.width, k, padding=k // 2, groups=spec.width)
            for _ in drop_path
        )

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec, pixels = plan.spec, plan.feature_size**2
        entry = Transition.cost(
            plan.in_width, spec.width, stride=plan.stride, kernel=3, pixels=pixels
        )
        block = conv(spec.width, spec.width, spec.options.kernel, pixels, groups=spec.width)
        return entry + block * spec.depth

    @classmethod
    def draw_options(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> ToyOptions:
        return ToyOptions(trial.suggest_categorical(f"s{stage}_toy_kernel", (3, 5)))

    @classmethod
    def map_choices(cls, stage: int, side: int) -> list[MapChoice]:
        """A k x k kernel on a side x side map reaches min(k, 2 side - 1) taps a side."""
        taps = tuple(f"{min(k, 2 * side - 1)}x{min(k, 2 * side - 1)} taps" for k in (3, 5))
        return [MapChoice("toy kernel", (3, 5), taps)]

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, None]:
        x = self.transition(x)
        for block in self.blocks:
            x = x + block(x)
        return x, None


@pytest.fixture
def toy() -> Iterator[None]:
    BLOCKS.register("toy")(ToyStage)
    try:
        yield
    finally:
        BLOCKS.unregister("toy")


def sampled(n: int, budget: int) -> list:
    """Architectures drawn from a space of CMT and the toy type (``--blocks cmt,toy``)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [sample(study.ask(), budget, blocks=parse_blocks("cmt,toy")) for _ in range(n)]


def test_the_space_offers_a_registered_block_type(toy: None) -> None:
    assert block_types()[-1] == "toy" and parse_blocks("all")[-1] == "toy"
    archs = sampled(40, 600_000_000)
    toys = [a for a in archs if "toy" in a.block_mix]
    assert toys and all(estimate(a).macs <= 600_000_000 for a in archs)
    assert {s.options.kernel for a in toys for s in a.stages if s.block == "toy"} == {3, 5}


def test_its_formula_equals_fvcores_count(toy: None) -> None:
    arch = next(a for a in sampled(40, 1_000_000_000) if a.stages[1].block == "toy")
    assert estimate(arch) == count(arch)


def test_a_search_and_its_reports_take_it(toy: None, tmp_path: Path, fake_proxy: list) -> None:
    config = tiny(
        trials=12,
        out=str(tmp_path / "run"),
        seed=3,
        scaling="cmt",
        baselines="none",
        blocks="cmt,aewin,toy",
    )
    results = pipeline.run(config)
    assert results.trials.blocks.str.contains("toy").any()
    write_reports(config.out, config, results)
    assert "toy" in (tmp_path / "run" / "trials.csv").read_text()
    assert (tmp_path / "run" / "pareto.png").stat().st_size > 0


def test_the_blind_spot_report_reads_it_from_the_type(toy: None) -> None:
    """At 24 px stages 3 and 4 see 2x2 and 1x1 maps, where kernels 3 and 5 reach the same taps;
    at 224 px every kernel choice stays distinct."""
    at_24 = [phrase for phrase in blind_spots(24) if phrase.startswith("toy kernel")]
    assert at_24 == [
        "toy kernel in stage 3 (2px map): 3, 5 give 3x3 taps",
        "toy kernel in stage 4 (1px map): 3, 5 give 1x1 taps",
    ]
    assert not [phrase for phrase in blind_spots(224) if phrase.startswith("toy kernel")]


def test_unregistered_again_it_is_gone() -> None:
    assert "toy" not in block_types()
    assert "toy" not in BLOCKS
    assert not [phrase for phrase in blind_spots(24) if "toy" in phrase]
