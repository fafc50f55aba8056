"""Timing a module's inference on a target: warm-up, then repeats until both a count and a time are
reached; the median and the interquartile range are kept.

On the CPU the allocator is settled first. glibc hands blocks above its mmap threshold straight
back to the system when they are freed, so every call page-faults its large activations in
again, until a block that large has once been freed: the threshold then rises to it (up to
32 MiB). A process's history thus decided whether a measurement paid for page faults (measured
here: one Dual-ViT stage took 82 ms in a fresh process and 51 ms after CoTNet-50 had run).
``settle_allocator`` frees one 31 MiB block before timing, which puts every measurement in the
steady state a long-running process reaches.

- ``cpu``: PyTorch eager in ``inference_mode`` with the target's thread count set for the
  duration, wall time per call;
- ``onnxruntime``: the module exported with ``torch.onnx.export`` (the ``torch.export`` path) and
  run by an ``InferenceSession`` on the CPU execution provider with the target's threads;
- ``cuda``: the module and inputs on the GPU, each call timed by CUDA events after a
  synchronisation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from latency.target import Target

__all__ = ["WARMUP", "Timing", "settle_allocator", "time_module"]

WARMUP = 3  # calls before timing (allocations, kernel selection, ORT's first-run work)
MIN_REPEATS, MIN_SECONDS, MAX_REPEATS = 10, 0.2, 200
SETTLE_BYTES = 31 * 2**20  # under glibc's 32 MiB cap of the dynamic mmap threshold (64-bit)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Latency of one call in milliseconds: the median of ``repeats`` timed calls and their
    first and third quartiles."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int

    @property
    def spread(self) -> float:
        """The interquartile range over the median: the measurement's stated noise."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @classmethod
    def of(cls, samples_ms: list[float]) -> Timing:
        q1, median, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
        return cls(median, q1, q3, len(samples_ms))


class _Tensors(nn.Module):
    """A module called with tensors only, returning tensors only: a stage or head takes
    ``(x, tokens)`` where tokens may be None, which export cannot carry."""

    def __init__(self, module: nn.Module, takes_tokens: bool) -> None:
        super().__init__()
        self.module, self.takes_tokens = module, takes_tokens

    def forward(self, x: Tensor, *tokens: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self.module(x, tokens[0] if tokens else None) if self.takes_tokens else self.module(x)
        if isinstance(out, tuple):
            return tuple(t for t in out if t is not None)
        return out


def time_module(
    module: nn.Module, inputs: tuple[Tensor, ...], target: Target, *, takes_tokens: bool = False
) -> Timing:
    """The latency of ``module(*inputs)`` (inputs on the CPU, batch first) on ``target``.
    ``takes_tokens``: the module's signature is ``(x, tokens)``, ``tokens`` being ``inputs[1]``
    or None when ``inputs`` holds one tensor."""
    model = _Tensors(module, takes_tokens).eval()
    settle_allocator()
    if target.device == "onnxruntime":
        return _time_calls(_onnx_call(model, inputs, target))
    if target.device == "cuda":
        model, inputs = model.cuda(), tuple(t.cuda() for t in inputs)
        with torch.inference_mode():
            return _time_calls(lambda: model(*inputs), cuda=True)
    with _threads(target.cpu_threads), torch.inference_mode():
        return _time_calls(lambda: model(*inputs))


def settle_allocator() -> None:
    """Free one ``SETTLE_BYTES`` block, so that the allocator keeps blocks up to that size
    instead of returning them to the system on every free (see the module docstring)."""
    block = torch.empty(SETTLE_BYTES, dtype=torch.uint8)
    block[::4096] = 0  # touch its pages, as an activation would
    del block


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _onnx_call(
    model: nn.Module, inputs: tuple[Tensor, ...], target: Target
) -> Callable[[], object]:
    """An ONNX Runtime session of ``model`` exported at these inputs' shapes, as a call."""
    import onnxruntime

    program = torch.onnx.export(model, inputs, dynamo=True, verbose=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = target.cpu_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feed)


def _time_calls(call: Callable[[], object], *, cuda: bool = False) -> Timing:
    """Warm up, then time calls until ``MIN_REPEATS`` and ``MIN_SECONDS`` are both reached (at
    most ``MAX_REPEATS``)."""
    for _ in range(WARMUP):
        call()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < MAX_REPEATS and (
        len(samples) < MIN_REPEATS or time.perf_counter() - started < MIN_SECONDS
    ):
        samples.append(_one_call_ms(call, cuda))
    return Timing.of(samples)


def _one_call_ms(call: Callable[[], object], cuda: bool) -> float:
    if not cuda:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    call()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)
