"""The models in timm (``timm.create_model("hybrid_nas", ...)``) and their exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import retraining.models  # noqa: F401  (registers hybrid_nas)
from blocks import build_model
from retraining.export import ATOL, ExportCheckFailed, _compare, export, images_per_second
from space import presets
from tests.search.test_proxy import tiny_arch

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "example-run" / "best_arch.json"


@pytest.mark.parametrize("name", ["cmt_ti", "botnet26t", "maxvit_tiny", "coatnet_0"])
def test_timm_builds_the_same_model_as_build_model(name: str) -> None:
    """Same genotype, same seed: the same modules, parameters and outputs (the families with
    their own stems and heads among them)."""
    torch.manual_seed(0)
    ours = build_model(presets.get(name), 10, resolution=64).eval()
    torch.manual_seed(0)
    theirs = timm.create_model("hybrid_nas", arch=name, num_classes=10, img_size=64).eval()
    assert type(theirs) is type(ours)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))
    assert timm.data.resolve_data_config({}, model=theirs)["input_size"] == (3, 64, 64)


def test_timm_reads_a_genotype_file_and_drop_path() -> None:
    model = timm.create_model("hybrid_nas", arch=str(EXAMPLE), drop_path_rate=0.1)
    assert model.num_classes == 1000 and model.pretrained_cfg["input_size"] == (3, 224, 224)
    rates = [m.rate for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)


def test_timm_loads_retrained_weights(tmp_path: Path) -> None:
    """best.pt (retrain.py's) loads through timm's checkpoint_path."""
    model = build_model(tiny_arch(), 10, resolution=32)
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, tmp_path / "best.pt")
    loaded = timm.create_model(
        "hybrid_nas",
        arch=tiny_arch().to_dict(),
        num_classes=10,
        img_size=32,
        checkpoint_path=str(tmp_path / "best.pt"),
    )
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs arch="),
        ({"arch": "cmt_xxl"}, "neither an architecture file nor a preset"),
        ({"arch": "cmt_s", "pretrained": True}, "no published weights"),
        ({"arch": "cmt_s", "in_chans": 1}, "3 input channels"),
    ],
)
def test_timm_errors_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timm.create_model("hybrid_nas", **kwargs)


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_arch(), 10, resolution=32).eval()


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    images = torch.randn(4, 3, 32, 32)
    result = export(_tiny_model(), images, tmp_path, ("onnx",))["onnx"]
    assert result["runtime"] == "onnxruntime" and result["top1_agree"]
    assert result["max_abs_diff"] <= ATOL + 1e-3 * result["max_abs_logit"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))  # a dynamic batch axis
    logits = session.run(None, {"images": torch.randn(3, 3, 32, 32).numpy()})[0]
    assert logits.shape == (3, 10)


def test_torchscript_export_matches_pytorch(tmp_path: Path) -> None:
    model = _tiny_model()
    images = torch.randn(2, 3, 32, 32)
    result = export(model, images, tmp_path, ("torchscript",))["torchscript"]
    assert result["max_abs_diff"] <= ATOL and result["top1_agree"]
    reloaded = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(reloaded(images), model(images), atol=ATOL)


def test_a_differing_export_fails_its_check() -> None:
    expected = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    assert _compare("x", expected, expected + 1e-5)["top1_agree"]
    with pytest.raises(ExportCheckFailed, match="x export differs from PyTorch"):
        _compare("x", expected, expected + torch.tensor([[0.0, 0.01], [0.0, 0.0]]))


def test_inference_speed_is_measured() -> None:
    speed = images_per_second(_tiny_model(), 32, 4, torch.device("cpu"), None, seconds=0.1)
    assert speed > 0
