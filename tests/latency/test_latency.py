"""Latency: the units rebuild what the model runs, their weighted sum is the network's, the table is
kept per machine and reused, and a bad target is refused with its value named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from blocks import build_model
from blocks.cmt import CMTOptions
from blocks.dualvit import DualOptions
from latency import predict, units
from latency.table import Entry, LatencyTable
from latency.target import Target
from latency.timing import Timing, time_module
from space import presets
from space.genotype import ArchSpec, StageSpec

CPU1 = Target("cpu", batch=2, threads=1)


def small_arch(depth3: int = 1) -> ArchSpec:
    """Every block type, Dual-ViT's tokens flowing into a second Dual stage and the class-
    attention head, at 64 px."""
    stages = (
        StageSpec("cmt", 1, 16, 1, 2.0, CMTOptions(2)),
        StageSpec("dual", 2, 32, 2, 2.0, DualOptions(4, "dual")),
        StageSpec("dual", depth3, 64, 2, 2.0, DualOptions(4, "merge")),
        StageSpec("aewin", 1, 64, 2, 2.0),
    )
    return ArchSpec(stages, 64, stem="cmt", stem_width=16, head="conv", head_width=64)


def test_each_unit_gets_the_inputs_the_model_gives_it(tmp_path: Path) -> None:
    """Shapes of every stage's and the head's inputs, and the strides of their maps, as a
    forward pass of the whole model feeds them."""
    arch = dataclasses.replace(small_arch(), head="class_attention", head_width=64)
    arch = dataclasses.replace(arch, stages=(*arch.stages[:3], arch.stages[2]))
    model = build_model(arch, units.NUM_CLASSES).eval()
    fed: list[list[tuple]] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        tensors = [t for t in args if t is not None]
        fed.append([tensors[0].stride(), *(tuple(t.shape) for t in tensors)])

    for part in [*model.stages, model.head]:
        part.register_forward_pre_hook(record)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    table = LatencyTable(CPU1, tmp_path)
    built = []
    for unit, _ in units.units(arch, lambda unit: table.entry(unit).out_strides)[1:]:
        _, inputs, takes_tokens = unit.build(2)
        assert takes_tokens
        built.append([inputs[0].stride(), *(tuple(t.shape) for t in inputs)])
    assert built == fed
    assert any(inputs[0] != torch.empty(inputs[1]).stride() for inputs in fed)  # not all plain


class FakeTable:
    """Unit latencies from a formula instead of a clock: a stage costs 3 + 2 x depth."""

    def entry(self, unit: units.Unit) -> Entry:
        depth = unit.spec["stage"]["depth"] if unit.kind == "stage" else 0
        ms = 3.0 + 2.0 * depth if unit.kind == "stage" else 1.0
        return Entry(Timing(ms, ms, ms, 10), (1, 1, 1, 1))


@pytest.mark.parametrize("depth", [1, 3, 4, 5, 13])
def test_a_deep_stage_is_extrapolated_from_two_measured_depths(depth: int) -> None:
    arch = small_arch(depth)
    found = units.units(arch, lambda unit: (1, 1, 1, 1))
    stages = [u.spec["stage"] for u, _ in found if u.kind == "stage"]
    third = [s["depth"] for s in stages if s["block"] == "dual" and s["width"] == 64]
    assert third == ([depth] if depth <= units.MEASURED_DEPTH else [1, units.MEASURED_DEPTH])
    # stem 1 + stages (3 + 2d each) + head 1, exactly, whatever units the stages became
    expected = 1 + sum(3 + 2 * s.depth for s in arch.stages) + 1
    assert predict.predict_ms(arch, FakeTable()) == pytest.approx(expected)


def test_the_table_is_kept_and_a_second_search_measures_nothing_it_has(tmp_path: Path) -> None:
    arch = small_arch()
    first = LatencyTable(CPU1, tmp_path)
    predicted = predict.predict_ms(arch, first)
    assert first.measured == len(first) == 6 and predicted > 0
    with first.path.open("a") as handle:
        handle.write('{"key": "torn')  # a line torn by a kill
    again = LatencyTable(CPU1, tmp_path)
    assert predict.predict_ms(arch, again) == predicted
    assert again.measured == 0
    header = json.loads(first.path.read_text().splitlines()[0])
    assert header["fingerprint"]["threads"] == 1 and header["fingerprint"]["batch"] == 2
    other = LatencyTable(dataclasses.replace(CPU1, batch=1), tmp_path)
    assert other.path != first.path and len(other) == 0  # another batch is another table


def test_a_whole_model_is_timed_with_its_spread() -> None:
    timing = predict.measure(small_arch(), CPU1)
    assert timing.repeats >= 10 and 0 < timing.q1_ms <= timing.median_ms <= timing.q3_ms
    assert timing.spread >= 0


def test_the_fingerprint_names_the_machine_and_the_target() -> None:
    fingerprint = CPU1.fingerprint()
    assert fingerprint.threads == 1 and fingerprint.cpu
    assert dict(fingerprint.versions)["torch"] == torch.__version__
    assert "cpu" in fingerprint.describe() and "batch 2" in fingerprint.describe()
    assert fingerprint.key != dataclasses.replace(CPU1, threads=2).fingerprint().key


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "tpu"}, "latency device must be one of cpu, onnxruntime, cuda, got 'tpu'"),
        ({"batch": 0}, "latency batch must be an integer >= 1, got 0"),
        ({"threads": -1}, "latency threads must be an integer >= 0, got -1"),
    ],
)
def test_a_bad_target_names_the_problem(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Target(**changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        Target("cuda")


def test_onnxruntime_times_an_exported_unit() -> None:
    pytest.importorskip("onnxruntime")
    found = units.units(presets.get("cmt_ti"), lambda unit: (768, 1, 48, 1))
    unit = next(u for u, _ in found if u.kind == "head")
    module, inputs, takes_tokens = unit.build(1)
    timing = time_module(module, inputs, Target("onnxruntime", 1, 1), takes_tokens=takes_tokens)
    assert timing.median_ms > 0 and timing.repeats >= 10


@pytest.mark.parametrize("preset", ["aewin_t", "maxvit_tiny"])
def test_onnxruntime_times_a_stage_whose_map_is_one_window(preset: str) -> None:
    """The last stage of AEWin-T and of MaxViT-T is one 7x7 window. torch 2.14's exporter
    failed on it while the attention's heads were merged by a view of the fused kernel's
    output (the blocks now concatenate them)."""
    pytest.importorskip("onnxruntime")
    found = units.units(presets.get(preset), lambda unit: (512 * 56 * 56, 56 * 56, 56, 1))
    unit = next(u for u, _ in found if u.kind == "stage" and u.spec["feature_size"] == 7)
    module, inputs, takes_tokens = unit.build(1)
    timing = time_module(module, inputs, Target("onnxruntime", 1, 1), takes_tokens=takes_tokens)
    assert timing.median_ms > 0
