"""Search a hybrid backbone within a MAC budget, scale it into a Ti/XS/S/B family, and report.

    python run_search.py --budget 4GFLOPs                  # the embedded dataset, this machine
    python run_search.py --budget 600M --trials 30 --out runs/small
    python run_search.py --data cifar10:~/data --backend ray --gpus-per-trial 0.25 --trials 200
    python run_search.py --out runs/small --report-only    # rebuild the reports, no training

Rerunning a command with the same --out resumes the search where it stopped. Errors in the
options print one line and exit with status 2, before anything in the run folder is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from search.config import SearchConfig, add_options, from_options


class UsageError(Exception):
    """A problem with the command line or the run folder: one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """One option per setting of ``SearchConfig``, and the run's actions."""
    parser = Parser(prog="run_search.py", description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument(
        "--train-family", action="store_true", help="also proxy-train the Ti/XS/S/B variants"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the reports of --out without training"
    )
    return parser


def check_folder(config: SearchConfig) -> None:
    """The run folder can be written and, if it holds a search, holds this one."""
    out = Path(config.out)
    probe_at = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not probe_at.is_dir():
        raise UsageError(
            f"the output folder {out} cannot be made: {probe_at} is a file; choose another --out"
        )
    try:
        with tempfile.TemporaryFile(dir=probe_at):
            pass
    except OSError as error:
        raise UsageError(
            f"cannot write to the output folder {out} ({error.strerror}); choose another --out"
        ) from None
    saved = out / "config.json"
    if saved.exists():
        changed = config.changed_from(SearchConfig.from_json(saved.read_text()))
        if changed:
            raise UsageError(
                f"{out} holds a search made with {', '.join(changed)}; rerun with those options "
                f"to resume it, or choose another --out"
            )


def train_family(config: SearchConfig, family: dict) -> dict[str, float]:
    """Proxy-train every variant; the proxy resolution scales with the variant's input size."""
    from search import data as datasets
    from search import proxy

    data = datasets.load(config.data)
    accuracies = {}
    base = family["S"].resolution
    for variant, arch in family.items():
        side = max(32, 8 * round(config.proxy.resolution * arch.resolution / base / 8))
        settings = dataclasses.replace(config.proxy, resolution=side)
        result = proxy.train(arch, data, settings, seed=config.seed, device=config.device)
        outcome = f"failed: {result.reason}" if result.failed else f"{result.accuracy:.1%}"
        print(f"  {variant}: {outcome} ({side}px proxy)")
        if not result.failed:
            accuracies[variant] = result.accuracy
    return accuracies


def previous_family_accuracies(out: Path, family: dict) -> dict[str, float] | None:
    """Accuracies of an earlier --train-family, kept when the family is unchanged."""
    import pandas as pd

    from space.genotype import ArchSpec

    table = out / "family.csv"
    if not table.exists():
        return None
    rows = pd.read_csv(table)
    kept = {}
    for row in rows.itertuples():
        saved = out / "family" / f"{row.variant}.json"
        if (
            pd.notna(row.accuracy)
            and saved.exists()
            and ArchSpec.from_json(saved.read_text()) == family[row.variant]
        ):
            kept[row.variant] = float(row.accuracy)
    return kept or None


def prepare(args: argparse.Namespace) -> SearchConfig:
    """The run's configuration, every option checked before the run folder is touched."""
    from search import data as datasets
    from search.proxy import resolve_device
    from space.sampling import check_budget

    try:
        if args.report_only:
            saved = Path(args.out) / "config.json"
            if not saved.exists():
                raise UsageError(
                    f"{args.out} holds no run (no config.json); run a search there first"
                )
            # The folder may have been moved since the search: its reports go where it is now.
            return dataclasses.replace(SearchConfig.from_json(saved.read_text()), out=args.out)
        config = from_options(args)
        check_budget(config.budget_macs, config.resolution)
        if config.backend == "optuna" or config.gpus_per_trial == 0:
            resolve_device(config.device)  # on a Ray cluster the GPUs may be elsewhere
        datasets.load(config.data)
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_folder(config)
    return config


def run(args: argparse.Namespace) -> None:
    import optuna
    from tqdm.auto import tqdm

    import search
    from reports.report import best_family, write_reports
    from reports.tables import best_within_budget

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    config = prepare(args)
    if args.report_only:
        try:
            trials = search.trial_table(config)
        except ValueError as error:
            raise UsageError(str(error)) from None
    else:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "config.json").write_text(config.to_json() + "\n")
        print(
            f"searching {config.trials} trials within {config.budget} at {config.resolution}px on "
            f"{config.data} ({config.backend}); run folder {config.out}"
        )
        bar = tqdm(total=config.trials, unit="trial", dynamic_ncols=True)

        def on_trial(finished: int, best: float | None) -> None:
            bar.update(finished - bar.n)
            bar.set_postfix_str("best accuracy " + ("-" if best is None else f"{best:.1%}"))

        trials = search.run(config, on_trial)
        bar.close()
    family = best_family(trials, config.budget_macs)
    accuracies = None
    if family is not None:
        accuracies = previous_family_accuracies(Path(config.out), family)
        if args.train_family and not args.report_only:
            print("proxy-training the family:")
            accuracies = train_family(config, family)
    write_reports(config.out, config, trials, accuracies)
    best = best_within_budget(trials, config.budget_macs)
    if best is None:
        print("no trial completed within the budget")
    else:
        print(
            f"best within budget: trial {int(best.number)} ({best.blocks}), "
            f"{best.accuracy:.1%} proxy top-1, {best.macs / 1e9:.3f} GMACs, "
            f"{best.params / 1e6:.2f}M params"
        )
    print(f"report: {Path(config.out) / 'report.md'}")


def main(argv: list[str] | None = None) -> int:
    from search.storage import FolderBusy, RepeatedFailure

    try:
        run(build_parser().parse_args(argv))
    except (UsageError, FolderBusy) as error:
        print(f"run_search.py: error: {error}", file=sys.stderr)
        return 2
    except RepeatedFailure as error:
        print(f"run_search.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
