"""Proxy fidelity: does the short proxy rank architectures the way 5 times longer training does?

    python benchmarks/fidelity.py --archs 10 --long-seeds  # the default proxy (~1.6 h, 2 cores)
    python benchmarks/fidelity.py --data digits --epochs 2   # another dataset and length

Samples ``--archs`` architectures from the search space at ``--budget`` (Optuna's
RandomSampler, seed 0), trains each with the proxy (``--epochs``) and with ``--factor`` times as
many epochs, and reports the Kendall tau between the two rankings, the spread of the proxy's
accuracies, and the tau between two proxy seeds (the proxy's own noise); ``--long-seeds`` also
trains the long run with a second seed, which measures how well the reference ranks itself.
Every training is appended to ``benchmarks/results/fidelity-<data>.jsonl`` and reused when the
command runs again, so an interrupted run resumes. Rows are keyed by architecture, epochs,
resolution and seed only: after a change to the trainer's arithmetic, delete the rows it makes
stale (the README says which rows were made by which trainer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import optuna
from scipy.stats import kendalltau

from search import data as datasets
from search.proxy import DEFAULTS, train
from space.cost import estimate, parse_budget
from space.genotype import ArchSpec
from space.sampling import sample

RESULTS = Path(__file__).resolve().parent / "results"


def sampled(n: int, budget: int, seed: int = 0) -> list[ArchSpec]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [sample(study.ask(), budget) for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="default")
    parser.add_argument("--archs", type=int, default=12)
    parser.add_argument("--budget", default="4GFLOPs")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution)
    parser.add_argument("--factor", type=int, default=5)
    parser.add_argument(
        "--long-epochs", type=int, default=None, help="epochs of the long run (default factor x)"
    )
    parser.add_argument(
        "--long-seeds",
        action="store_true",
        help="also train the long run with a second seed: the reference's own noise",
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    data = datasets.load(args.data)
    RESULTS.mkdir(exist_ok=True)
    name = datasets.DEFAULT if args.data == "default" else args.data
    log = RESULTS / f"fidelity-{name.replace(':', '_').replace('/', '_')}.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[(row["arch"], row["epochs"], row["resolution"], row["seed"])] = row

    def run(arch: ArchSpec, epochs: int, seed: int) -> dict:
        key = (arch.to_json(), epochs, args.resolution, seed)
        if key not in done:
            settings = dataclasses.replace(DEFAULTS, epochs=epochs, resolution=args.resolution)
            result = train(arch, data, settings, seed=seed)
            row = {
                "arch": key[0],
                "epochs": epochs,
                "resolution": args.resolution,
                "seed": seed,
                "accuracy": result.accuracy,
                "epoch_accuracies": result.epoch_accuracies,
                "seconds": result.seconds,
                "images_per_second": result.images_per_second,
                "failed": result.failed,
                "reason": result.reason,
            }
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[key] = row
        return done[key]

    long_epochs = args.long_epochs or args.factor * args.epochs
    budget = parse_budget(args.budget)
    archs = sampled(args.archs, budget)
    print(
        f"data {args.data}, {args.archs} architectures at {budget / 1e9:g} GMACs, proxy "
        f"{args.epochs} epochs at {args.resolution}px, long {long_epochs} epochs"
    )
    print("| # | blocks | GMACs | params | proxy | proxy seed 1 | long | long seed 1 | proxy s |")
    print("|---|---|---|---|---|---|---|---|---|")
    proxy, again, long, long_again = [], [], [], []
    for i, arch in enumerate(archs):
        short, repeat = run(arch, args.epochs, 0), run(arch, args.epochs, 1)
        full = run(arch, long_epochs, 0)
        proxy.append(short["accuracy"])
        again.append(repeat["accuracy"])
        long.append(full["accuracy"])
        other = "-"
        if args.long_seeds:
            long_again.append(run(arch, long_epochs, 1)["accuracy"])
            other = f"{long_again[-1]:.3f}"
        cost = estimate(arch)
        print(
            f"| {i} | {arch.block_mix} | {cost.macs / 1e9:.2f} | {cost.params / 1e6:.1f}M "
            f"| {short['accuracy']:.3f} | {repeat['accuracy']:.3f} | {full['accuracy']:.3f} "
            f"| {other} | {short['seconds']:.0f} |",
            flush=True,
        )
    tau = kendalltau(proxy, long)
    noise = kendalltau(proxy, again)
    print()
    print(f"Kendall tau, proxy vs {long_epochs} epochs: {tau.statistic:.3f} (p = {tau.pvalue:.3f})")
    print(f"Kendall tau, proxy seed 0 vs seed 1: {noise.statistic:.3f}")
    if long_again:
        reference = kendalltau(long, long_again).statistic
        print(f"Kendall tau, long seed 0 vs seed 1 (the reference's own noise): {reference:.3f}")
        mean = [(a + b) / 2 for a, b in zip(long, long_again, strict=True)]
        tau_mean = kendalltau(proxy, mean).statistic
        print(f"Kendall tau, proxy vs the mean of the two long runs: {tau_mean:.3f}")
    print(
        f"proxy accuracy: min {min(proxy):.3f}, max {max(proxy):.3f}, "
        f"spread {max(proxy) - min(proxy):.3f}, std {statistics.stdev(proxy):.3f}"
    )
    print(
        f"long accuracy: min {min(long):.3f}, max {max(long):.3f}, "
        f"spread {max(long) - min(long):.3f}, std {statistics.stdev(long):.3f}"
    )
    seconds = [run(a, args.epochs, 0)["seconds"] for a in archs]
    print(f"proxy seconds: median {statistics.median(seconds):.0f}, max {max(seconds):.0f}")


if __name__ == "__main__":
    main()
