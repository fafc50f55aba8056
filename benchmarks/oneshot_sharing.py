"""What sharing the supernet costs: one architecture trained alone through the supernet, then
sharing the same training steps with more and more of the one-shot space.

    python benchmarks/oneshot_sharing.py --workers 2           # every variant, 2 epochs (17 min)
    python benchmarks/oneshot_sharing.py --variants space --epochs 8

The base is the architecture that standalone training ranks first among the fidelity
benchmark's draws (``benchmarks/oneshot_fidelity.py``: ``--archs`` draws of the one-shot space
at ``--budget``, ``random.Random(--seed)``; their standalone proxy trainings are read from, or
added to, its results file). A supernet is trained for ``--epochs`` with the default run's
proxy recipe, one subnet a step, drawn each step from one variant's set:

- ``alone``: the base only (the supernet's mechanics: this should match standalone training);
- ``shapes``: the base's block types, each stage's depth, width, heads, ratio and options taken
  from a random draw of the space with the same type at that stage; ``depths``, ``widths``
  (with heads) and ``options`` (with the ratio): that part of the shapes only;
- ``type-stage1`` .. ``type-stage4``: the base with that one stage taken from a random draw
  (any block type, its shapes with it);
- ``space``: random draws of the whole one-shot space (what the search trains and scores).

Each variant's row gives the supernet's losses, the base's score with its inherited weights
(``oneshot.search.Scorer.full``) beside its standalone accuracy, and every draw's score with the
Kendall tau against standalone. Rows are appended to
``benchmarks/results/oneshot-sharing.jsonl`` as each variant ends; a rerun skips the variants
already there for the same data, epochs, seed, draws and device. ``--device cuda`` trains and
scores the supernet on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.oneshot_fidelity import draws_and_standalone, kendall  # noqa: E402
from common import datasets  # noqa: E402
from common.device import resolve_device  # noqa: E402
from oneshot import search as oneshot_search  # noqa: E402
from oneshot.space import random_within  # noqa: E402
from oneshot.supernet import Supernet  # noqa: E402
from oneshot.train import train_supernet  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from space.genotype import NUM_STAGES, ArchSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "oneshot-sharing.jsonl"
TYPE_VARIANTS = [f"type-stage{i + 1}" for i in range(NUM_STAGES)]
SHAPE_PARTS = {  # the variants that take part of each stage's shape from a draw
    "depths": ("depth",),
    "widths": ("width", "heads"),
    "options": ("mlp_ratio", "options"),
    "shapes": ("depth", "width", "heads", "mlp_ratio", "options"),
}
VARIANTS = ["alone", *SHAPE_PARTS, *TYPE_VARIANTS, "space"]
POOL = 2000  # draws of the space whose stages the variants take
TRIES = 100  # draws until a changed architecture is valid (Dual's pools must agree)


def _changed(
    base: ArchSpec,
    pool: list[ArchSpec],
    rng: random.Random,
    stages: list[int],
    fields: tuple[str, ...] | None = None,
) -> ArchSpec:
    """``base`` with each of ``stages`` taken from a random draw of ``pool`` (any block type),
    or only its ``fields`` from a draw with the same block type at that stage; redrawn until
    the whole is valid."""
    for _ in range(TRIES):
        parts = list(base.stages)
        for i in stages:
            donors = [a for a in pool if fields is None or a.stages[i].block == parts[i].block]
            donor = rng.choice(donors).stages[i]
            taken = {f: getattr(donor, f) for f in fields} if fields else None
            parts[i] = donor if taken is None else dataclasses.replace(parts[i], **taken)
        try:
            return dataclasses.replace(base, stages=tuple(parts))
        except ValueError:
            continue
    raise RuntimeError(f"no valid change of stages {stages} in {TRIES} draws")


def drawer(
    variant: str, base: ArchSpec, pool: list[ArchSpec], config: SearchConfig
) -> Callable[[random.Random], list[ArchSpec]]:
    """Each training step's subnet (a list of one) for ``variant`` (see the module docstring)."""
    if variant == "alone":
        return lambda rng: [base]
    if variant in SHAPE_PARTS:
        every, fields = list(range(NUM_STAGES)), SHAPE_PARTS[variant]
        return lambda rng: [_changed(base, pool, rng, every, fields)]
    if variant in TYPE_VARIANTS:
        stage = TYPE_VARIANTS.index(variant)
        return lambda rng: [_changed(base, pool, rng, [stage])]
    if variant == "space":
        budget, resolution, blocks = config.budget_macs, config.resolution, config.block_types
        return lambda rng: [random_within(rng, budget, resolution, blocks)]
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def measure(
    variant: str,
    epochs: int,
    seed: int,
    config: SearchConfig,
    archs: list[ArchSpec],
    standalone: list[float],
    data: datasets.ImageData,
    device: str = "cpu",
) -> dict:
    """Train a fresh supernet on ``variant``'s subnets and score ``archs`` with it."""
    base = archs[max(range(len(archs)), key=standalone.__getitem__)]
    pool_rng = random.Random(seed + 1)
    pool = [
        random_within(pool_rng, config.budget_macs, config.resolution, config.block_types)
        for _ in range(POOL)
    ]
    recipe = oneshot_search.recipe(dataclasses.replace(config, supernet_epochs=epochs))
    torch.manual_seed(seed)
    supernet = Supernet(
        resolution=recipe.proxy.resolution, num_classes=data.num_classes, blocks=config.block_types
    ).to(device)
    started = time.perf_counter()
    checkpoint = RESULTS.parent / f".oneshot-sharing-{variant}.pt"  # removed at the end
    losses = train_supernet(
        supernet,
        data,
        dataclasses.replace(recipe, subnets=1),
        budget_macs=config.budget_macs,
        checkpoint=checkpoint,
        seed=seed,
        subnets=drawer(variant, base, pool, config),
    )
    seconds = time.perf_counter() - started
    checkpoint.unlink(missing_ok=True)
    scorer = oneshot_search.Scorer(supernet, data, recipe, seed)
    scores = [scorer.full(arch) for arch in archs]
    return {
        "variant": variant,
        "losses": [round(x, 4) for x in losses],
        "train_seconds": round(seconds),
        "base_score": scorer.full(base),
        "base_standalone": max(standalone),
        "scores": scores,
        "tau_vs_standalone": kendall(scores, standalone),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--epochs", type=int, default=SearchConfig().supernet_epochs)
    parser.add_argument("--budget", default="4GFLOPs")
    parser.add_argument("--archs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="standalone trainings at a time")
    parser.add_argument("--device", default="cpu", help="the supernet's: cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    try:
        device = str(resolve_device(args.device))
    except (ValueError, RuntimeError) as error:
        parser.error(f"--device: {error}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.epochs < 1 or args.archs < 3:
        parser.error("--epochs must be at least 1 and --archs at least 3")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = SearchConfig(budget=args.budget)
    data = datasets.load(config.data)
    name = str(datasets.parse_name(config.data))
    archs, alone = draws_and_standalone(config, args.archs, args.seed, args.workers)
    standalone = [(a + b) / 2 for a, b in zip(*alone, strict=True)]

    keys = {
        "data": name,
        "budget": args.budget,
        "epochs": args.epochs,
        "seed": args.seed,
        "archs": args.archs,
        "device": device,
    }
    done = set()
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in keys.items()):
                done.add(row["variant"])
    for variant in variants:
        if variant in done:
            print(f"{variant}: already in {RESULTS.name}")
            continue
        row = measure(variant, args.epochs, args.seed, config, archs, standalone, data, device)
        row = {"machine": platform.processor() or platform.machine(), **keys, **row}
        print(
            f"{variant}: losses {row['losses']}, base {row['base_score']:.3f} (standalone "
            f"{row['base_standalone']:.3f}), tau {row['tau_vs_standalone']['tau']:.3f}, "
            f"{row['train_seconds']} s",
            flush=True,
        )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
