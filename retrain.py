"""Retrain a searched (or preset) architecture with the CMT/DeiT recipe, and export it.

    python retrain.py runs/x/best_arch.json --data cifar10:~/data --epochs 300 --out runs/x-300
    python retrain.py docs/example-run/best_arch.json --data digits --epochs 30 --export onnx
    python retrain.py cmt_ti --data folder:~/images@224 --batch-size 256 --device cuda

ARCH is a genotype file (a run's best_arch.json, a family/*.json) or a preset name. The recipe
(``retraining.recipe.Recipe``: AdamW, warm-up and cosine, label smoothing, RandAugment,
Mixup/CutMix, random erasing, stochastic depth, EMA; timm's components) has one option per
setting. The run folder gets retrain.json (the settings), last.pt and best.pt (checkpoints,
every epoch), metrics.csv (and TensorBoard logs when installed), result.json and the exports.
Rerunning the command with the same --out resumes after the last finished epoch. Errors in the
options print one line and exit with status 2, before anything in the folder is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import typing
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from common.cli import Parser, UsageError, add_option, check_writable, exit_status
from common.datasets import NAMES as DATASET_NAMES
from retraining.recipe import Recipe
from space.genotype import MIN_RESOLUTION


def build_parser() -> argparse.ArgumentParser:
    """The run's options, then one option per setting of ``Recipe``."""
    parser = Parser(prog="retrain.py", description=__doc__.splitlines()[0])
    parser.add_argument("arch", metavar="ARCH", help="a genotype JSON file or a preset name")
    parser.add_argument(
        "--data",
        default="default",
        help=", ".join(DATASET_NAMES) + " (as run_search.py)",
    )
    parser.add_argument("--out", default="runs/retrain", help="run folder (default %(default)s)")
    parser.add_argument(
        "--resolution",
        type=int,
        default=0,
        help="input size to train at; 0: the data's image size, at least 32 and at most the "
        "genotype's (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data loading processes; 0 loads in the main process (default %(default)s)",
    )
    parser.add_argument(
        "--export",
        default="none",
        help="comma-separated formats to write and check: onnx, torchscript (default none)",
    )
    recipe = parser.add_argument_group("recipe (CMT / DeiT, scaled to the data)")
    hints = typing.get_type_hints(Recipe)
    for field in dataclasses.fields(Recipe):
        add_option(recipe, field.name, hints[field.name], field.default, field.metadata["help"])
    return parser


def _formats(text: str) -> tuple[str, ...]:
    from retraining.export import FORMATS

    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; use {', '.join(FORMATS)}")
    missing = [m for m in ("onnx", "onnxscript") if "onnx" in names and not find_spec(m)]
    if missing:
        raise ValueError(
            f"--export onnx needs {' and '.join(missing)}, which is not installed; "
            f"pip install -e '.[export]'"
        )
    return names


def prepare(args: argparse.Namespace) -> tuple[Any, Any, Any, tuple[str, ...]]:
    """The settings, data, device and export formats, every option checked before the run
    folder is touched."""
    from common import datasets
    from common.device import resolve_device
    from retraining.models import load_arch
    from retraining.trainer import RetrainSettings

    try:
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        formats = _formats(args.export)
        recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
        arch = load_arch(args.arch)
        data = datasets.load(args.data)
        resolution = args.resolution or min(arch.resolution, max(MIN_RESOLUTION, data.image_size))
        if resolution < MIN_RESOLUTION:
            raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {resolution}")
        device = resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = RetrainSettings(arch, datasets.absolute(args.data), resolution, args.seed, recipe)
    _check_folder(Path(args.out), settings)
    return settings, data, device, formats


def _check_folder(out: Path, settings: Any) -> None:
    """The folder can be made and, if it holds a retraining, holds this one."""
    from retraining.trainer import RetrainSettings

    check_writable(out)
    saved = out / "retrain.json"
    if saved.exists():
        try:
            previous = RetrainSettings.from_dict(json.loads(saved.read_text()))
        except (ValueError, KeyError, TypeError) as error:
            raise UsageError(f"{saved} cannot be read ({error}); choose another --out") from None
        changed = settings.changed_from(previous)
        if changed:
            raise UsageError(
                f"{out} holds a retraining made with {', '.join(changed)}; rerun with those "
                f"options to resume it, or choose another --out"
            )


