"""Latency predicted from the per-machine unit table against latency measured, for every preset
and sampled genotypes within a MAC budget.

    python benchmarks/latency_prediction.py                       # CPU eager, batch 1, 100 sampled
    python benchmarks/latency_prediction.py --device onnxruntime  # ONNX Runtime's CPU provider
    python benchmarks/latency_prediction.py --batch 32 --archs 0  # the presets only, batch 32
    python benchmarks/latency_prediction.py --retest 40           # measure 40 networks again
    python benchmarks/latency_prediction.py --whole --batch 32 --archs 0  # measured only
    python benchmarks/latency_prediction.py --presets-table       # the README's preset table
    python benchmarks/latency_prediction.py --check-run runs/limited  # a limited search's trials

Each network is predicted from the unit table (``latency.predict.predict_ms``, measuring the units
the table lacks) and then measured whole (``latency.predict.measure``). Rows are appended to
``benchmarks/results/latency-<device>-b<batch>.jsonl`` as they end, keyed by name, genotype and the
machine's fingerprint, so a rerun only measures what is missing; the unit table itself lives in
``benchmarks/results/latency-tables/`` (one file per fingerprint). The report gives the share of
networks predicted within +-5% and +-10% of their measured latency, the RMSE, the same after a
linear correction (measured = a x predicted + b, fitted leaving each network out), the
predictor's time against measuring, and the table's build time. ``--retest N`` measures the
first N networks of the results file whole once more, later in time (rows in
``latency-<device>-b<batch>-retest.jsonl``), and reports how often two measurements of the same
network agree within +-5% and +-10%: the ceiling for any predictor on this machine. ``--whole``
measures the networks whole without predicting them (no unit table: the preset table's large
batches, where the units would take longer than the networks); ``--presets-table`` prints every
preset's measured latency from the results files of both targets at batches 1 and 32.
``--check-run FOLDER`` measures whole every trial of a search run with
``--latency-budget`` and reports each against the limit, with the measurement's stated noise
(interquartile range), in ``latency-check-<run>.jsonl``. Run it on an idle machine: any other
work on the cores moves every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from latency.predict import measure, predict_ms  # noqa: E402
from latency.table import LatencyTable  # noqa: E402
from latency.target import TARGETS, Target  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.storage import trial_table  # noqa: E402
from space import presets  # noqa: E402
from space.cost import estimate, parse_budget  # noqa: E402
from space.genotype import ArchSpec  # noqa: E402
from space.sampling import sample  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TABLES = RESULTS / "latency-tables"


def networks(count: int, budget: int) -> list[tuple[str, ArchSpec]]:
    """Every preset, then ``count`` genotypes drawn by Optuna's RandomSampler (seed 0) within
    ``budget`` MACs."""
    found = [(name, presets.get(name)) for name in presets.names()]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return found + [(f"sampled {i}", sample(study.ask(), budget)) for i in range(count)]


def results_path(target: Target) -> Path:
    return RESULTS / f"latency-{target.device}-b{target.batch}.jsonl"


def _row(name: str, arch: ArchSpec, table: LatencyTable, target: Target, whole: bool) -> dict:
    """Predict (measuring missing units), predict again from the full table (the predictor's
    own time), then measure the whole network; with ``whole``, only measure it."""
    units_before, seconds_before = table.measured, table.measure_seconds
    predicted = predict_seconds = None
    if not whole:
        predicted = predict_ms(arch, table)
        started = time.perf_counter()
        predict_ms(arch, table)
        predict_seconds = time.perf_counter() - started
    started = time.perf_counter()
    measured = measure(arch, target)
    return {
        "name": name,
        "arch": arch.to_json(),
        "fingerprint": table.fingerprint.key,
        "macs": estimate(arch).macs,
        "predicted_ms": predicted,
        "measured_ms": measured.median_ms,
        "q1_ms": measured.q1_ms,
        "q3_ms": measured.q3_ms,
        "repeats": measured.repeats,
        "predict_seconds": predict_seconds,
        "measure_seconds": time.perf_counter() - started,
        "units_measured": table.measured - units_before,
        "unit_seconds": table.measure_seconds - seconds_before,
    }


def run(target: Target, count: int, budget: int, whole: bool = False) -> list[dict]:
    """Every network's row, measuring what the results file lacks (a row measured whole only
    is kept, and predicted, when the run is not ``whole``)."""
    table = LatencyTable(target, TABLES)
    path = results_path(target)
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[(row["name"], row["arch"], row["fingerprint"])] = row
    rows = []
    for name, arch in networks(count, budget):
        key = (name, arch.to_json(), table.fingerprint.key)
        if key not in done or (done[key]["predicted_ms"] is None and not whole):
            try:
                done[key] = _row(name, arch, table, target, whole)
            except Exception as error:  # an export the target's toolchain refuses
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                print(f"{name}: not measured ({type(error).__name__}: {first[:200]})")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(done[key]) + "\n")
            row = done[key]
            predicted = "-" if whole else f"{row['predicted_ms']:.1f} ms"
            print(
                f"{name}: predicted {predicted}, measured {row['measured_ms']:.1f} ms "
                f"({row['units_measured']} units measured)",
                flush=True,
            )
        rows.append(done[key])
    print(f"fingerprint: {table.fingerprint.describe()}")
    return rows


def _corrected(rows: list[dict]) -> list[float]:
    """Each row's prediction after measured = a x predicted + b, fitted on the other rows."""
    out = []
    for i in range(len(rows)):
        rest = rows[:i] + rows[i + 1 :]
        xs, ys = [r["predicted_ms"] for r in rest], [r["measured_ms"] for r in rest]
        fit = statistics.linear_regression(xs, ys)
        out.append(fit.slope * rows[i]["predicted_ms"] + fit.intercept)
    return out


