"""Which search strategy found the more accurate architecture: each run's S trained with several
seeds under the default proxy.

    /usr/bin/time python run_search.py --budget 4GFLOPs --strategy oneshot --out runs/oneshot
    /usr/bin/time python run_search.py --budget 4GFLOPs --trials 20 --out runs/trials-20
    python benchmarks/strategies.py runs/oneshot=28.2 runs/trials-20=24.5 --seeds 4 --workers 2

Each argument is a finished run folder, optionally with its wall time in minutes (as measured by
the command above; kept in the row). Its S (``best_arch.json``) is proxy-trained with the run's
proxy for seeds 0 to ``--seeds - 1`` (``benchmarks/fidelity.py``'s results file and keys: a
rerun trains only what is missing); the mean, the seeds and their standard deviation are printed
and appended to ``benchmarks/results/strategies.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fidelity import Log, results_path  # noqa: E402
from common import datasets  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from space.cost import estimate  # noqa: E402
from space.genotype import ArchSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "strategies.jsonl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN_FOLDER[=WALL_MINUTES]")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="trainings at a time")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = []
    for text in args.runs:
        folder, _, minutes = text.partition("=")
        path = Path(folder)
        if not (path / "best_arch.json").exists():
            parser.error(f"{folder} holds no finished run (no best_arch.json)")
        config = SearchConfig.from_json((path / "config.json").read_text())
        arch = ArchSpec.from_json((path / "best_arch.json").read_text())
        runs.append((folder, float(minutes) if minutes else None, config, arch))
    names = {str(datasets.parse_name(config.data)) for _, _, config, _ in runs}
    proxies = {config.proxy for _, _, config, _ in runs}
    if len(names) != 1 or len(proxies) != 1:
        parser.error("the runs must share their data and proxy to be compared")
    (name,), (proxy,) = names, proxies
    log = Log(results_path(name), name)
    seeds = range(args.seeds)
    log.fill([(arch, proxy, seed) for _, _, _, arch in runs for seed in seeds], args.workers)
    with RESULTS.open("a") as handle:
        for folder, minutes, config, arch in runs:
            accuracies = [log.get(arch, proxy, seed)["accuracy"] for seed in seeds]
            row = {
                "run": folder,
                "strategy": config.strategy,
                "trials": config.trials,
                "subnets": config.subnets if config.strategy == "oneshot" else None,
                "wall_minutes": minutes,
                "data": name,
                "proxy": str(proxy),
                "blocks": arch.block_mix,
                "gmacs": round(estimate(arch).macs / 1e9, 3),
                "seeds": accuracies,
                "mean": statistics.fmean(accuracies),
                "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
                "arch": arch.to_json(),
            }
            handle.write(json.dumps(row) + "\n")
            spread = "" if row["sd"] is None else f" (sd {row['sd']:.3f})"
            print(
                f"{folder} ({config.strategy}, {minutes or '?'} min): S {arch.block_mix} at "
                f"{row['gmacs']} GMACs, mean {row['mean']:.3f}{spread} over seeds "
                + ", ".join(f"{a:.3f}" for a in accuracies)
            )


if __name__ == "__main__":
    main()