def _versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "timm", "onnx", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def summarise(
    settings: Any, data: Any, history: list[dict], out: Path, device: Any, formats: tuple
) -> dict:
    """``result.json``: the best checkpoint's accuracy, the last epoch's, size and speed,
    and the exports (each checked against PyTorch on 8 validation images)."""
    import torch

    from blocks import build_model
    from common.device import amp_dtype
    from retraining.export import export, images_per_second
    from retraining.inputs import loader
    from retraining.trainer import checkpoint_model
    from space.cost import count, count_model

    best, weights = checkpoint_model(out / "best.pt")
    model = build_model(settings.arch, best["num_classes"], resolution=settings.resolution)
    model.load_state_dict(weights)
    trained = count_model(model, settings.resolution)
    model = model.to(device, memory_format=torch.channels_last)
    speed = {
        str(batch): images_per_second(model, settings.resolution, batch, device, amp_dtype(device))
        for batch in (1, 64)
    }
    images, _ = next(
        iter(
            loader(data.val, settings.recipe, settings.resolution, train=False, batch=8, workers=0)
        )
    )
    genotype = count(settings.arch)
    return {
        "arch": settings.arch.block_mix,
        "data": settings.data,
        "resolution": settings.resolution,
        "epochs": len(history),
        "top1": best["top1"],
        "top5": best["top5"],
        "best": {k: best[k] for k in ("epoch", "weights", "top1", "top5")},
        "last_epoch": history[-1],
        "params": trained.params,
        "macs": trained.macs,
        "genotype_macs_at_own_resolution": genotype.macs,
        "genotype_params_1000_classes": genotype.params,
        "train_images_per_second": history[-1]["images_per_second"],
        "inference_images_per_second": speed,
        "device": str(device),
        "versions": _versions(),
        "exports": export(model, images, out, formats),
    }


def retrain_and_export(args: argparse.Namespace) -> dict:
    from common.lock import folder_lock
    from retraining.trainer import retrain

    settings, data, device, formats = prepare(args)
    out = Path(args.out)
    with folder_lock(out):
        (out / "retrain.json").write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
        print(
            f"retraining {settings.arch.block_mix} on {settings.data} at {settings.resolution}px "
            f"for {settings.recipe.epochs} epochs on {device}; run folder {out}",
            flush=True,
        )

        def show(row: dict) -> None:
            print(
                f"epoch {row['epoch']}: loss {row['train_loss']:.3f}, top-1 {row['top1']:.1%}"
                f" (EMA {row['ema_top1']:.1%}), {row['images_per_second']:.0f} images/s",
                flush=True,
            )

        def resumed(done: int) -> None:
            if done:
                print(
                    f"resuming after epoch {done} of {settings.recipe.epochs} (from last.pt)",
                    flush=True,
                )

        history = retrain(
            settings,
            data,
            out,
            device=device,
            workers=args.workers,
            on_start=resumed,
            on_epoch=show,
        )
        result = summarise(settings, data, history, out, device, formats)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    best = result["best"]
    print(
        f"best: epoch {best['epoch']} ({best['weights']} weights), top-1 {best['top1']:.1%}, "
        f"top-5 {best['top5']:.1%}; {result['params'] / 1e6:.2f}M params, "
        f"{result['macs'] / 1e9:.3f} GMACs at {settings.resolution}px; "
        f"result: {out / 'result.json'}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        import timm  # noqa: F401
    except ImportError as error:
        print(f"retrain.py: error: retraining needs timm ({error}); see README", file=sys.stderr)
        return 2
    from common.lock import FolderBusy
    from retraining.export import ExportCheckFailed
    from retraining.trainer import Diverged

    return exit_status(
        "retrain.py",
        lambda: retrain_and_export(build_parser().parse_args(argv)),
        usage=(FolderBusy,),
        failures=(Diverged, ExportCheckFailed),
    )


if __name__ == "__main__":
    sys.exit(main())
