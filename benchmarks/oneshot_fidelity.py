"""One-shot fidelity: does a trained supernet rank architectures as training each on its own does?

    python run_search.py --budget 4GFLOPs --strategy oneshot --out runs/oneshot   # its supernet
    python benchmarks/oneshot_fidelity.py --run runs/oneshot --archs 16 --workers 2

Takes the trained supernet of a one-shot run folder (``supernet.pt``, with the run's
``config.json``) and ``--archs`` architectures of its one-shot space (``oneshot.space``: drawn
without fitting, 75-100% of the run's budget; ``random.Random(--seed)``). Each is scored by the
supernet as the search scores it (``oneshot.search.Scorer``: the first score on 250 validation
images after one calibration batch, the second on every validation image after every batch)
and proxy-trained on its own with the run's proxy, seeds 0 and 1 (the proxy's own noise).
Prints the Kendall taus (with p-values): supernet against standalone, and standalone seed 0
against seed 1, the ceiling any predictor of the proxy can reach on these architectures.

The standalone trainings are appended to ``benchmarks/results/fidelity-<data>.jsonl`` as they
end (``benchmarks/fidelity.py``'s file and keys: a rerun trains only what is missing); each run
of this command appends its scores and taus to ``benchmarks/results/oneshot-fidelity.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import optuna
import torch
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fidelity import Log, results_path  # noqa: E402
from common import datasets  # noqa: E402
from oneshot import search as oneshot_search  # noqa: E402
from oneshot.space import random_within  # noqa: E402
from oneshot.supernet import Supernet  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from space.cost import estimate  # noqa: E402
from space.genotype import ArchSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "oneshot-fidelity.jsonl"


def kendall(a: list[float], b: list[float]) -> dict[str, float]:
    result = kendalltau(a, b)
    return {"tau": round(float(result.statistic), 3), "p": round(float(result.pvalue), 4)}


def draws_and_standalone(
    config: SearchConfig, count: int, seed: int, workers: int
) -> tuple[list[ArchSpec], list[list[float]]]:
    """``count`` draws of ``config``'s one-shot space (``random.Random(seed)``) and their
    standalone proxy accuracies with seeds 0 and 1, read from the fidelity benchmark's results
    file or trained ``workers`` at a time and added to it."""
    rng = random.Random(seed)
    archs = [
        random_within(rng, config.budget_macs, config.resolution, config.block_types)
        for _ in range(count)
    ]
    name = str(datasets.parse_name(config.data))
    log = Log(results_path(name), name)
    log.fill([(arch, config.proxy, s) for s in (0, 1) for arch in archs], workers)
    return archs, [[log.get(arch, config.proxy, s)["accuracy"] for arch in archs] for s in (0, 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a one-shot run folder with its supernet")
    parser.add_argument("--archs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="of the architectures drawn")
    parser.add_argument("--workers", type=int, default=1, help="standalone trainings at a time")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / oneshot_search.CHECKPOINT).exists() or not (run / "config.json").exists():
        parser.error(f"{run} holds no trained supernet ({oneshot_search.CHECKPOINT})")
    if args.archs < 3:
        parser.error("--archs must be at least 3 for a ranking to compare")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = SearchConfig.from_json((run / "config.json").read_text())
    data = datasets.load(config.data)
    recipe = oneshot_search.recipe(config)
    name = str(datasets.parse_name(config.data))
    archs, alone = draws_and_standalone(config, args.archs, args.seed, args.workers)
    mean = [(a + b) / 2 for a, b in zip(*alone, strict=True)]

    supernet = Supernet(
        resolution=recipe.proxy.resolution,
        num_classes=data.num_classes,
        blocks=config.block_types,
    )
    saved = torch.load(run / oneshot_search.CHECKPOINT, map_location="cpu", weights_only=False)
    supernet.load_state_dict(saved["supernet"])
    scorer = oneshot_search.Scorer(supernet, data, recipe, config.seed)
    started = time.perf_counter()
    first = [scorer.first(arch) for arch in archs]
    first_seconds = (time.perf_counter() - started) / len(archs)
    full = [scorer.full(arch) for arch in archs]

    row = {
        "machine": platform.processor() or platform.machine(),
        "run": str(run),
        "data": name,
        "budget": config.budget,
        "blocks": list(config.block_types),
        "supernet_epochs": config.supernet_epochs,
        "supernet_losses": saved["losses"],
        "proxy": str(config.proxy),
        "archs": len(archs),
        "seed": args.seed,
        "gmacs": [round(estimate(arch).macs / 1e9, 3) for arch in archs],
        "first_score": first,
        "second_score": full,
        "standalone": alone,
        "first_score_seconds": round(first_seconds, 3),
        "tau_second_vs_standalone_mean": kendall(full, mean),
        "tau_first_vs_standalone_mean": kendall(first, mean),
        "tau_second_vs_standalone_seed0": kendall(full, alone[0]),
        "tau_standalone_seed0_vs_seed1": kendall(*alone),
    }
    for key, value in row.items():
        if key.startswith("tau"):
            print(f"{key}: {value['tau']:.3f} (p = {value['p']:.4f})")
    print(
        f"standalone accuracy {min(mean):.3f}-{max(mean):.3f}; supernet {min(full):.3f}-"
        f"{max(full):.3f}; first score {first_seconds:.2f} s a subnet"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
