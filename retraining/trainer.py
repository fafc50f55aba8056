"""The retraining loop: a genotype trained with a ``Recipe`` in a run folder that survives kills.

After every epoch the folder gets ``best.pt`` (when the epoch is the best so far), then
``last.pt`` (everything needed to go on: model, EMA, optimiser, schedule, loss scaler, the
metrics so far), then ``metrics.csv`` rewritten from the metrics in ``last.pt``; each file is
written whole and renamed into place. A rerun loads ``last.pt`` and starts at the next epoch;
because every epoch's batches and augmentations follow from the seed and the epoch alone
(``retraining.inputs.seed_epoch``), a run killed and resumed ends with the weights and metrics of
one that never stopped (on the CPU, where the kernels are deterministic, and with the same
number of data-loading workers, each of which draws its own augmentations). The device rules are
the search's: ``common.device.resolve_device``, channels_last, bfloat16 autocast on CUDA where
supported (float16 with loss scaling elsewhere). Checkpoints hold tensors and plain values only
and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from blocks import build_model
from common.datasets import ImageData
from common.device import amp_dtype
from common.fields import field_names, reject_unknown
from retraining import inputs
from retraining.recipe import Recipe
from space.genotype import ArchSpec

__all__ = ["Diverged", "RetrainSettings", "checkpoint_model", "evaluate", "retrain"]

METRICS = (
    "epoch",
    "lr",
    "train_loss",
    "top1",
    "top5",
    "ema_top1",
    "ema_top5",
    "seconds",
    "images_per_second",
)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; the last good epoch's checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class RetrainSettings:
    """What defines a retraining: a run folder resumes only with the same settings."""

    arch: ArchSpec
    data: str
    resolution: int
    seed: int
    recipe: Recipe

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch.to_dict(),
            "data": self.data,
            "resolution": self.resolution,
            "seed": self.seed,
            "recipe": dataclasses.asdict(self.recipe),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainSettings:
        reject_unknown(data, field_names(cls))
        reject_unknown(data["recipe"], field_names(Recipe), where="recipe: ")
        return cls(
            ArchSpec.from_dict(data["arch"]),
            data["data"],
            data["resolution"],
            data["seed"],
            Recipe(**data["recipe"]),
        )

    def changed_from(self, previous: RetrainSettings) -> list[str]:
        """``name=value`` (the earlier value) of each setting that differs in ``previous``."""
        now, before = self.to_dict(), previous.to_dict()
        changed = [
            f"{name}={before[name]!r}"
            for name in ("data", "resolution", "seed")
            if now[name] != before[name]
        ]
        if now["arch"] != before["arch"]:
            changed.insert(0, f"another architecture ({previous.arch.block_mix})")
        changed += [
            f"--{name.replace('_', '-')} {value}"
            for name, value in before["recipe"].items()
            if now["recipe"][name] != value
        ]
        return changed


class _Training(NamedTuple):
    """The state of a training: model, EMA, optimiser, schedule, loss scaler and loss, the
    Mixup (or None), the device and the autocast type (None: full precision)."""

    model: nn.Module
    ema: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    mixup: Any
    device: torch.device
    amp: torch.dtype | None


def _setup(
    settings: RetrainSettings, num_classes: int, batch: int, steps: int, dev: torch.device
) -> _Training:
    """timm's AdamW (no decay on biases and norms), cosine schedule with warm-up stepped per
    update, EMA, Mixup and loss for ``settings``, on ``dev``."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    recipe = settings.recipe
    torch.manual_seed(settings.seed)
    model = build_model(
        settings.arch,
        num_classes,
        resolution=settings.resolution,
        drop_path_rate=recipe.drop_path,
    ).to(dev, memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=recipe.scaled_lr(batch), weight_decay=recipe.weight_decay
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=recipe.epochs * steps,
        lr_min=recipe.min_lr,
        warmup_t=recipe.warmup_steps(steps),
        warmup_lr_init=recipe.warmup_lr,
        t_in_epochs=False,
    )
    ema = ModelEmaV3(model, decay=recipe.ema_decay, use_warmup=True) if recipe.ema_decay else None
    mixup = inputs.mixup(recipe, num_classes)
    criterion = (
        SoftTargetCrossEntropy()
        if mixup is not None
        else LabelSmoothingCrossEntropy(recipe.label_smoothing)
    )
    amp = amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    return _Training(model, ema, optimizer, scheduler, scaler, criterion, mixup, dev, amp)


