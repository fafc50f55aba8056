"""A proxy training step captured as a CUDA graph and replayed for every batch.

A short proxy training of a small model on a GPU is bound by the host: thousands of kernel
launches per step, each waiting its turn on the CPU. Captured once, the whole step (forward,
loss, backward and the fused AdamW update) is one graph launch. As CUDA graphs require, the
first ``WARMUP`` steps run eagerly on a side stream, the batch is copied into fixed input
buffers, the optimiser is ``capturable`` with its learning rate in a device tensor (the
schedule updates it in place), and autocast does not cache casts.

Only CUDA with bfloat16 or full precision is captured: float16's loss scaler decides on the
host whether to skip a step. A capture that fails (an operator that cannot be captured) is
reported once and the training goes on eagerly, with the same arithmetic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["WARMUP", "GraphedStep", "can_capture"]

WARMUP = 3  # eager steps before capture (CUDA's caching allocator and cuDNN settle)
log = logging.getLogger(__name__)


def can_capture(device: torch.device, amp: torch.dtype | None) -> bool:
    """Whether a step on ``device`` with autocast ``amp`` can be captured."""
    return device.type == "cuda" and amp != torch.float16


class GraphedStep:
    """``step(x, labels) -> loss``: eager for the first ``WARMUP`` calls, then captured and
    replayed. ``run`` is the proxy's training state (model, optimiser, schedule, amp);
    ``label_smoothing`` the loss's."""

    def __init__(self, run: Any, label_smoothing: float, eager: Callable[..., Tensor]) -> None:
        self.run, self.smoothing, self.eager = run, label_smoothing, eager
        self.calls, self.graph, self.failed = 0, None, False
        self.static: dict[str, Tensor] = {}

    def _loss(self, x: Tensor, labels: Tensor) -> Tensor:
        run = self.run
        with torch.autocast(
            "cuda", dtype=run.amp, enabled=run.amp is not None, cache_enabled=False
        ):
            return F.cross_entropy(run.model(x), labels, label_smoothing=self.smoothing)

    def _capture(self, x: Tensor, labels: Tensor) -> None:
        run = self.run
        self.static = {"x": x.clone(), "labels": labels.clone()}
        run.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._loss(self.static["x"], self.static["labels"])
            loss.backward()
            run.optimizer.step()
        self.static["loss"] = loss.detach()
        self.graph = graph

    def __call__(self, x: Tensor, labels: Tensor) -> Tensor:
        self.calls += 1
        if self.failed or self.calls <= WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self.eager(x, labels)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if self.graph is None:
            try:
                self._capture(x, labels)
            except RuntimeError as error:  # an operator that cannot be captured
                log.warning("CUDA graph capture failed, training eagerly: %s", error)
                self.failed, self.graph = True, None
                torch.cuda.synchronize()
                return self(x, labels)
        else:
            self.static["x"].copy_(x)
            self.static["labels"].copy_(labels)
        self.graph.replay()
        self.run.schedule.step()
        return self.static["loss"]
