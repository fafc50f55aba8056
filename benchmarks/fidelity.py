"""Proxy fidelity: does the short proxy rank architectures the way much longer training does?

    python benchmarks/fidelity.py --archs 10                       # the default proxy
    python benchmarks/fidelity.py --archs 10 --resolution 24       # a proxy at 24 px
    python benchmarks/fidelity.py --archs 10 --long-resolution 64 --long-epochs 10 --long-seeds
    python benchmarks/fidelity.py --archs 10 --resolution 48 --long-resolution 48 \
        --long-epochs 5 --long-seeds --workers 2         # a 48 px proxy, same-geometry reference

Samples ``--archs`` architectures from the search space at ``--budget`` (Optuna's
RandomSampler, seed 0) and trains each twice with the proxy under test (seeds 0 and 1: its own
noise) and with the reference, a longer training (``--long-epochs``, at ``--long-resolution``,
warm-up over 10% of its steps); ``--long-seeds`` trains the reference with a second seed too,
which measures how well the reference ranks itself. It reports the Kendall tau between the
rankings (with its p-value), the spread of the proxy's accuracies and its seconds per training.

Every training is appended to ``benchmarks/results/fidelity-<data>.jsonl`` as it ends, keyed by
architecture, whole recipe and seed, and reused when the command runs again, so an interrupted
run resumes and proxies share their references. Rows written before recipes were recorded are
read as the recipe of their time (warm-up over 10% of the steps, the rest as today). After a
change to the trainer's arithmetic, delete the rows it makes stale (``docs/proxy.md`` says which
rows were made by which trainer). ``--workers N`` trains the missing ones N at a time with one
thread each, in the order reference seed 0, proxy seeds, reference seed 1, writing each as it ends.
``--device cuda`` trains on the GPU, one training at a time; every row records its device.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import optuna
from scipy.stats import kendalltau

from common import datasets
from common.device import resolve_device
from search.proxy import DEFAULTS, ProxyResult, ProxySettings, train
from space.cost import estimate, parse_budget
from space.genotype import ArchSpec
from space.sampling import sample

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE_WARMUP = 0.1  # the reference's warm-up, as its existing runs were made
OLD_ROWS = {"warmup_fraction": 0.1}  # what rows without a recipe were trained with


def results_path(data: str, kind: str = "fidelity") -> Path:
    """``benchmarks/results/<kind>-<data>.jsonl``, the data named in full (``default`` as the
    set it stands for, a cluttered task's geometry spelt out)."""
    name = str(datasets.parse_name(data)).replace(":", "_").replace("/", "_")
    return RESULTS / f"{kind}-{name}.jsonl"


def sampled(n: int, budget: int, seed: int = 0) -> list[ArchSpec]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [sample(study.ask(), budget) for _ in range(n)]


def _key(arch: str, recipe: dict[str, Any], seed: int) -> str:
    return json.dumps([arch, recipe, seed], sort_keys=True)


class Log:
    """The results file: trainings by (architecture, recipe, seed); trains what is missing."""

    def __init__(self, path: Path, data: str, device: str = "cpu") -> None:
        self.path, self.data, self.device, self.done = path, data, device, {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                recipe = row.get("recipe") or dataclasses.asdict(
                    dataclasses.replace(
                        DEFAULTS,
                        epochs=row["epochs"],
                        resolution=row["resolution"],
                        **OLD_ROWS,
                    )
                )
                self.done[_key(row["arch"], recipe, row["seed"])] = row

    def get(self, arch: ArchSpec, recipe: ProxySettings, seed: int) -> dict:
        key = _key(arch.to_json(), dataclasses.asdict(recipe), seed)
        if key not in self.done:
            result = train(arch, self.images, recipe, seed=seed, device=self.device)
            self.add(_row(arch.to_json(), dataclasses.asdict(recipe), seed, result, self.device))
        return self.done[key]

    @functools.cached_property
    def images(self) -> datasets.ImageData:
        """The data, loaded once, when a training in this process first needs it."""
        return datasets.load(self.data)

    def add(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.done[_key(row["arch"], row["recipe"], row["seed"])] = row

    def fill(self, tasks: list[tuple[ArchSpec, ProxySettings, int]], workers: int) -> None:
        """Train the missing tasks ``workers`` at a time, one thread each, keeping each row."""
        rows = [(arch.to_json(), dataclasses.asdict(recipe), seed) for arch, recipe, seed in tasks]
        missing = [row for row in rows if _key(*row) not in self.done]
        print(f"{len(tasks) - len(missing)} of {len(tasks)} trainings already done", flush=True)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_train_row, self.data, *task) for task in missing]
            for future in as_completed(futures):
                row = future.result()
                self.add(row)
                print(
                    f"trained {ArchSpec.from_json(row['arch']).block_mix} at "
                    f"{row['recipe']['resolution']} px for {row['recipe']['epochs']} epochs, "
                    f"seed {row['seed']}: {row['accuracy']:.3f} in {row['seconds']:.0f} s",
                    flush=True,
                )


def _row(arch: str, recipe: dict[str, Any], seed: int, result: Any, device: str) -> dict:
    return {
        "arch": arch,
        "recipe": recipe,
        "seed": seed,
        "device": device,
        "accuracy": result.accuracy,
        "epoch_accuracies": list(result.epoch_accuracies),
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "failed": result.failed,
        "reason": result.reason,
    }


def train_one_thread(data: str, arch: str, recipe: dict[str, Any], seed: int) -> ProxyResult:
    """One proxy training in a worker process, on one CPU thread (so its arithmetic does not
    depend on how many workers run beside it); arguments as JSON-ready values."""
    import torch

    torch.set_num_threads(1)
    return train(ArchSpec.from_json(arch), datasets.load(data), ProxySettings(**recipe), seed=seed)


def _train_row(data: str, arch: str, recipe: dict[str, Any], seed: int) -> dict:
    result = train_one_thread(data, arch, recipe, seed)
    return {**_row(arch, recipe, seed, result, "cpu"), "threads": 1}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="default")
    parser.add_argument("--archs", type=int, default=10)
    parser.add_argument("--budget", default="4GFLOPs")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="the proxy's")
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution, help="the proxy's")
    parser.add_argument(
        "--warmup", type=float, default=DEFAULTS.warmup_fraction, help="the proxy's warm-up"
    )
    parser.add_argument("--long-epochs", type=int, default=10, help="the reference's epochs")
    parser.add_argument(
        "--long-resolution", type=int, default=32, help="the reference's input size"
    )
    parser.add_argument(
        "--long-seeds",
        action="store_true",
        help="also train the reference with a second seed: the reference's own noise",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="trainings at a time, one thread each (if > 1)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    return parser


def _tau(a: list[float], b: list[float]) -> str:
    result = kendalltau(a, b)
    return f"{result.statistic:.3f} (p = {result.pvalue:.4f})"


def _seed_sd(first: list[float], second: list[float]) -> float:
    """The pooled seed-to-seed standard deviation of one training, from pairs of seeds."""
    return statistics.fmean((a - b) ** 2 / 2 for a, b in zip(first, second, strict=True)) ** 0.5


def _report(
    proxy: list[float],
    again: list[float],
    long: list[float],
    long_again: list[float],
    seconds: dict[str, list[float]],
) -> None:
    """Rank agreements (Kendall tau with p), spreads against seed noise, seconds per training."""
    mean = [(a + b) / 2 for a, b in zip(proxy, again, strict=True)]
    print()
    print(f"Kendall tau, proxy seed 0 vs reference seed 0: {_tau(proxy, long)}")
    print(f"Kendall tau, proxy seed 0 vs seed 1 (its own noise): {_tau(proxy, again)}")
    if long_again:
        both = [(a + b) / 2 for a, b in zip(long, long_again, strict=True)]
        ceiling = _tau(long, long_again)
        print(f"Kendall tau, reference seed 0 vs seed 1 (the data's ceiling): {ceiling}")
        print(f"Kendall tau, proxy seed 0 vs the references' seed mean: {_tau(proxy, both)}")
        print(f"Kendall tau, proxy seed 1 vs the references' seed mean: {_tau(again, both)}")
        print(f"Kendall tau, proxy seed mean vs the references' seed mean: {_tau(mean, both)}")
    else:
        both = long
        print(f"Kendall tau, proxy seed mean vs reference seed 0: {_tau(mean, long)}")
    pairs = [("proxy", mean, proxy, again)]
    if long_again:
        pairs.append(("reference", both, long, long_again))
    for name, values, first, second in pairs:
        sd = _seed_sd(first, second)
        spread = max(values) - min(values)
        print(
            f"{name} accuracy (seed mean): {min(values):.3f}-{max(values):.3f}, spread "
            f"{spread:.3f}, sd across architectures {statistics.stdev(values):.3f}; seed sd of "
            f"one training {sd:.3f}: spread / seed sd {spread / sd if sd else float('inf'):.1f}"
        )
    for name, values in seconds.items():
        median, most = statistics.median(values), max(values)
        print(f"{name} seconds per training: median {median:.0f}, max {most:.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        device = str(resolve_device(args.device))
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    if args.archs < 3:
        parser.error("--archs must be at least 3 for a ranking to compare")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and device != "cpu":
        parser.error("--workers trains on CPU threads; on a GPU use --workers 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    RESULTS.mkdir(exist_ok=True)
    try:
        data = str(datasets.parse_name(args.data))
    except ValueError as error:
        parser.error(str(error))
    log = Log(results_path(data), data, device)
    proxy_recipe = dataclasses.replace(
        DEFAULTS, epochs=args.epochs, resolution=args.resolution, warmup_fraction=args.warmup
    )
    reference = dataclasses.replace(
        DEFAULTS,
        epochs=args.long_epochs,
        resolution=args.long_resolution,
        warmup_fraction=REFERENCE_WARMUP,
    )
    archs = sampled(args.archs, parse_budget(args.budget))
    if args.workers > 1:
        tasks = [(a, reference, 0) for a in archs]
        tasks += [(a, proxy_recipe, seed) for seed in (0, 1) for a in archs]
        tasks += [(a, reference, 1) for a in archs] if args.long_seeds else []
        log.fill(tasks, args.workers)
    print(f"data {args.data}, {args.archs} architectures at {args.budget}")
    print(f"proxy: {proxy_recipe}\nreference: {reference}")
    print(
        "| # | blocks | GMACs | params | proxy | proxy seed 1 | reference | reference seed 1 "
        "| proxy s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    proxy, again, long, long_again = [], [], [], []
    seconds: dict[str, list[float]] = {"proxy": [], "reference": []}
    for i, arch in enumerate(archs):
        short, repeat = log.get(arch, proxy_recipe, 0), log.get(arch, proxy_recipe, 1)
        full = log.get(arch, reference, 0)
        proxy.append(short["accuracy"])
        again.append(repeat["accuracy"])
        long.append(full["accuracy"])
        seconds["proxy"] += [short["seconds"], repeat["seconds"]]
        seconds["reference"].append(full["seconds"])
        other = "-"
        if args.long_seeds:
            second = log.get(arch, reference, 1)
            long_again.append(second["accuracy"])
            seconds["reference"].append(second["seconds"])
            other = f"{long_again[-1]:.3f}"
        cost = estimate(arch)
        print(
            f"| {i} | {arch.block_mix} | {cost.macs / 1e9:.2f} | {cost.params / 1e6:.1f}M "
            f"| {short['accuracy']:.3f} | {repeat['accuracy']:.3f} | {full['accuracy']:.3f} "
            f"| {other} | {short['seconds']:.0f} |",
            flush=True,
        )
    _report(proxy, again, long, long_again, seconds)


if __name__ == "__main__":
    main()
