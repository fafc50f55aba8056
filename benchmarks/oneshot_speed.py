"""What the one-shot supernet costs on this machine: building it, one training epoch, scoring one
subnet (issue 31's budget: >= 1,000 subnets scored within the default run's 15 minutes).

    python benchmarks/oneshot_speed.py                       # default data, 4GFLOPs, 20 subnets
    python benchmarks/oneshot_speed.py --steps 20 --subnets 50

Builds the supernet of the default space for the proxy input, trains it for ``--steps`` steps of
the default recipe (the sandwich of four subnets) on the default dataset, then scores
``--subnets`` subnets of the one-shot space (``oneshot.space``) as the search does
(``oneshot.search.Scorer``: the first score, one calibration batch and 250 validation images;
the second, every calibration batch and every validation image). Also counts how many fitted
draws within the budget (the trials strategy's) the supernet could not run, and the share of
unfitted draws in the budget's window (the one-shot space).
Appends one row to ``benchmarks/results/oneshot-speed.jsonl``. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import datasets  # noqa: E402
from oneshot import Supernet  # noqa: E402
from oneshot.search import Scorer  # noqa: E402
from oneshot.space import RandomTrial, random_within, share_within  # noqa: E402
from oneshot.train import SupernetRecipe, sandwich  # noqa: E402
from search.images import ImageSource, prepare  # noqa: E402
from space.cost import estimate, parse_budget  # noqa: E402
from space.sampling import sample  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "oneshot-speed.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="default")
    parser.add_argument("--budget", default="4GFLOPs")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--subnets", type=int, default=20)
    args = parser.parse_args()
    recipe, budget = SupernetRecipe(), parse_budget(args.budget)
    settings = recipe.proxy
    data = datasets.load(args.data)
    row: dict = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    row.update(data=args.data, budget=args.budget, recipe=str(recipe))

    started = time.perf_counter()
    torch.manual_seed(0)
    supernet = Supernet(resolution=settings.resolution, num_classes=data.num_classes)
    row["build_s"] = time.perf_counter() - started
    row["params"] = sum(p.numel() for p in supernet.parameters())

    rng = random.Random(0)
    uncovered = sum(
        not supernet.covers(sample(RandomTrial(rng), budget, blocks=supernet.blocks))
        for _ in range(100)
    )
    row["fitted_draws_not_covered_of_100"] = uncovered
    row["unfitted_draws_in_window"] = share_within(budget, blocks=supernet.blocks)

    device = torch.device("cpu")
    train = ImageSource(data.train, device)
    row["steps_per_epoch"] = train.steps(settings.batch_size)
    optimizer = torch.optim.AdamW(supernet.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(0)
    batches = train.batches(settings.batch_size, train=True, generator=generator, epoch=0)
    supernet.train()
    started = time.perf_counter()
    for _, (images, labels) in zip(range(args.steps), batches, strict=False):
        x = prepare(images, settings.resolution, augment=True, flips=False, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        for arch in sandwich(supernet, budget, recipe.subnets, rng):
            F.cross_entropy(supernet(x, arch), labels).div(recipe.subnets).backward()
        optimizer.step()
    row["train_s_per_step"] = (time.perf_counter() - started) / args.steps
    row["train_s_per_epoch"] = row["train_s_per_step"] * row["steps_per_epoch"]

    scorer = Scorer(supernet, data, recipe, seed=0)
    archs = [random_within(rng, budget, blocks=supernet.blocks) for _ in range(args.subnets)]
    started = time.perf_counter()
    accuracies = [scorer.first(arch) for arch in archs]
    row["first_score_s_per_subnet"] = (time.perf_counter() - started) / args.subnets
    started = time.perf_counter()
    for arch in archs[:5]:
        scorer.full(arch)
    row["second_score_s_per_subnet"] = (time.perf_counter() - started) / 5
    row["scored_macs_mean"] = sum(estimate(a).macs for a in archs) / len(archs)
    row["accuracy_range"] = [min(accuracies), max(accuracies)]
    row["subnets_in_15_min_scoring_only"] = int(900 / row["first_score_s_per_subnet"])
    print(json.dumps(row, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
