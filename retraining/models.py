"""The project's models in timm: ``timm.create_model("hybrid_nas", arch=...)``.

Importing this module registers ``hybrid_nas`` with timm. ``arch`` is a genotype file (a run's
``best_arch.json``, a ``family/*.json``), a preset name (``cmt_s``, ``dualvit_s`` ...), a dict
or an ``ArchSpec``; the model is ``blocks.build_model``'s, with timm's keyword names
(``num_classes``, ``drop_rate``, ``drop_path_rate``, ``img_size`` for the input it is built for)
and a ``pretrained_cfg`` that timm's data helpers read (input size, ImageNet mean and std).
timm's own scripts (train.py, benchmark.py from its repository) see the model once this module
is imported; ``python -m retraining.models SCRIPT.py ARGS`` runs such a script with it
registered, e.g. ``... train.py --model hybrid_nas --model-kwargs arch=runs/x/best_arch.json``.
Weights saved by ``retrain.py`` (``best.pt``) load with timm's ``checkpoint_path=``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model

from blocks import build_model
from blocks.backbone import Backbone
from space import presets
from space.genotype import ArchSpec

__all__ = ["hybrid_nas", "load_arch"]


def load_arch(source: str | Path | dict | ArchSpec) -> ArchSpec:
    """The genotype that ``source`` names: a JSON file, a preset name, a dict or an ArchSpec.
    Raises ``ValueError`` naming the problem."""
    if isinstance(source, ArchSpec):
        return source
    if isinstance(source, dict):
        return ArchSpec.from_dict(source)
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return ArchSpec.from_json(path.read_text())
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read {path}: {error}") from None
        except ValueError as error:
            raise ValueError(f"{path} is not an architecture: {error}") from None
    if str(source) in presets.names():
        return presets.get(str(source))
    raise ValueError(
        f"{source!r} is neither an architecture file nor a preset "
        f"(presets: {', '.join(presets.names())})"
    )


def pretrained_cfg(resolution: int, num_classes: int) -> dict[str, Any]:
    """What timm's ``resolve_data_config`` reads from a model: its input and normalisation."""
    return {
        "input_size": (3, resolution, resolution),
        "num_classes": num_classes,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bicubic",
        "crop_pct": 0.875,
    }


@register_model
def hybrid_nas(
    pretrained: bool = False,
    *,
    arch: str | Path | dict | ArchSpec | None = None,
    num_classes: int = 1000,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    img_size: int | None = None,
    in_chans: int = 3,
    **timm_kwargs: Any,
) -> Backbone:
    """A searched or preset architecture as a timm model (see the module docstring)."""
    if arch is None:
        raise ValueError("hybrid_nas needs arch=: a genotype file, a preset name or a dict")
    if pretrained:
        raise ValueError(
            "hybrid_nas has no published weights; load retrain.py's best.pt with checkpoint_path="
        )
    if in_chans != 3:
        raise ValueError(f"hybrid_nas models take 3 input channels, got in_chans={in_chans}")
    unknown = set(timm_kwargs) - {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}
    if unknown:
        raise ValueError(f"hybrid_nas: unknown argument(s) {', '.join(sorted(unknown))}")
    spec = load_arch(arch)
    resolution = img_size or spec.resolution
    model = build_model(
        spec, num_classes, resolution=resolution, drop_path_rate=drop_path_rate, dropout=drop_rate
    )
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(resolution, num_classes)
    model.num_classes = num_classes
    return model


def main(argv: list[str]) -> int:
    """``python -m retraining.models SCRIPT.py ARGS``: run a timm script with ``hybrid_nas``
    registered."""
    if not argv or not Path(argv[0]).is_file():
        print("usage: python -m retraining.models SCRIPT.py [ARGS...]", file=sys.stderr)
        return 2
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
