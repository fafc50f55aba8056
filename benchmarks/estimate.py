"""The closed-form cost estimate against fvcore's count, and the sampler's speed.

    python benchmarks/estimate.py            # presets + 100 sampled architectures (~5 min)
    python benchmarks/estimate.py --samples 20

For every preset and for architectures sampled at 0.6, 1.5, 4 and 9 GMACs it times
``space.cost.count`` (fvcore tracing, uncached) and ``space.cost.estimate`` (formulas,
uncached), and reports their largest disagreement and the median speed-up; then the median
time of ``space.sampling.sample`` and how much of each budget the sampled architectures use.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna

from space import presets
from space.cost import count, estimate
from space.genotype import ArchSpec
from space.sampling import sample, smallest_macs

BUDGETS = (600_000_000, 1_500_000_000, 4_000_000_000, 9_000_000_000)
T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def sampled(budget: int, n: int, seed: int = 0) -> tuple[list[ArchSpec], list[float]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    archs, seconds = [], []
    for _ in range(n):
        trial = study.ask()
        arch, took = timed(sample, trial, budget)
        archs.append(arch)
        seconds.append(took)
        study.tell(trial, 0.0)
    return archs, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="sampled architectures to count")
    parser.add_argument("--sampling-trials", type=int, default=500, help="per budget")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    archs = [presets.get(name) for name in presets.names()]
    per_budget = max(1, args.samples // len(BUDGETS))
    for budget in BUDGETS:
        archs += sampled(budget, per_budget, seed=1)[0]
    worst, ratios = 0.0, []
    for arch in archs:
        counted, count_s = timed(count.__wrapped__, arch)
        estimated, _ = timed(estimate.__wrapped__, arch)
        repeats = [timed(estimate.__wrapped__, arch)[1] for _ in range(20)]
        ratios.append(count_s / statistics.median(repeats))
        for field in ("params", "macs"):
            a, b = getattr(counted, field), getattr(estimated, field)
            worst = max(worst, abs(a - b) / a)
    print(f"estimate vs count on {len(presets.names())} presets + {len(archs) - 7} sampled:")
    print(f"  largest relative difference (params or MACs): {worst:.2e}")
    print(f"  speed-up, median over architectures: {statistics.median(ratios):,.0f}x")
    print(f"  speed-up, smallest: {min(ratios):,.0f}x")
    print()
    print(f"smallest reachable architecture at 224 px: {smallest_macs(224) / 1e9:.3f} GMACs")
    print("| budget | sampled | median ms | max ms | min used | 5th pct used | median used |")
    print("|---|---|---|---|---|---|---|")
    for budget in BUDGETS:
        drawn, seconds = sampled(budget, args.sampling_trials)
        used = sorted(estimate(arch).macs / budget for arch in drawn)
        print(
            f"| {budget / 1e9:g}G | {len(drawn)} | {statistics.median(seconds) * 1e3:.1f} "
            f"| {max(seconds) * 1e3:.0f} | {used[0]:.1%} | {used[len(used) // 20]:.1%} "
            f"| {statistics.median(used):.1%} |"
        )


if __name__ == "__main__":
    main()