def summary(rows: list[dict], predicted: list[float]) -> dict[str, float]:
    errors = [p / r["measured_ms"] - 1 for p, r in zip(predicted, rows, strict=True)]
    squared = [(p - r["measured_ms"]) ** 2 for p, r in zip(predicted, rows, strict=True)]
    return {
        "within 5%": sum(abs(e) <= 0.05 for e in errors) / len(errors),
        "within 10%": sum(abs(e) <= 0.10 for e in errors) / len(errors),
        "rmse ms": math.sqrt(statistics.fmean(squared)),
        "rmse %": 100 * math.sqrt(statistics.fmean(e * e for e in errors)),
        "worst %": 100 * max(errors, key=abs),
    }


def report(rows: list[dict]) -> None:
    rows = [row for row in rows if row["predicted_ms"] is not None]
    print("| network | GMACs | predicted ms | measured ms (IQR) | error |")
    print("|---|---|---|---|---|")
    for row in rows:
        error = row["predicted_ms"] / row["measured_ms"] - 1
        print(
            f"| {row['name']} | {row['macs'] / 1e9:.2f} | {row['predicted_ms']:.1f} | "
            f"{row['measured_ms']:.1f} ({row['q1_ms']:.1f}-{row['q3_ms']:.1f}) | {error:+.1%} |"
        )
    if len(rows) < 3:
        return
    for label, predicted in (
        ("summed units", [r["predicted_ms"] for r in rows]),
        ("with the linear correction (leave-one-out)", _corrected(rows)),
    ):
        figures = ", ".join(f"{k} {v:.3g}" for k, v in summary(rows, predicted).items())
        print(f"{label}: {figures}")
    speedup = statistics.median(r["measure_seconds"] / r["predict_seconds"] for r in rows)
    print(
        f"predicting from the built table is {speedup:,.0f}x faster than measuring (median); "
        f"table: {sum(r['units_measured'] for r in rows)} units measured in "
        f"{sum(r['unit_seconds'] for r in rows):.0f} s"
    )


def retest(target: Target, count: int) -> None:
    """Measure the first ``count`` networks of the results file again and compare."""
    fingerprint = target.fingerprint().key
    first = [
        row
        for row in map(json.loads, results_path(target).read_text().splitlines())
        if row["fingerprint"] == fingerprint
    ][:count]
    path = results_path(target).with_name(results_path(target).stem + "-retest.jsonl")
    done = {}
    if path.exists():
        for row in map(json.loads, path.read_text().splitlines()):
            done[(row["name"], row["arch"], row["fingerprint"])] = row
    pairs = []
    for row in first:
        key = (row["name"], row["arch"], row["fingerprint"])
        if key not in done:
            timing = measure(ArchSpec.from_json(row["arch"]), target)
            done[key] = {
                "name": row["name"],
                "arch": row["arch"],
                "fingerprint": fingerprint,
                "measured_ms": timing.median_ms,
                "q1_ms": timing.q1_ms,
                "q3_ms": timing.q3_ms,
            }
            with path.open("a") as handle:
                handle.write(json.dumps(done[key]) + "\n")
            print(f"{row['name']}: {row['measured_ms']:.1f} ms then {timing.median_ms:.1f} ms")
        pairs.append((row["measured_ms"], done[key]["measured_ms"]))
    changes = [again / before - 1 for before, again in pairs]
    print(
        f"the same {len(pairs)} networks measured twice: within 5% "
        f"{sum(abs(c) <= 0.05 for c in changes) / len(changes):.3g}, within 10% "
        f"{sum(abs(c) <= 0.10 for c in changes) / len(changes):.3g}, rms change "
        f"{100 * math.sqrt(statistics.fmean(c * c for c in changes)):.3g}%, worst "
        f"{100 * max(changes, key=abs):+.3g}%"
    )


