"""Proxy training: a short training that scores a candidate architecture.

The model is built for the proxy input (``build_model(arch, resolution=...)``; the genotype's
blocks, widths and depths are unchanged, only position tables and token grids are sized for the
smaller maps). Images are resized to it in batches
(small images upsampled), lightly augmented (random shifts of an eighth of the side; horizontal
flips for natural images), and trained with AdamW, a linear warm-up and cosine decay, and label
smoothing. Validation top-1 is measured after every epoch. Model and images are channels_last
and AdamW is the fused kernel on every device (both faster than the defaults on the CPU too;
README). The same code runs on CUDA with mixed precision (bfloat16 where supported, else float16
with loss scaling); on the CPU it is deterministic for a seed.

A NaN or infinite loss or running out of memory ends that training with a failed
``ProxyResult`` that says why; it never raises. A training that would not fit in the device's
memory (``search.memory``) fails before anything is allocated. An exception raised by the
``report`` callback (an Optuna pruner's ``TrialPruned``, say) is not caught.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from blocks import build_model
from search.data import ImageData, ImageTensorDataset
from search.memory import available_bytes, training_bytes
from space.genotype import ArchSpec

__all__ = [
    "DEFAULTS",
    "MIN_PROXY_RESOLUTION",
    "ProxyResult",
    "ProxySettings",
    "resolve_device",
    "train",
]

MIN_PROXY_RESOLUTION = 16  # stage maps of 4, 2, 1, 1


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """The proxy's recipe; the defaults are the default proxy (chosen by
    ``benchmarks/fidelity.py``; see README). ``resolution`` is the proxy input side of the
    searched architecture (scaled members train at ``proxy_input``'s side)."""

    epochs: int = 2
    resolution: int = 32
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        for name in ("epochs", "resolution", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.resolution < MIN_PROXY_RESOLUTION:
            raise ValueError(
                f"resolution (the proxy input) must be at least {MIN_PROXY_RESOLUTION}, "
                f"got {self.resolution}"
            )
        checks = {
            "lr": (lambda v: v > 0, "> 0"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
            "warmup_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
        }
        for name, (ok, rule) in checks.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{name} must be a number {rule}, got {value!r}")


DEFAULTS = ProxySettings()


@dataclasses.dataclass(frozen=True)
class ProxyResult:
    """The outcome of one proxy training; ``accuracy`` is validation top-1 in [0, 1]."""

    accuracy: float
    epoch_accuracies: tuple[float, ...]
    seconds: float
    images_per_second: float
    failed: bool = False
    reason: str = ""


class TrainingFailed(Exception):
    """Raised inside ``train`` to end a training that cannot go on (NaN loss)."""


def _batches(
    data: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(uint8 images, labels) batches; in-memory sets are indexed directly, others loaded."""
    if isinstance(data, ImageTensorDataset):
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield data.images[idx].to(device), data.labels[idx].to(device)
        return
    workers = min(4, torch.get_num_threads())
    loader = DataLoader(
        data,
        batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _prepare(
    images: Tensor,
    resolution: int,
    *,
    augment: bool,
    flips: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """uint8 (B, C, h, w) -> normalised float (B, 3, resolution, resolution), channels_last."""
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    if augment:
        x = _random_shift(x, max(1, resolution // 8), generator)
        if flips:
            flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return ((x - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)


def _random_shift(x: Tensor, pad: int, generator: torch.Generator | None) -> Tensor:
    """Shift each image by up to ``pad`` pixels each way (zero fill): pad, then crop."""
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    padded = F.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def _evaluate(
    model: nn.Module,
    val: Dataset,
    settings: ProxySettings,
    device: torch.device,
    amp: torch.dtype | None,
) -> float:
    model.eval()
    correct, total = 0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for images, labels in _batches(
            val, 256, shuffle=False, generator=torch.Generator(), device=device
        ):
            x = _prepare(images, settings.resolution, augment=False, flips=False, generator=None)
            correct += int((model(x).argmax(dim=1) == labels).sum())
            total += len(labels)
    model.train()
    return correct / max(total, 1)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _check_finite(loss: Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingFailed(f"the loss became {loss.item()} in epoch {epoch + 1}")


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU. ``cuda[:N]`` asked for
    on a machine without CUDA, or with N beyond the visible GPUs, is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but CUDA is not available")
        visible = torch.cuda.device_count()
        if dev.index is not None and dev.index >= visible:
            raise ValueError(
                f"device {device!r} was asked for, but only {visible} GPU(s) are visible "
                f"(cuda:0 to cuda:{visible - 1})"
            )
    return dev


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
    arch: ArchSpec, num_classes: int, steps: int, settings: ProxySettings, dev: torch.device
) -> _Run:
    """The model built for the proxy input, AdamW (no decay on biases and norms), a linear
    warm-up then cosine decay over ``steps``, and mixed precision on CUDA."""
    model = build_model(arch, num_classes, resolution=settings.resolution)
    model = model.to(dev, memory_format=torch.channels_last)
    amp = None
    if dev.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        fused=True,
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
    return _Run(model, optimizer, schedule, scaler, dev, amp)


def _train_epoch(
    run: _Run,
    train_set: Dataset,
    settings: ProxySettings,
    epoch: int,
    generator: torch.Generator,
    bar: Any,
) -> int:
    """One epoch of training; returns the number of images seen. Raises ``TrainingFailed`` on
    a non-finite loss (checked every step on the CPU, every few steps on CUDA, where reading
    the loss waits for the GPU, and at the epoch's end)."""
    flips = getattr(train_set, "natural", False)
    check_every = 1 if run.device.type == "cpu" else 16
    seen = 0
    batches = _batches(
        train_set, settings.batch_size, shuffle=True, generator=generator, device=run.device
    )
    for step, (images, labels) in enumerate(batches):
        x = _prepare(images, settings.resolution, augment=True, flips=flips, generator=generator)
        with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
            loss = F.cross_entropy(run.model(x), labels, label_smoothing=settings.label_smoothing)
        if step % check_every == 0:
            _check_finite(loss, epoch)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.schedule.step()
        seen += len(labels)
        if bar is not None:
            bar.update(1)
            if step % check_every == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    _check_finite(loss, epoch)  # NaN weights stay NaN: the epoch's last loss tells
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
) -> ProxyResult:
    """Train ``arch`` on ``data`` with the recipe ``settings``; see the module docstring.

    ``report(epoch, accuracy)`` is called after every epoch (for pruning); ``progress`` shows a
    tqdm bar (default: when standard error is a terminal).
    """
    dev = resolve_device(device)
    train_set, val_set, num_classes, _ = data
    start = time.perf_counter()
    seen, accuracies = 0, []
    steps = settings.epochs * math.ceil(len(train_set) / settings.batch_size)
    bar = None
    shortfall = _memory_shortfall(arch, num_classes, settings, dev)
    if shortfall:
        return _failed(shortfall, accuracies, start, seen)
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        run = _setup(arch, num_classes, steps, settings, dev)
        bar = _progress_bar(steps, arch, progress)
        for epoch in range(settings.epochs):
            seen += _train_epoch(run, train_set, settings, epoch, generator, bar)
            accuracies.append(_evaluate(run.model, val_set, settings, dev, run.amp))
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
    seconds = time.perf_counter() - start
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
