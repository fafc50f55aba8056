"""Proxy training: learns, is deterministic on the CPU, and fails softly with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import search.proxy as proxy
from blocks.cmt import CMTOptions
from blocks.dualvit import DualOptions
from common import datasets as data
from common.datasets import ImageData, ImageTensorDataset
from common.device import resolve_device
from search.proxy import ProxySettings
from space.genotype import ArchSpec, StageSpec
from tests.common.test_datasets import write_folder


def tiny_arch() -> ArchSpec:
    stages = (
        StageSpec("cmt", 1, 16, 1, 2.0, CMTOptions(4)),
        StageSpec("cot", 1, 32, 1, 2.0),
        StageSpec("aewin", 1, 32, 2, 2.0),
        StageSpec("dual", 1, 64, 2, 2.0, DualOptions(4, "merge")),
    )
    return ArchSpec(stages, 224, stem="cmt", stem_width=16, head="conv", head_width=64)


@pytest.fixture(scope="module")
def digits_subset() -> ImageData:
    train, val, classes, size = data.load("digits")
    subset = ImageTensorDataset(train.images[:512], train.labels[:512], natural=False)
    return ImageData(subset, val, classes, size)


def test_proxy_learns(digits_subset: ImageData) -> None:
    result = proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=3))
    assert not result.failed and result.reason == ""
    assert len(result.epoch_accuracies) == 3 and result.accuracy == result.epoch_accuracies[-1]
    assert result.accuracy > 0.3  # chance is 0.1
    assert result.seconds > 0 and result.images_per_second > 0


def test_same_seed_same_accuracy(digits_subset: ImageData) -> None:
    first = proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=1), seed=3)
    again = proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=1), seed=3)
    assert first.epoch_accuracies == again.epoch_accuracies


def test_report_is_called_every_epoch_and_may_stop_training(digits_subset: ImageData) -> None:
    calls = []

    class Stop(Exception):
        pass

    def report(epoch: int, accuracy: float) -> None:
        calls.append((epoch, accuracy))
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=4), report=report)
    assert [epoch for epoch, _ in calls] == [0, 1]


def test_nan_loss_gives_a_failed_result(
    digits_subset: ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = proxy.build_model

    def poisoned(*args: object, **kwargs: object) -> torch.nn.Module:
        model = build(*args, **kwargs)
        model.head.fc.register_forward_hook(lambda module, inputs, out: out * float("nan"))
        return model

    monkeypatch.setattr(proxy, "build_model", poisoned)
    result = proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=2))
    assert result.failed and "nan" in result.reason.lower() and "epoch 1" in result.reason
    assert result.accuracy == 0.0


def test_a_nan_loss_is_retried_once_at_a_quarter_of_the_learning_rate(
    digits_subset: ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, built = proxy.build_model, []

    def poisoned(*args: object, **kwargs: object) -> torch.nn.Module:
        model = build(*args, **kwargs)
        model.head.fc.register_forward_hook(lambda module, inputs, out: out * float("nan"))
        built.append(model)
        return model

    monkeypatch.setattr(proxy, "build_model", poisoned)
    result = proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=1, lr=2e-3))
    assert len(built) == 2 and result.failed
    assert "(also at lr 0.0005; at lr 0.002: the loss became nan in epoch 1)" in result.reason


def _collapse_then_learn(calls: list[ProxySettings]) -> object:
    def fake(arch: ArchSpec, data: ImageData, settings: ProxySettings, **_: object):
        calls.append(settings)
        if len(calls) == 1:
            return proxy.ProxyResult(0.1, (0.1,), 5.0, 100.0, True, "collapsed: 10.0% ...")
        return proxy.ProxyResult(0.8, (0.8,), 6.0, 90.0)

    return fake


def test_a_collapsed_training_is_retrained_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[ProxySettings] = []
    monkeypatch.setattr(proxy, "_train_once", _collapse_then_learn(calls))
    result = proxy.train(tiny_arch(), None, ProxySettings(lr=2e-3))  # type: ignore[arg-type]
    assert [c.lr for c in calls] == [2e-3, 5e-4]
    assert not result.failed and result.accuracy == 0.8 and result.seconds == 11.0
    assert result.reason == "retrained at lr 0.0005; at lr 0.002: collapsed: 10.0% ..."


def test_other_failures_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[ProxySettings] = []

    def out_of_memory(arch: ArchSpec, data: ImageData, settings: ProxySettings, **_: object):
        calls.append(settings)
        return proxy.ProxyResult(0.0, (), 1.0, 0.0, True, "out of memory: ...")

    monkeypatch.setattr(proxy, "_train_once", out_of_memory)
    result = proxy.train(tiny_arch(), None, ProxySettings())  # type: ignore[arg-type]
    assert len(calls) == 1 and result.reason == "out of memory: ..."


def test_out_of_memory_gives_a_failed_result(
    digits_subset: ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = proxy.build_model

    def hungry(*args: object, **kwargs: object) -> torch.nn.Module:
        model = build(*args, **kwargs)

        def boom(module: torch.nn.Module, inputs: object) -> None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        model.stages[2].register_forward_pre_hook(boom)
        return model

    monkeypatch.setattr(proxy, "build_model", hungry)
    result = proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=1, resolution=32))
    assert result.failed and result.reason.startswith("out of memory: CUDA out of memory")


def test_other_errors_are_not_hidden(
    digits_subset: ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "build_model", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=1))


def test_image_folder_trains_through_a_loader(tmp_path: Path) -> None:
    write_folder(tmp_path / "pets", n=8)
    folder = data.load(f"folder:{tmp_path / 'pets'}@32")
    result = proxy.train(tiny_arch(), folder, ProxySettings(epochs=1))
    assert not result.failed and 0.0 <= result.accuracy <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_asked_for_without_cuda(digits_subset: ImageData) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=1), device="cuda")


def test_auto_device_is_cuda_only_when_there_is_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_a_training_too_large_for_memory_fails_before_allocating(
    digits_subset: ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    need = proxy.training_bytes(tiny_arch(), 10, 32, 64)
    monkeypatch.setattr(proxy, "available_bytes", lambda device: need - 1)
    monkeypatch.setattr(proxy, "build_model", lambda *a, **k: pytest.fail("built a model"))
    result = proxy.train(tiny_arch(), digits_subset, ProxySettings(epochs=1, resolution=32))
    assert result.failed and result.reason.startswith("out of memory before training")
    assert "GiB available on cpu" in result.reason


def test_the_memory_estimate_is_what_a_real_step_keeps() -> None:
    """The meta-device count matches the bytes a real CPU forward saves for backward, plus four
    float32 copies of the parameters (kernels may save slightly different extras: within 2%)."""
    model = proxy.build_model(tiny_arch(), 10, resolution=32)
    saved: dict[int, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(torch.randn(64, 3, 32, 32))
    real = sum(t.numel() * t.element_size() for t in saved.values())
    weights = 4 * sum(p.numel() * 4 for p in model.parameters())
    assert proxy.training_bytes(tiny_arch(), 10, 32, 64) == pytest.approx(real + weights, rel=0.02)
