"""Proxy training: a short training that scores a candidate architecture.

The model is built for the proxy input (``build_model(arch, resolution=...)``: the genotype's
blocks, widths and depths are unchanged, only position tables and token grids are sized for the
smaller maps). In-memory datasets move to the training device once (generated ones, the
cluttered digits, are generated there, afresh every epoch where the set asks); images are
resized there in batches (small images upsampled) and lightly augmented (random shifts of an
eighth of the side; horizontal flips for natural images) with a generator on the device. Every
training batch has the same size (an epoch's last, partial batch is dropped). Training uses
AdamW, a linear warm-up and cosine decay, and label smoothing; validation top-1 is measured
after every epoch.
Model and images are channels_last and AdamW is the fused kernel on every device
(``docs/proxy.md``, "The trainer"). The same code runs on CUDA with mixed precision
(bfloat16 where supported, else float16 with loss scaling); on the CPU it is deterministic for
a seed.

A NaN or infinite loss or running out of memory ends that training with a failed
``ProxyResult`` that says why; it never raises. A training that would not fit in the device's
memory (``search.memory``) fails before anything is allocated. A training that ends below 1.5 x
chance has learnt nothing (it "collapsed"): its result is failed too, with its accuracy and the
reason, so that it is never ranked as the architecture's accuracy. A training that collapsed or
whose loss became non-finite is trained once more, from the same seed, at a quarter of the
learning rate: deep plain transformers (the 25-block CSWin-T layout of ``aewin_t``) can diverge
at the proxy's lr where every other design trains, and a proxy should rank architectures, not
their tolerance of one learning rate. The result is the retry's, its ``reason`` says so, and
every other training is untouched. An exception raised by the ``report`` callback (an Optuna
pruner's ``TrialPruned``, say) is not caught.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks import build_model
from common.datasets import ImageData
from common.device import amp_dtype, resolve_device
from common.fields import check_values
from search.graphs import GraphedStep, can_capture
from search.images import ImageSource, prepare
from search.memory import available_bytes, training_bytes
from space.genotype import ArchSpec

__all__ = [
    "DEFAULTS",
    "MIN_PROXY_RESOLUTION",
    "ProxyResult",
    "ProxySettings",
    "optimizer_and_schedule",
    "train",
]

MIN_PROXY_RESOLUTION = 16  # stage maps of 4, 2, 1, 1
COLLAPSED = 1.5  # a training ending below 1.5 x chance has learnt nothing: it is not ranked
COLLAPSE, NONFINITE = "collapsed", "the loss became"  # how the two reasons begin
DIVERGED = (COLLAPSE, NONFINITE)  # failures that a lower learning rate may cure
RETRY_LR = 0.25  # the retry's learning rate over the recipe's


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """The proxy's recipe. The defaults (two epochs at 24 px) rank 16 equal-cost architectures
    on the default ``clutter`` data at Kendall tau 0.62 against five-epoch 32 px references
    (one epoch: 0.48), and keep the default run within 15 minutes on a 2-core CPU
    (``benchmarks/fidelity.py``, ``docs/data.md``).
    ``resolution`` is the proxy input side of the searched architecture; every other model's
    follows ``SearchConfig.proxy_for``."""

    epochs: int = 2
    resolution: int = 24
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.3
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "lr": (lambda v: v > 0, "> 0"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
            "warmup_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
        }
        check_values(self, ("epochs", "resolution", "batch_size"), checks)
        if self.resolution < MIN_PROXY_RESOLUTION:
            raise ValueError(
                f"resolution (the proxy input) must be at least {MIN_PROXY_RESOLUTION}, "
                f"got {self.resolution}"
            )


DEFAULTS = ProxySettings()


@dataclasses.dataclass(frozen=True)
class ProxyResult:
    """The outcome of one proxy training; ``accuracy`` is validation top-1 in [0, 1].
    ``reason`` says why it failed, or, for a training retrained at a lower learning rate, so."""

    accuracy: float
    epoch_accuracies: tuple[float, ...]
    seconds: float
    images_per_second: float
    failed: bool = False
    reason: str = ""


class TrainingFailed(Exception):
    """Raised inside ``train`` to end a training that cannot go on (NaN loss)."""


def _evaluate(
    model: nn.Module, val: ImageSource, settings: ProxySettings, amp: torch.dtype | None
) -> float:
    """Validation top-1 (counted on the device, read once)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=val.device)
    with torch.no_grad(), torch.autocast(val.device.type, dtype=amp, enabled=amp is not None):
        for images, labels in val.batches(256, train=False):
            x = prepare(images, settings.resolution, augment=False, flips=False, generator=None)
            correct += (model(x).argmax(dim=1) == labels).sum()
    model.train()
    return int(correct) / max(len(val), 1)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class _Run(NamedTuple):
    """What one training works with: the model and its optimiser, schedule and loss scaler,
    the device and the autocast type (None: full precision)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: torch.dtype | None


def _setup(
    arch: ArchSpec,
    num_classes: int,
    steps: int,
    settings: ProxySettings,
    dev: torch.device,
    *,
    capture: bool,
) -> _Run:
    """The model built for the proxy input, AdamW (no decay on biases and norms), a linear
    warm-up then cosine decay over ``steps``, and mixed precision on CUDA. ``capture`` makes
    the optimiser capturable (a CUDA graph replays its step; ``search.graphs``)."""
    model = build_model(arch, num_classes, resolution=settings.resolution)
    model = model.to(dev, memory_format=torch.channels_last)
    amp = amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    optimizer, schedule = optimizer_and_schedule(
        model.parameters(), settings, steps, device=dev, capture=capture
    )
    return _Run(model, optimizer, schedule, scaler, dev, amp)


def optimizer_and_schedule(
    parameters: Iterable[nn.Parameter],
    settings: ProxySettings,
    steps: int,
    *,
    device: torch.device,
    capture: bool = False,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The proxy's optimiser: fused AdamW without decay on biases and norms (one-dimensional
    tensors), a linear warm-up over ``warmup_fraction`` of ``steps`` then cosine decay.
    ``capture`` makes it capturable (a CUDA graph replays its step; ``search.graphs``)."""
    parameters = list(parameters)
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=torch.tensor(settings.lr, device=device) if capture else settings.lr,
        fused=True,
        capturable=capture,
    )
    warmup = max(1, round(steps * settings.warmup_fraction))
    schedule = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, 1e-3, 1.0, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps - warmup)),
        ],
        milestones=[warmup],
    )
    return optimizer, schedule


