"""The training images on the training device: an epoch's batches (``ImageSource``) and their
preparation for a model (``prepare``: resized to the input side, lightly augmented, normalised,
channels_last). Shared by the proxy training (``search.proxy``) and the one-shot supernet's
(``oneshot.train``).

An in-memory set moves to the device once (a generated set, the cluttered digits, is generated
there, afresh every epoch where the set asks) and is shuffled and indexed there; any other set is
read by a DataLoader. Augmentation draws from a generator on the device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from common.datasets import ClutteredDigits, ImageTensorDataset

__all__ = ["ImageSource", "prepare", "random_shift"]


class ImageSource:
    """A dataset as batches of (uint8 images, labels) on the training device. An in-memory set
    moves to the device once and is shuffled and indexed there; others are read by a
    DataLoader. Training batches all have one size (the last, partial batch of an epoch is
    dropped; a set smaller than a batch is one batch)."""

    def __init__(self, data: Dataset, device: torch.device) -> None:
        self.data, self.device = data, device
        self.natural = getattr(data, "natural", False)
        self.images = self.labels = None
        if isinstance(data, ClutteredDigits):  # generated on the device, not copied there
            self.images, self.labels = data.draw(device), data.labels.to(device)
        elif isinstance(data, ImageTensorDataset):
            self.images, self.labels = data.images.to(device), data.labels.to(device)

    def __len__(self) -> int:
        return len(self.data)

    def batch_size(self, wanted: int) -> int:
        return min(wanted, len(self))

    def steps(self, wanted: int) -> int:
        """Training steps per epoch at batch size ``wanted``."""
        return len(self) // self.batch_size(wanted)

    def batches(
        self,
        wanted: int,
        *,
        train: bool,
        generator: torch.Generator | None = None,
        epoch: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """An epoch of batches, shuffled by ``generator`` (on the data's device) for training.
        A generated set that is drawn afresh every epoch is drawn for ``epoch`` first."""
        size = self.batch_size(wanted)
        if train and epoch is not None and getattr(self.data, "fresh", False):
            self.images = self.data.draw(self.device, epoch)
        if self.images is not None:
            n = len(self.images)
            if train:
                order = torch.randperm(n, generator=generator, device=self.device)
            else:
                order = torch.arange(n, device=self.device)
            stop = n - n % size if train else n
            for start in range(0, stop, size):
                idx = order[start : start + size]
                yield self.images[idx], self.labels[idx]
            return
        loader = DataLoader(
            self.data,
            size,
            shuffle=train,
            drop_last=train,
            generator=_loader_generator(generator) if train else None,
            num_workers=min(4, torch.get_num_threads()),
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


def _loader_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A DataLoader shuffles on the CPU: a CPU generator seeded from ``generator``."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def prepare(
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
        x = random_shift(x, max(1, resolution // 8), generator)
        if flips:
            flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return ((x - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)


def random_shift(x: Tensor, pad: int, generator: torch.Generator | None) -> Tensor:
    """Shift each image by up to ``pad`` pixels each way (zero fill): pad, then crop."""
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=x.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    padded = F.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]
