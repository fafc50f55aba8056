"""Training the supernet, and scoring a subnet with the weights it inherits.

Every step trains ``SupernetRecipe.subnets`` subnets on one batch and takes one optimiser step
with their summed gradients, by the sandwich rule (BigNAS, NASViT): the largest architecture of
the space fitted to the budget, the smallest, and subnets drawn at random from the one-shot space
(``oneshot.space``: draws as drawn, within 75-100% of the MAC budget, the ones scored). The recipe
is
the proxy's (AdamW without decay on biases and norms, linear warm-up then cosine decay, label
smoothing, the same images and augmentation: ``search.images``) over more epochs.

The supernet, the optimiser, the schedule and every random state are saved after each epoch
(written to a temporary file and renamed, so a kill never leaves half a checkpoint): a killed
training resumes at the epoch after the last one saved, and gives the tensors an uninterrupted
one would (on the CPU, bit for bit). After the last epoch the checkpoint keeps the supernet only
(AdamW's two moments would triple it: 3.9 GB for the default space).

A subnet's batch-norm statistics in the supernet mix those of every subnet trained; before it is
scored (``score``) they are estimated afresh on ``calibration_batches`` training batches
(cumulative averages, nothing trained), then its top-1 is measured on the validation images.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from common.datasets import ImageData
from common.fields import check_values
from oneshot.space import random_within
from oneshot.supernet import Supernet, template
from search.images import ImageSource, prepare
from search.proxy import ProxySettings, optimizer_and_schedule
from space.genotype import ArchSpec
from space.sampling import largest_within, smallest

__all__ = ["SupernetRecipe", "sandwich", "score", "train_supernet"]


@dataclasses.dataclass(frozen=True)
class SupernetRecipe:
    """How the supernet trains: the proxy's recipe (``proxy``: input, batch, AdamW, schedule,
    label smoothing) over its epochs, ``subnets`` subnets a step (the largest, the smallest, then
    random ones), and ``calibration_batches`` batches that re-estimate a subnet's batch-norm
    statistics before it is scored."""

    proxy: ProxySettings = dataclasses.field(default_factory=lambda: ProxySettings(epochs=4))
    subnets: int = 4
    calibration_batches: int = 4

    def __post_init__(self) -> None:
        check_values(self, ("subnets", "calibration_batches"), {})


def sandwich(
    supernet: Supernet, budget_macs: int, count: int, rng: random.Random, resolution: int = 224
) -> list:
    """The subnets of one step: the space's largest within the budget, its smallest, then
    ``count - 2`` drawn at random from the one-shot space (``oneshot.space``; fewer than three:
    the first ``count`` of those)."""
    blocks = supernet.blocks
    ends = [largest_within(budget_macs, resolution, blocks), smallest(resolution, blocks)]
    for arch in ends:
        if not supernet.covers(arch):
            raise ValueError(f"the supernet cannot run the space's {arch.block_mix} end")
    chosen = ends[:count]
    return chosen + [
        random_within(rng, budget_macs, resolution, blocks) for _ in range(count - len(chosen))
    ]


def train_supernet(
    supernet: Supernet,
    data: ImageData,
    recipe: SupernetRecipe,
    *,
    budget_macs: int,
    checkpoint: Path,
    seed: int = 0,
    epochs: int | None = None,
    resolution: int = 224,
    on_epoch: Callable[[int, int], None] | None = None,
    subnets: Callable[[random.Random], list[ArchSpec]] | None = None,
) -> list[float]:
    """Train ``supernet`` on ``data`` by ``recipe`` (see the module docstring) for a search
    within ``budget_macs`` at ``resolution``, resuming from ``checkpoint`` when it exists and
    saving it after every epoch; ``epochs`` stops after that many (default: all of the
    recipe's); ``on_epoch(done, total)`` is called before the first epoch and after each;
    ``subnets(rng)`` gives each step's subnets instead of the sandwich (a study of what sharing
    costs: ``benchmarks/oneshot_sharing.py``). Returns each epoch's mean training loss so far."""
    device = next(supernet.parameters()).device
    train_set = ImageSource(data.train, device)
    settings = recipe.proxy
    steps = settings.epochs * train_set.steps(settings.batch_size)
    optimizer, schedule = optimizer_and_schedule(
        supernet.parameters(), settings, steps, device=device
    )
    rng = random.Random(seed)
    draw = subnets or (lambda rng: sandwich(supernet, budget_macs, recipe.subnets, rng, resolution))
    generator = torch.Generator(device=device).manual_seed(seed)
    state = _Checkpointed(supernet, optimizer, schedule, rng, generator)
    losses, ended = state.load(checkpoint)
    if on_epoch is not None:
        on_epoch(len(losses), settings.epochs)
    if ended:  # the supernet is all the checkpoint kept
        return losses
    supernet.train()
    for epoch in range(len(losses), settings.epochs if epochs is None else epochs):
        total, count = torch.zeros((), device=device), 0  # summed on the device: no sync
        batches = train_set.batches(
            settings.batch_size, train=True, generator=generator, epoch=epoch
        )
        for images, labels in batches:
            x = prepare(
                images,
                settings.resolution,
                augment=True,
                flips=train_set.natural,
                generator=generator,
            )
            optimizer.zero_grad(set_to_none=True)
            archs = draw(rng)
            total = total + _backward(supernet, x, labels, archs, settings.label_smoothing)
            count += len(archs)
            optimizer.step()
            schedule.step()
        losses.append(float(total) / max(count, 1))
        state.save(checkpoint, losses, ended=len(losses) == settings.epochs)
        if on_epoch is not None:
            on_epoch(len(losses), settings.epochs)
    return losses