def _step(run: _Run, x: Tensor, labels: Tensor, settings: ProxySettings) -> Tensor:
    """One optimisation step; returns the (detached) loss, without reading it."""
    with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
        loss = F.cross_entropy(run.model(x), labels, label_smoothing=settings.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.schedule.step()
    return loss.detach()


def _train_epoch(
    run: _Run,
    step: Callable[[Tensor, Tensor], Tensor],
    source: ImageSource,
    settings: ProxySettings,
    epoch: int,
    generator: torch.Generator,
    bar: Any,
) -> int:
    """One epoch of training; returns the number of images seen. A non-finite loss raises
    ``TrainingFailed``: on the CPU at once, on CUDA at the epoch's end (reading the loss would
    make the host wait for the GPU at every step)."""
    on_cpu = run.device.type == "cpu"
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    seen, loss = 0, None
    batches = source.batches(settings.batch_size, train=True, generator=generator, epoch=epoch)
    for images, labels in batches:
        x = prepare(
            images, settings.resolution, augment=True, flips=source.natural, generator=generator
        )
        loss = step(x, labels)
        nonfinite |= ~torch.isfinite(loss)
        if on_cpu and nonfinite:
            raise TrainingFailed(f"{NONFINITE} {loss.item()} in epoch {epoch + 1}")
        seen += len(labels)
        if bar is not None:
            bar.update(1)
            if on_cpu:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if nonfinite:
        raise TrainingFailed(f"{NONFINITE} non-finite (nan or inf) in epoch {epoch + 1}")
    if bar is not None and loss is not None:
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return seen


def train(
    arch: ArchSpec,
    data: ImageData,
    settings: ProxySettings = DEFAULTS,
    *,
    seed: int = 0,
    device: str = "cpu",
    report: Callable[[int, float], None] | None = None,
    progress: bool | None = None,
    cuda_graphs: bool = True,
) -> ProxyResult:
    """Train ``arch`` on ``data`` with the recipe ``settings``; see the module docstring.

    ``report(epoch, accuracy)`` is called after every epoch (for pruning; not during a retry at
    the lower learning rate); ``progress`` shows a tqdm bar (default: when standard error is a
    terminal); ``cuda_graphs`` captures the training step on CUDA (``search.graphs``).
    """
    options = dict(seed=seed, device=device, progress=progress, cuda_graphs=cuda_graphs)
    first = _train_once(arch, data, settings, report=report, **options)
    if not first.failed or not first.reason.startswith(DIVERGED):
        return first
    lower = dataclasses.replace(settings, lr=settings.lr * RETRY_LR)
    retry = _train_once(arch, data, lower, **options)
    seconds = first.seconds + retry.seconds
    if retry.failed:
        reason = f"{retry.reason} (also at lr {lower.lr:g}; at lr {settings.lr:g}: {first.reason})"
    else:
        reason = f"retrained at lr {lower.lr:g}; at lr {settings.lr:g}: {first.reason}"
    return dataclasses.replace(retry, seconds=seconds, reason=reason)


def _train_once(
    arch: ArchSpec,
    data: ImageData,
    settings: ProxySettings,
    *,
    seed: int,
    device: str,
    report: Callable[[int, float], None] | None = None,
    progress: bool | None,
    cuda_graphs: bool,
) -> ProxyResult:
    """One training with exactly ``settings``: ``train`` without the retry."""
    dev = resolve_device(device)
    start = time.perf_counter()
    seen, accuracies = 0, []
    bar = None
    shortfall = _memory_shortfall(arch, data.num_classes, settings, dev)
    if shortfall:
        return _failed(shortfall, accuracies, start, seen)
    try:
        torch.manual_seed(seed)
        generator = torch.Generator(device=dev).manual_seed(seed)
        train_set, val_set = ImageSource(data.train, dev), ImageSource(data.val, dev)
        steps = settings.epochs * train_set.steps(settings.batch_size)
        run, step = _stepper(arch, data.num_classes, steps, settings, dev, cuda_graphs)
        bar = _progress_bar(steps, arch, progress)
        for epoch in range(settings.epochs):
            seen += _train_epoch(run, step, train_set, settings, epoch, generator, bar)
            accuracies.append(_evaluate(run.model, val_set, settings, run.amp))
            if bar is not None:
                bar.set_postfix(val=f"{accuracies[-1]:.3f}")
            if report is not None:
                report(epoch, accuracies[-1])
    except TrainingFailed as failure:
        return _failed(str(failure), accuracies, start, seen)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not _is_out_of_memory(error):
            raise
        run = None  # free the model before emptying the cache
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return _failed(f"out of memory: {str(error).splitlines()[0]}", accuracies, start, seen)
    finally:
        if bar is not None:
            bar.close()
    return _finished(accuracies, time.perf_counter() - start, seen, data.num_classes)


def _stepper(
    arch: ArchSpec,
    num_classes: int,
    steps: int,
    settings: ProxySettings,
    dev: torch.device,
    cuda_graphs: bool,
) -> tuple[_Run, Callable[[Tensor, Tensor], Tensor]]:
    """The training state and its step function: eager, or captured and replayed on CUDA."""
    capture = cuda_graphs and can_capture(dev, amp_dtype(dev))
    run = _setup(arch, num_classes, steps, settings, dev, capture=capture)
    step = functools.partial(_step, run, settings=settings)
    return run, GraphedStep(run, settings.label_smoothing, step) if capture else step


def _finished(accuracies: list[float], seconds: float, seen: int, num_classes: int) -> ProxyResult:
    """The result of a training that ran to its end: failed ("collapsed") when its last
    accuracy is below ``COLLAPSED`` x chance, so that it is never ranked."""
    chance = 1 / num_classes
    if accuracies[-1] < COLLAPSED * chance:
        reason = (
            f"{COLLAPSE}: {accuracies[-1]:.1%} validation top-1 after the last epoch, chance is "
            f"{chance:.1%}"
        )
        return ProxyResult(accuracies[-1], tuple(accuracies), seconds, seen / seconds, True, reason)
    return ProxyResult(accuracies[-1], tuple(accuracies), seconds, seen / seconds)


def _memory_shortfall(
    arch: ArchSpec, num_classes: int, settings: ProxySettings, dev: torch.device
) -> str:
    """Why the training would not fit in the device's memory, or "" when it fits."""
    have = available_bytes(dev)
    if have is None:
        return ""
    need = training_bytes(arch, num_classes, settings.resolution, settings.batch_size)
    if need <= have:
        return ""
    return (
        f"out of memory before training: needs about {need / 2**30:.1f} GiB at batch "
        f"{settings.batch_size} and {settings.resolution}px, {have / 2**30:.1f} GiB available "
        f"on {dev}"
    )


def _failed(reason: str, accuracies: list[float], start: float, seen: int) -> ProxyResult:
    seconds = time.perf_counter() - start
    return ProxyResult(0.0, tuple(accuracies), seconds, seen / max(seconds, 1e-9), True, reason)


def _progress_bar(steps: int, arch: ArchSpec, progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"proxy {arch.block_mix}", unit="step", leave=False)
