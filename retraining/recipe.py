"""The retraining recipe: the one of the DeiT paper that the CMT paper trains with (ImageNet,
300 epochs), with the rules that scale it to other data.

Every field carries its command-line help, so ``retrain.py`` builds its options from this
dataclass (``common.cli.add_option``) and ``--help`` shows the recipe with its defaults.
Scaling rules: the learning rate is given for 512 images a batch and scaled linearly with the
batch (DeiT); a batch never exceeds the training set and is even (Mixup pairs images); the
warm-up lasts at most a tenth of the run; the EMA's decay is warmed up (``timm.utils.ModelEmaV3``),
so that a short run's average is not stuck at its random start.
"""

from __future__ import annotations

import dataclasses

from common.cli import setting
from common.fields import check_values

__all__ = ["LR_BATCH", "Recipe"]

LR_BATCH = 512  # the batch that ``Recipe.lr`` is given for (DeiT)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """AdamW, linear warm-up then cosine decay, label smoothing, RandAugment, Mixup/CutMix,
    random erasing, stochastic depth and an EMA of the weights (DeiT / CMT)."""

    epochs: int = setting(300, "training epochs (default %(default)s, as CMT-S/XS/B)")
    batch_size: int = setting(128, "images per batch (default %(default)s)")
    lr: float = setting(
        5e-4,
        f"AdamW learning rate for a batch of {LR_BATCH}, scaled linearly (default %(default)s)",
    )
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine (default %(default)s)")
    warmup_lr: float = setting(1e-6, "learning rate at the start of warm-up (default %(default)s)")
    warmup_epochs: float = setting(
        5.0, "linear warm-up, at most a tenth of the epochs (default %(default)s)"
    )
    weight_decay: float = setting(
        0.05, "AdamW weight decay, none on biases and norms (default %(default)s)"
    )
    label_smoothing: float = setting(0.1, "label smoothing (default %(default)s)")
    randaugment: str = setting(
        "rand-m9-mstd0.5-inc1", "timm RandAugment policy, or none (default %(default)s)"
    )
    mixup: float = setting(0.8, "Mixup alpha, 0 for none (default %(default)s)")
    cutmix: float = setting(1.0, "CutMix alpha, 0 for none (default %(default)s)")
    reprob: float = setting(0.25, "random erasing probability (default %(default)s)")
    drop_path: float = setting(0.1, "stochastic depth rate of the last block (default %(default)s)")
    ema_decay: float = setting(
        0.9998, "EMA decay of the weights (warmed up), 0 for no EMA (default %(default)s)"
    )
    crop_scale: float = setting(
        0.08, "smallest area of the random resized crop (default %(default)s)"
    )
    crop_pct: float = setting(
        0.875,
        "evaluation: centre crop of an image resized to side / crop_pct (default %(default)s)",
    )

    def __post_init__(self) -> None:
        unit = (lambda v: 0 <= v < 1, "in [0, 1)")
        checks = {
            "lr": (lambda v: v > 0, "> 0"),
            "min_lr": (lambda v: v >= 0, ">= 0"),
            "warmup_lr": (lambda v: v >= 0, ">= 0"),
            "warmup_epochs": (lambda v: v >= 0, ">= 0"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
            "label_smoothing": unit,
            "mixup": (lambda v: v >= 0, ">= 0"),
            "cutmix": (lambda v: v >= 0, ">= 0"),
            "reprob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "drop_path": unit,
            "ema_decay": unit,
            "crop_scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "crop_pct": (lambda v: 0 < v <= 1, "in (0, 1]"),
        }
        check_values(self, ("epochs", "batch_size"), checks)
        if not self.randaugment.startswith("rand") and self.randaugment != "none":
            raise ValueError(
                f"randaugment must be a timm RandAugment policy (rand-m9-mstd0.5-inc1, ...) or "
                f"none, got {self.randaugment!r}"
            )

    def batch_for(self, images: int) -> int:
        """The batch for a training set of ``images``: at most the set, and even."""
        batch = min(self.batch_size, images)
        return max(2, batch - batch % 2)

    def scaled_lr(self, batch: int) -> float:
        """The peak learning rate at ``batch``: ``lr`` x batch / 512."""
        return self.lr * batch / LR_BATCH

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Warm-up steps: ``warmup_epochs``, at most a tenth of the run."""
        epochs = min(self.warmup_epochs, self.epochs / 10)
        return round(epochs * steps_per_epoch)
