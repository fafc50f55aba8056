"""The retraining's input pipeline: the search's datasets (``common.datasets``) through timm's
ImageNet transforms, and timm's Mixup/CutMix.

Images are decoded to PIL, grey ones made RGB, then augmented by ``timm.data.create_transform``
(random resized crop, horizontal flips for natural images only, RandAugment, random erasing)
or, for validation, resized and centre-cropped. Every epoch's order and augmentation follow
from the seed and the epoch alone (``seed_epoch``), so a run resumed after a kill trains on the
same batches as one that never stopped.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from retraining.recipe import Recipe

__all__ = ["Transformed", "loader", "mixup", "seed_epoch", "transform"]


class Transformed(Dataset):
    """A ``common.datasets`` set (uint8 (C, H, W) tensors) with a PIL transform applied."""

    def __init__(self, data: Dataset, transform: Any) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, label = self.data[index]
        array = pixels.numpy()
        image = (
            Image.fromarray(array[0])
            if array.shape[0] == 1
            else Image.fromarray(array.transpose(1, 2, 0))
        )
        return self.transform(image.convert("RGB")), int(label)


def transform(recipe: Recipe, resolution: int, *, train: bool, natural: bool) -> Any:
    """timm's training transform of the recipe, or its evaluation transform."""
    from timm.data import create_transform

    if not train:
        return create_transform(
            resolution, crop_pct=recipe.crop_pct, interpolation="bicubic", is_training=False
        )
    return create_transform(
        resolution,
        is_training=True,
        scale=(recipe.crop_scale, 1.0),
        hflip=0.5 if natural else 0.0,
        auto_augment=None if recipe.randaugment == "none" else recipe.randaugment,
        interpolation="bicubic",
        re_prob=recipe.reprob,
        re_mode="pixel",
        re_count=1,
    )


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators for ``epoch`` (Mixup draws from NumPy,
    stochastic depth from torch) and return the generator that orders the epoch's batches."""
    value = seed * 100_003 + epoch
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def loader(
    data: Dataset,
    recipe: Recipe,
    resolution: int,
    *,
    train: bool,
    batch: int,
    workers: int,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of (normalised float images, labels): shuffled by ``generator`` with the last
    partial batch dropped for training, in order for evaluation."""
    natural = getattr(data, "natural", True)
    dataset = Transformed(data, transform(recipe, resolution, train=train, natural=natural))
    return DataLoader(
        dataset,
        batch,
        shuffle=train,
        drop_last=train,
        generator=generator,
        num_workers=workers,
        pin_memory=pin_memory,
    )


def mixup(recipe: Recipe, num_classes: int) -> Any:
    """timm's Mixup/CutMix with the recipe's label smoothing, or None when both are off."""
    if recipe.mixup == 0 and recipe.cutmix == 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        label_smoothing=recipe.label_smoothing,
        num_classes=num_classes,
    )