def _backward(
    supernet: Supernet, x: Tensor, labels: Tensor, archs: list, label_smoothing: float
) -> Tensor:
    """Accumulate the gradient of the mean loss of ``archs`` on one batch; return their summed
    loss (on the device)."""
    total = torch.zeros((), device=x.device)
    for arch in archs:
        loss = F.cross_entropy(supernet(x, arch), labels, label_smoothing=label_smoothing)
        (loss / len(archs)).backward()
        total = total + loss.detach()
    return total


@dataclasses.dataclass
class _Checkpointed:
    """What a checkpoint holds besides the losses: the supernet, the optimiser, the schedule
    and both random states."""

    supernet: Supernet
    optimizer: Any
    schedule: Any
    rng: random.Random
    generator: torch.Generator

    def load(self, path: Path) -> tuple[list[float], bool]:
        """Load the checkpoint at ``path`` when there is one: the epochs' losses so far, and
        whether the training had ended (then only the supernet was kept and loaded)."""
        if not path.exists():
            return [], False
        saved = torch.load(path, map_location=self.generator.device, weights_only=False)
        self.supernet.load_state_dict(saved["supernet"])
        if saved["optimizer"] is None:
            return saved["losses"], True
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.rng.setstate(saved["rng"])
        self.generator.set_state(saved["generator"].to(self.generator.device))
        return saved["losses"], False

    def save(self, path: Path, losses: list[float], ended: bool) -> None:
        """Write the checkpoint beside ``path`` and rename it over ``path`` (atomic); once the
        training has ``ended``, without the optimiser's state."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(
            {
                "supernet": self.supernet.state_dict(),
                "optimizer": None if ended else self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "rng": self.rng.getstate(),
                "generator": self.generator.get_state(),
                "losses": losses,
            },
            partial,
        )
        os.replace(partial, path)


def _calibration(
    supernet: Supernet, arch: ArchSpec
) -> tuple[nn.Module, dict[str, Tensor], list[nn.modules.batchnorm._BatchNorm]]:
    """``arch``'s template, its tensors with fresh batch-norm statistics, and its norms."""
    model = template(arch, supernet.resolution, supernet.num_classes)
    tensors = supernet.tensors(arch)
    norms = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            prefix = f"{name}." if name else ""
            mean, var = tensors[prefix + "running_mean"], tensors[prefix + "running_var"]
            tensors[prefix + "running_mean"] = torch.zeros_like(mean)
            tensors[prefix + "running_var"] = torch.ones_like(var)
            tensors[prefix + "num_batches_tracked"] = torch.zeros_like(
                tensors[prefix + "num_batches_tracked"]
            )
            norms.append(module)
    return model, tensors, norms


def score(
    supernet: Supernet,
    arch: ArchSpec,
    calibration: Iterator[Tensor] | Sequence[Tensor],
    val: Sequence[tuple[Tensor, Tensor]],
) -> float:
    """Top-1 of ``arch`` with its inherited weights on the validation batches ``val`` (prepared
    images, labels), its batch-norm statistics first re-estimated on the prepared ``calibration``
    images (a cumulative average over them)."""
    model, tensors, norms = _calibration(supernet, arch)
    momenta = [norm.momentum for norm in norms]
    try:
        for norm in norms:
            norm.momentum = None  # a cumulative average
        model.train()
        with torch.no_grad():
            for x in calibration:
                functional_call(model, tensors, (x,), strict=True)
            model.eval()
            device = next(iter(tensors.values())).device
            correct, total = torch.zeros((), dtype=torch.long, device=device), 0
            for x, labels in val:
                logits = functional_call(model, tensors, (x,), strict=True)
                correct += (logits.argmax(dim=1) == labels).sum()
                total += len(labels)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    return int(correct) / max(total, 1)  # the one read back to the host
