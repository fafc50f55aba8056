"""Can the proxy see what the search changes? Per searched dimension, signal against seed noise.

    python benchmarks/sensitivity.py --workers 2                         # the default proxy
    python benchmarks/sensitivity.py --proxy-resolution 48 --workers 2   # stage maps 12/6/3/2
    python benchmarks/sensitivity.py --presets --workers 2               # every preset, 2 seeds
    python benchmarks/sensitivity.py --only cmt_s:"stage-3 block type" aewin_t:"head split"

Three base architectures near 4 GMACs: ``cmt_s`` (CMT-like), ``aewin_t`` (AEWin-like, the
CSWin-T layout) and ``dual_mix``, the sampled ``dual-cmt-cmt-dual`` that is architecture #2 of
``benchmarks/fidelity.py``. One dimension at a time changes over its choices (``VARIANTS``),
the rest of the base unchanged (the MACs column says what each choice costs at the target
resolution), and every variant is proxy-trained with ``--seeds`` seeds. Per dimension the
report gives each choice's mean accuracy, the spread of those means, the seed-to-seed standard
deviation (pooled over the dimension's choices) and their ratio, the signal-to-noise ratio:
a dimension whose spread is within about two standard deviations is one the proxy cannot rank.

The proxy is the default recipe with ``--proxy-resolution`` and ``--epochs`` for a 224 px
input, every model's input scaled by the run's rule (``SearchConfig.proxy_for``).
``--presets`` trains the published presets instead (two seeds): the trainability table.
Every training is appended to ``benchmarks/results/sensitivity-<data>.jsonl`` as it ends,
keyed by genotype, recipe and seed, so a rerun only trains what is missing. ``--workers N``
trains N at a time with one thread each (one thread's arithmetic: results do not depend on N).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import filelock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fidelity import results_path, sampled, train_one_thread  # noqa: E402

from search.config import SearchConfig  # noqa: E402
from search.trainings import training_key  # noqa: E402
from space import presets  # noqa: E402
from space.cost import estimate, parse_budget  # noqa: E402
from space.genotype import ArchSpec, StageSpec  # noqa: E402
from space.scaling import largest_phi, scale_by  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STAGE_OPTIONS = {  # a block type's options when it replaces stage 3 (width 256 in every base)
    "cmt": {"heads": 4, "mlp_ratio": 4.0, "options": {"kv_reduction": 2}},
    "aewin": {"heads": 4, "mlp_ratio": 4.0, "options": {"stripe": 7}},
    "cot": {"heads": 1, "mlp_ratio": 4.0, "options": {"kernel": 3}},
    "dual": {"heads": 4, "mlp_ratio": 4.0, "options": {"pool": 7, "mode": "dual"}},
    # every block attending, as the other types' stacks do; Halo with its smallest block and
    # halo (the proxy's stage-3 map is 2 px: blocks of 8 would attend over 62 padded positions)
    "bot": {"heads": 4, "mlp_ratio": 4.0, "options": {"layout": "attention"}},
    "halo": {
        "heads": 8,
        "mlp_ratio": 4.0,
        "options": {"layout": "attention", "block": 4, "halo": 1},
    },
    # heads of 32 channels as their presets; CoAtNet's stage 3 attends (C-C-T-T)
    "maxvit": {"heads": 8, "mlp_ratio": 4.0, "options": {"window": 7, "grid": 7}},
    "coatnet": {"heads": 8, "mlp_ratio": 4.0, "options": {"kind": "attention"}},
}
SPLITS = {
    "1/4,1/4,1/2": (0.25, 0.25, 0.5),
    "1/2,1/2,0": (0.5, 0.5, 0.0),
    "0,0,1": (0.0, 0.0, 1.0),
    "1/8,1/8,3/4": (0.125, 0.125, 0.75),
    "3/8,3/8,1/4": (0.375, 0.375, 0.25),
}


def bases() -> dict[str, ArchSpec]:
    return {
        "cmt_s": presets.get("cmt_s"),
        "aewin_t": presets.get("aewin_t"),
        "dual_mix": sampled(10, parse_budget("4GFLOPs"))[2],
    }


def _stages(arch: ArchSpec, change: Callable[[int, StageSpec], StageSpec]) -> ArchSpec:
    return dataclasses.replace(arch, stages=tuple(change(i, s) for i, s in enumerate(arch.stages)))


def stage3_block(arch: ArchSpec, block: str) -> ArchSpec:
    if arch.stages[2].block == block:
        return arch
    spec = {**STAGE_OPTIONS[block], "block": block, "depth": arch.stages[2].depth, "width": 256}
    return _stages(arch, lambda i, s: StageSpec(**spec) if i == 2 else s)


def every_stage(arch: ArchSpec, **changes: object) -> ArchSpec:
    """Change a field of every stage, or of its options (``options={...}``)."""

    def change(i: int, s: StageSpec) -> StageSpec:
        fields = {k: v for k, v in changes.items() if k != "options"}
        if "options" in changes:
            fields["options"] = dataclasses.replace(s.options, **changes["options"])
        return dataclasses.replace(s, **fields)

    return _stages(arch, change)


def stage_option(arch: ArchSpec, index: int, **options: object) -> ArchSpec:
    return _stages(
        arch,
        lambda i, s: (
            dataclasses.replace(s, options=dataclasses.replace(s.options, **options))
            if i == index
            else s
        ),
    )


def depth_for_width(arch: ArchSpec, depth: float) -> ArchSpec:
    """Depths x ``depth``, widths scaled so that the MACs stay those of ``arch`` (bisection)."""
    if depth == 1:
        return arch
    target = estimate(arch).macs

    def macs(log_width: float) -> int:
        return estimate(scale_by(arch, depth=depth, width=math.exp(log_width))).macs

    log_width = largest_phi(macs, target, math.log(0.25), math.log(4.0))
    return scale_by(arch, depth=depth, width=math.exp(log_width))


def variants() -> dict[str, dict[str, dict[str, ArchSpec]]]:
    """base -> dimension -> choice -> architecture (the base's own choice included)."""
    b = bases()
    blocks = ("cmt", "aewin", "cot", "dual", "bot", "halo", "maxvit", "coatnet")
    return {
        "cmt_s": {
            "stage-3 block type": {x: stage3_block(b["cmt_s"], x) for x in blocks},
            "k, stage 1": {str(k): stage_option(b["cmt_s"], 0, kv_reduction=k) for k in (4, 8)},
            "k, stage 2": {str(k): stage_option(b["cmt_s"], 1, kv_reduction=k) for k in (2, 4)},
            "MLP ratio": {f"{r:g}": every_stage(b["cmt_s"], mlp_ratio=r) for r in (2.0, 3.0, 4.0)},
            "depth for width": {
                f"depth x{d:g}": depth_for_width(b["cmt_s"], d) for d in (0.67, 1.0, 1.5)
            },
        },
        "aewin_t": {
            "stage-3 block type": {x: stage3_block(b["aewin_t"], x) for x in blocks},
            "head split": {
                name: every_stage(b["aewin_t"], options={"split": split})
                for name, split in SPLITS.items()
            },
            "stripe": {
                "1/2/7/7": b["aewin_t"],
                **{str(w): every_stage(b["aewin_t"], options={"stripe": w}) for w in (1, 2, 7)},
            },
            "MLP ratio": {
                f"{r:g}": every_stage(b["aewin_t"], mlp_ratio=r) for r in (2.0, 3.0, 4.0)
            },
        },
        "dual_mix": {
            "Dual token pool": {
                str(p): every_stage_of(b["dual_mix"], "dual", pool=p) for p in (7, 10, 14)
            },
            "Dual mode, stage 4": {
                m: stage_option(b["dual_mix"], 3, mode=m) for m in ("dual", "merge")
            },
        },
    }


def every_stage_of(arch: ArchSpec, block: str, **options: object) -> ArchSpec:
    return _stages(
        arch,
        lambda i, s: (
            dataclasses.replace(s, options=dataclasses.replace(s.options, **options))
            if s.block == block
            else s
        ),
    )


def _train_one(job: dict) -> dict:
    result = train_one_thread(job["data"], job["arch"], job["recipe"], job["seed"])
    row = {
        **job,
        "accuracy": result.accuracy,
        "epoch_accuracies": list(result.epoch_accuracies),
        "seconds": result.seconds,
        "failed": result.failed,
        "reason": result.reason,
    }
    with filelock.FileLock(str(job["log"]) + ".lock"), open(job["log"], "a") as handle:
        handle.write(json.dumps(row) + "\n")
    return row


def run_jobs(jobs: list[dict], done: dict[str, dict], workers: int) -> None:
    missing = [job for job in jobs if job["key"] not in done]
    print(f"{len(jobs) - len(missing)} of {len(jobs)} trainings already done", flush=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for row in pool.map(_train_one, missing):
            done[row["key"]] = row
            label = " / ".join(str(row[k]) for k in ("base", "dimension", "choice"))
            print(
                f"{label}, seed {row['seed']}: {row['accuracy']:.3f} in {row['seconds']:.0f} s",
                flush=True,
            )


def job(config: SearchConfig, arch: ArchSpec, seed: int, log: Path, **labels: str) -> dict:
    recipe = config.proxy_for(arch.resolution)
    return {
        "key": training_key(arch, recipe, config.data, seed),
        "arch": arch.to_json(),
        "recipe": dataclasses.asdict(recipe),
        "data": config.data,
        "seed": seed,
        "macs": estimate(arch).macs,
        "log": str(log),
        **labels,
    }


def summary(rows: list[dict]) -> list[str]:
    """The per-dimension table: mean by choice, spread, pooled seed sd, signal-to-noise."""
    by = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by[(row["base"], row["dimension"])][row["choice"]].append(row)
    lines = [
        "| base | dimension | choices: mean top-1 (GMACs) | spread | seed sd | signal/noise "
        "| best | retried at a lower lr | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (base, dimension), choices in by.items():
        means, sds, retried, failed = {}, [], 0, 0
        for choice, runs in choices.items():
            accs = [r["accuracy"] for r in runs]
            retried += sum(r["reason"].startswith("retrained") for r in runs)
            failed += sum(r["failed"] for r in runs)
            means[choice] = statistics.mean(accs)
            if len(accs) > 1:
                sds.append(statistics.variance(accs))
        sd = math.sqrt(statistics.mean(sds)) if sds else float("nan")
        spread = max(means.values()) - min(means.values())
        cells = ", ".join(
            f"{c} {100 * m:.1f} ({choices[c][0]['macs'] / 1e9:.2f})" for c, m in means.items()
        )
        best = max(means, key=means.get)
        lines.append(
            f"| {base} | {dimension} | {cells} | {100 * spread:.1f} | {100 * sd:.2f} "
            f"| {spread / sd:.1f} | {best} | {retried} | {failed} |"
        )
    return lines


def presets_summary(rows: list[dict]) -> list[str]:
    lines = ["| preset | proxy input | seed 0 | seed 1 | s per training |", "|---|---|---|---|---|"]
    by = defaultdict(dict)
    for row in rows:
        by[row["choice"]][row["seed"]] = row
    for name, seeds in by.items():
        cells = " | ".join(f"{100 * seeds[s]['accuracy']:.1f}%" for s in sorted(seeds))
        seconds = statistics.mean(r["seconds"] for r in seeds.values())
        lines.append(f"| {name} | {seeds[0]['recipe']['resolution']} | {cells} | {seconds:.0f} |")
    return lines


def _rows(only: list[str] | None, parser: argparse.ArgumentParser) -> set[tuple[str, str]] | None:
    """The (base, dimension) rows ``--only`` names; the parser's error for an unknown one."""
    if only is None:
        return None
    known = {(b, d) for b, dimensions in variants().items() for d in dimensions}
    wanted = {tuple(text.split(":", 1)) for text in only}
    unknown = [":".join(row) for row in wanted if row not in known]
    if unknown:
        names = ", ".join(sorted(f"{b}:{d}" for b, d in known))
        parser.error(f"unknown row {', '.join(unknown)}; known: {names}")
    return wanted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="default")
    parser.add_argument(
        "--proxy-resolution",
        type=int,
        default=SearchConfig().proxy.resolution,
        help="proxy input of a 224 px architecture (default: the default proxy's, %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=SearchConfig().proxy.epochs,
        help="proxy epochs (default: the default proxy's, %(default)s)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--presets", action="store_true", help="the presets, two seeds each")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="BASE:DIMENSION",
        help="train these rows only (e.g. cmt_s:'stage-3 block type'; default: every row)",
    )
    args = parser.parse_args(argv)
    rows_wanted = _rows(args.only, parser)
    base_recipe = SearchConfig().proxy
    config = SearchConfig(
        data=args.data,
        proxy=dataclasses.replace(
            base_recipe, resolution=args.proxy_resolution, epochs=args.epochs
        ),
    )
    RESULTS.mkdir(exist_ok=True)
    log = results_path(args.data, "sensitivity")
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    if args.presets:
        jobs = [
            job(config, presets.get(p), seed, log, base="presets", dimension="preset", choice=p)
            for seed in (0, 1)
            for p in presets.names()
        ]
    else:
        jobs = [
            job(config, arch, seed, log, base=base, dimension=dimension, choice=choice)
            for seed in range(args.seeds)
            for base, dimensions in variants().items()
            for dimension, choices in dimensions.items()
            if rows_wanted is None or (base, dimension) in rows_wanted
            for choice, arch in choices.items()
        ]
    unique = list({j["key"]: j for j in jobs}.values())
    run_jobs(unique, done, args.workers)
    rows = [{**done[j["key"]], **{k: j[k] for k in ("base", "dimension", "choice")}} for j in jobs]
    print(f"\nproxy: {config.proxy} on {config.data}\n")
    print("\n".join(presets_summary(rows) if args.presets else summary(rows)))


if __name__ == "__main__":
    main()