def presets_table() -> None:
    """Every preset's measured latency on this machine, PyTorch and ONNX Runtime, batch 1 and 32
    (the latest row of each; '-' where not measured)."""
    columns = [(device, batch) for device in ("cpu", "onnxruntime") for batch in (1, 32)]
    found: dict[tuple[str, str, int], dict] = {}
    for device, batch in columns:
        target = Target(device, batch)
        fingerprint = target.fingerprint()
        path = results_path(target)
        rows = map(json.loads, path.read_text().splitlines()) if path.exists() else []
        for row in rows:
            if row["fingerprint"] == fingerprint.key and row["name"] in presets.names():
                found[(row["name"], device, batch)] = row
        print(f"measured on {fingerprint.describe()}")
    heads = " | ".join(f"{'PyTorch' if d == 'cpu' else 'ONNX Runtime'} b{b}" for d, b in columns)
    print(f"| preset | input | GMACs | {heads} |")
    print("|---|---|---|---|---|---|---|")
    for name in presets.names():
        arch = presets.get(name)
        cells = []
        for device, batch in columns:
            row = found.get((name, device, batch))
            cells.append("-" if row is None else f"{row['measured_ms']:,.0f} ms")
        print(
            f"| `{name}` | {arch.resolution} | {estimate(arch).macs / 1e9:.2f} | "
            + " | ".join(cells)
            + " |"
        )


def check_run(folder: Path) -> None:
    """Every trial of the latency-limited run in ``folder`` (failed ones were trained too)
    measured whole, against
    the limit: how far over it the measurement lands, and whether that exceeds its noise."""
    config = SearchConfig.from_json((folder / "config.json").read_text())
    limit = config.latency_limit_ms
    if limit is None:
        raise SystemExit(f"{folder} was not searched with a latency budget (--latency-budget)")
    target = config.latency_target()
    trials = trial_table(folder)
    trained = trials[(trials.state != "RUNNING") & (trials.arch != "")]  # failed ones trained too
    path = RESULTS / f"latency-check-{folder.name}.jsonl"
    done = {}
    if path.exists():
        done = {row["number"]: row for row in map(json.loads, path.read_text().splitlines())}
    print(f"limit {limit:g} ms on {target.fingerprint().describe()}")
    print(
        "| trial | blocks | predicted ms | measured ms (IQR) | over the limit | beyond its noise |"
    )
    print("|---|---|---|---|---|---|")
    for trial in trained.itertuples():
        if trial.number not in done:
            timing = measure(ArchSpec.from_json(trial.arch), target)
            done[trial.number] = {
                "number": trial.number,
                "arch": trial.arch,
                "predicted_ms": trial.latency_ms,
                "measured_ms": timing.median_ms,
                "q1_ms": timing.q1_ms,
                "q3_ms": timing.q3_ms,
                "limit_ms": limit,
            }
            with path.open("a") as handle:
                handle.write(json.dumps(done[trial.number]) + "\n")
        row = done[trial.number]
        over = row["measured_ms"] / limit - 1
        beyond = row["measured_ms"] - (row["q3_ms"] - row["q1_ms"]) > limit
        print(
            f"| {row['number']} | {trial.blocks} | {row['predicted_ms']:.1f} | "
            f"{row['measured_ms']:.1f} ({row['q1_ms']:.1f}-{row['q3_ms']:.1f}) | {over:+.1%} | "
            f"{'yes' if beyond else 'no'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=TARGETS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="0: all of PyTorch's threads")
    parser.add_argument("--archs", type=int, default=100, help="sampled genotypes")
    parser.add_argument("--budget", default="4GFLOPs")
    parser.add_argument(
        "--retest", type=int, default=0, help="measure the first N networks again and compare"
    )
    parser.add_argument("--whole", action="store_true", help="measure only, predict nothing")
    parser.add_argument("--check-run", type=Path, help="a latency-limited run folder to check")
    parser.add_argument(
        "--presets-table", action="store_true", help="print the presets' measured latencies"
    )
    args = parser.parse_args()
    target = Target(args.device, args.batch, args.threads)
    if args.check_run is not None:
        check_run(args.check_run)
    elif args.presets_table:
        presets_table()
    elif args.retest:
        retest(target, args.retest)
    else:
        report(run(target, args.archs, parse_budget(args.budget), args.whole))


if __name__ == "__main__":
    main()
