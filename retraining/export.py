"""Export a trained model and check the export against PyTorch; measure inference speed.

``onnx`` writes ``model.onnx`` with ``torch.onnx.export`` (the ``torch.export`` path, which
needs the onnx and onnxscript packages; the batch axis is dynamic) and runs it with onnxruntime
when that is installed; ``torchscript`` writes ``model.torchscript.pt`` with ``torch.jit.trace``
(deprecated by PyTorch in favour of ``torch.export``, but what many deployment stacks still
load) and runs the reloaded module. Each check feeds the same batch to the export and to the PyTorch
model (in float32, in eval mode) and fails when a logit differs by more than ``ATOL`` +
``RTOL`` x |logit| or a top-1 prediction differs. A model is exported for the input size it
was built for (position tables and token grids are fixed by it).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ATOL", "FORMATS", "RTOL", "ExportCheckFailed", "export", "images_per_second"]

FORMATS = ("onnx", "torchscript")
ATOL, RTOL = 1e-4, 1e-3  # float32 kernels of two runtimes differ by rounding only


class ExportCheckFailed(RuntimeError):
    """An exported model's outputs differ from PyTorch's beyond the stated tolerance."""


def _compare(name: str, expected: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    """The check's figures; raises ``ExportCheckFailed`` beyond the tolerance."""
    error = (got - expected).abs()
    allowed = ATOL + RTOL * expected.abs()
    same_top1 = bool((got.argmax(1) == expected.argmax(1)).all())
    check = {
        "max_abs_diff": float(error.max()),
        "max_abs_logit": float(expected.abs().max()),
        "atol": ATOL,
        "rtol": RTOL,
        "top1_agree": same_top1,
        "checked_on": f"batch of {len(expected)}",
    }
    if not bool((error <= allowed).all()) or not same_top1:
        raise ExportCheckFailed(
            f"{name} export differs from PyTorch: max |diff| {check['max_abs_diff']:.3g} "
            f"(allowed {ATOL:g} + {RTOL:g} x |logit|), top-1 agrees: {same_top1}"
        )
    return check


def _onnx(model: nn.Module, images: torch.Tensor, path: Path) -> dict[str, Any]:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (images,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    try:
        import onnxruntime
    except ImportError:
        return {"file": path.name, "checked": "not checked: onnxruntime is not installed"}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with torch.no_grad():
        expected = model(images)
    return {"file": path.name, "runtime": "onnxruntime", **_compare("onnx", expected, got)}


def _torchscript(model: nn.Module, images: torch.Tensor, path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():  # torch.jit's deprecation; the trace fixes the input size
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, images)
        torch.jit.save(traced, str(path))
        reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected, got = model(images), reloaded(images)
    return {"file": path.name, "runtime": "torch.jit", **_compare("torchscript", expected, got)}


def export(model: nn.Module, images: torch.Tensor, out: Path, formats: tuple[str, ...]) -> dict:
    """Write ``model`` in each of ``formats`` into ``out``, each checked on ``images`` (a
    float32 batch at the model's input size); returns each format's file and check."""
    model = model.float().eval().cpu().to(memory_format=torch.contiguous_format)
    images = images.float().cpu().contiguous()
    writers = {"onnx": (_onnx, "model.onnx"), "torchscript": (_torchscript, "model.torchscript.pt")}
    results = {}
    for name in formats:
        write, filename = writers[name]
        results[name] = write(model, images, out / filename)
    return results


def images_per_second(
    model: nn.Module,
    resolution: int,
    batch: int,
    dev: torch.device,
    amp: torch.dtype | None,
    *,
    seconds: float = 2.0,
) -> float:
    """Inference throughput at ``batch``: eval mode, no gradients, timed over at least
    ``seconds`` after two warm-up batches (the device synchronised before each clock read)."""
    model = model.eval()
    x = torch.randn(batch, 3, resolution, resolution, device=dev).contiguous(
        memory_format=torch.channels_last
    )
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        for _ in range(2):
            model(x)
        sync()
        runs, start = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - start < seconds:
            model(x)
            runs += 1
            sync()
        elapsed = time.perf_counter() - start
    return runs * batch / elapsed