def _state(training: _Training, epoch: int, history: list[dict], best: dict) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model": training.model.state_dict(),
        "ema": training.ema.module.state_dict() if training.ema is not None else None,
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "scaler": training.scaler.state_dict(),
        "history": history,
        "best": best,
    }


def _restore(training: _Training, state: dict[str, Any]) -> tuple[int, list[dict], dict]:
    training.model.load_state_dict(state["model"])
    if training.ema is not None:
        training.ema.module.load_state_dict(state["ema"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["history"], state["best"]


def _save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` whole: a temporary file renamed into place."""
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def checkpoint_model(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The description (arch, resolution, classes, epoch, ...) and weights in ``best.pt``."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in saved.items() if k != "state_dict"}, saved["state_dict"]


def evaluate(
    model: nn.Module, batches: Iterable, dev: torch.device, amp: torch.dtype | None
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (top-k of all classes when there are fewer than 5), counted
    on the device and read once."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.long, device=dev)
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        for images, labels in batches:
            x = images.to(dev, non_blocking=True, memory_format=torch.channels_last)
            labels = labels.to(dev, non_blocking=True)
            logits = model(x)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == labels[:, None]
            counts += torch.stack(
                [hits[:, 0].sum(), hits.any(1).sum(), labels.new_tensor(len(labels))]
            )
    model.train(was_training)
    top1, top5, seen = counts.tolist()
    return top1 / max(seen, 1), top5 / max(seen, 1)


def _train_epoch(
    training: _Training, batches: Iterable, first_step: int, bar: Any
) -> tuple[float, int]:
    """One epoch; returns the mean training loss and the images seen. The loss is read once,
    at the end (a non-finite one raises ``Diverged``)."""
    model, dev = training.model, training.device
    total = torch.zeros((), device=dev)
    finite = torch.ones((), dtype=torch.bool, device=dev)
    seen, step = 0, first_step
    for images, labels in batches:
        x = images.to(dev, non_blocking=True, memory_format=torch.channels_last)
        y = labels.to(dev, non_blocking=True)
        if training.mixup is not None:
            x, y = training.mixup(x, y)
        with torch.autocast(dev.type, dtype=training.amp, enabled=training.amp is not None):
            loss = training.criterion(model(x), y)
        training.optimizer.zero_grad(set_to_none=True)
        training.scaler.scale(loss).backward()
        training.scaler.step(training.optimizer)
        training.scaler.update()
        step += 1
        training.scheduler.step_update(num_updates=step)
        if training.ema is not None:
            training.ema.update(model, step=step)
        total += loss.detach() * len(labels)
        finite &= torch.isfinite(loss.detach())
        seen += len(labels)
        if bar is not None:
            bar.update(1)
    if not bool(finite):
        raise Diverged("the training loss became NaN or infinite; lower --lr and rerun")
    return float(total) / max(seen, 1), seen


def _write_metrics(history: list[dict], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, METRICS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(partial, path)


def _tensorboard(out: Path) -> Any:
    """A TensorBoard writer in ``out/tensorboard`` when TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _progress(total: int, epoch: int, epochs: int, show: bool | None) -> Any:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False)


def retrain(
    settings: RetrainSettings,
    data: ImageData,
    out: Path,
    *,
    device: torch.device,
    workers: int,
    progress: bool | None = None,
    on_start: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train (or go on training) ``settings`` on ``data`` in ``out``; returns the metrics of
    every epoch. ``on_start(epochs_done)`` is called once the checkpoint (if any) is loaded,
    ``on_epoch(row)`` after each epoch's checkpoint is written."""
    recipe = settings.recipe
    out.mkdir(parents=True, exist_ok=True)
    batch = recipe.batch_for(len(data.train))
    steps = len(data.train) // batch
    training = _setup(settings, data.num_classes, batch, steps, device)
    start, history, best = 0, [], {}
    if (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location=device, weights_only=True)
        start, history, best = _restore(training, state)
        del state
    if on_start is not None:
        on_start(start)
    pin, resolution = device.type == "cuda", settings.resolution
    val = inputs.loader(
        data.val, recipe, resolution, train=False, batch=256, workers=workers, pin_memory=pin
    )
    board = _tensorboard(out) if start < recipe.epochs else None
    for epoch in range(start, recipe.epochs):
        order = inputs.seed_epoch(settings.seed, epoch)
        batches = inputs.loader(
            data.train, recipe, resolution, train=True, batch=batch, workers=workers,
            generator=order, pin_memory=pin,
        )  # fmt: skip
        bar = _progress(steps, epoch, recipe.epochs, progress)
        row = _epoch(training, batches, val, epoch, epoch * steps, bar)
        history.append(row)
        best = _keep_best(training, settings, data.num_classes, row, best, out)
        _save(_state(training, epoch + 1, history, best), out / "last.pt")
        _write_metrics(history, out / "metrics.csv")
        if board is not None:
            for name in METRICS[1:]:
                board.add_scalar(name, row[name], epoch + 1)
            board.flush()
        if on_epoch is not None:
            on_epoch(row)
    if board is not None:
        board.close()
    return history


def _epoch(
    training: _Training, batches: Iterable, val: Iterable, epoch: int, first_step: int, bar: Any
) -> dict[str, Any]:
    """Train one epoch (its bar closed at the end) and measure it: the epoch's metrics row."""
    began = time.perf_counter()
    try:
        loss, seen = _train_epoch(training, batches, first_step, bar)
    finally:
        if bar is not None:
            bar.close()
    return _epoch_row(training, val, epoch, loss, time.perf_counter() - began, seen)


def _epoch_row(
    training: _Training, val: Iterable, epoch: int, loss: float, seconds: float, seen: int
) -> dict[str, Any]:
    """The metrics of an epoch just trained: validation of the model and of its EMA."""
    top1, top5 = evaluate(training.model, val, training.device, training.amp)
    ema_top1 = ema_top5 = math.nan
    if training.ema is not None:
        ema_top1, ema_top5 = evaluate(training.ema.module, val, training.device, training.amp)
    return {
        "epoch": epoch + 1,
        "lr": training.optimizer.param_groups[0]["lr"],
        "train_loss": loss,
        "top1": top1,
        "top5": top5,
        "ema_top1": ema_top1,
        "ema_top5": ema_top5,
        "seconds": seconds,
        "images_per_second": seen / seconds,
    }


def _keep_best(
    training: _Training,
    settings: RetrainSettings,
    num_classes: int,
    row: dict[str, Any],
    best: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """Write ``best.pt`` when this epoch's model or EMA beats the best top-1 so far; returns
    the best's description (epoch, weights, top-1, top-5)."""
    use_ema = training.ema is not None and row["ema_top1"] > row["top1"]
    top1, top5 = (row["ema_top1"], row["ema_top5"]) if use_ema else (row["top1"], row["top5"])
    if best and top1 <= best["top1"]:
        return best
    best = {
        "epoch": row["epoch"],
        "weights": "ema" if use_ema else "model",
        "top1": top1,
        "top5": top5,
    }
    model = training.ema.module if use_ema else training.model
    _save(
        {
            **best,
            "arch": settings.arch.to_dict(),
            "resolution": settings.resolution,
            "num_classes": num_classes,
            "state_dict": model.state_dict(),
        },
        out / "best.pt",
    )
    return best
