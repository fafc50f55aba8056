"""Pilot: how hard is a dataset for the search's architectures? One recipe, several datasets.

    python benchmarks/pilot.py --data clutter@60x4x8 clutter@40x4x8 fashion --archs 10 --workers 2
    python benchmarks/pilot.py --data clutter@40x4x8,fresh clutter@40x4x8,fixed --archs 4 \
        --epochs 10 --workers 2                 # a ten-epoch reference: far from saturation?

Trains the first ``--archs`` of ``benchmarks/fidelity.py``'s architectures (the same sample) on
each dataset with one recipe (``--epochs`` at ``--resolution``; the proxy's warm-up for one
epoch, the reference's for more, as ``fidelity.py`` trains them) and prints, per dataset, every
accuracy and their spread against the collapse line (1.5 x chance). Rows go to the dataset's
``benchmarks/results/fidelity-<data>.jsonl`` (the same rows ``fidelity.py`` reads), so a pilot's
trainings are kept and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import optuna
from fidelity import REFERENCE_WARMUP, Log, results_path, sampled

from common import datasets
from search.proxy import COLLAPSED, DEFAULTS
from space.cost import parse_budget


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--archs", type=int, default=10)
    parser.add_argument("--budget", default="4GFLOPs")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.archs < 1 or args.workers < 1:
        parser.error("--archs and --workers must be at least 1")
    try:
        names = [str(datasets.parse_name(name)) for name in args.data]
    except ValueError as error:
        parser.error(str(error))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warmup = DEFAULTS.warmup_fraction if args.epochs == DEFAULTS.epochs else REFERENCE_WARMUP
    recipe = dataclasses.replace(
        DEFAULTS, epochs=args.epochs, resolution=args.resolution, warmup_fraction=warmup
    )
    archs = sampled(args.archs, parse_budget(args.budget))
    logs = {name: Log(results_path(name), name) for name in names}
    for log in logs.values():
        log.fill([(arch, recipe, args.seed) for arch in archs], args.workers)
    print(f"\n{recipe}, seed {args.seed}, {args.archs} architectures at {args.budget}")
    print("| data | chance x 1.5 | accuracies | min | median | max | s per training |")
    print("|---|---|---|---|---|---|---|")
    for name, log in logs.items():
        rows = [log.get(arch, recipe, args.seed) for arch in archs]
        accuracy = [row["accuracy"] for row in rows]
        line = ", ".join(
            f"{a:.3f}" + ("*" if row["failed"] else "r" if row["reason"] else "")
            for a, row in zip(accuracy, rows, strict=True)
        )
        collapse = COLLAPSED / log.images.num_classes
        print(
            f"| {name} | {collapse:.3f} | {line} | {min(accuracy):.3f} "
            f"| {statistics.median(accuracy):.3f} | {max(accuracy):.3f} "
            f"| {statistics.median(row['seconds'] for row in rows):.0f} |"
        )
    print("(*: failed, collapsed after the retry; r: retrained at a lower lr; rows' reasons)")


if __name__ == "__main__":
    main()
