"""Search a hybrid backbone within a MAC budget, scale it, and hold its family against CMT's.

The searched Ti/XS/S/B family and the published CMT family are trained under the same proxy,
and the report says which is more accurate at each size.

    python run_search.py --budget 4GFLOPs                  # the embedded dataset, this machine
    python run_search.py --budget 600M --trials 30 --out runs/small
    python run_search.py --data cifar10:~/data --backend ray --gpus-per-trial 0.25 --trials 200
    python run_search.py --scaling cmt --baselines none    # the search and the family only
    python run_search.py --strategy oneshot --out runs/oneshot  # a supernet's best subnets
    python run_search.py --out runs/small --report-only    # rebuild the reports, no training

The run is a pipeline (search, scaling, family, baselines, noise; ``search.pipeline``).
Rerunning a command with the same --out resumes where it stopped. Errors in the options print
one line and exit with status 2, before anything in the run folder is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from common.cli import Parser, UsageError, check_writable, exit_status
from search.config import SearchConfig, add_options, from_options


def build_parser() -> argparse.ArgumentParser:
    """One option per setting of ``SearchConfig``, and the run's actions."""
    parser = Parser(prog="run_search.py", description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the reports of --out without training"
    )
    return parser


def check_folder(config: SearchConfig) -> None:
    """The run folder can be written and, if it holds a search, holds this one."""
    out = Path(config.out)
    check_writable(out)
    saved = out / "config.json"
    if saved.exists():
        changed = config.changed_from(SearchConfig.from_json(saved.read_text()))
        if changed:
            raise UsageError(
                f"{out} holds a search made with {', '.join(changed)}; rerun with those options "
                f"to resume it, or choose another --out"
            )


def prepare(args: argparse.Namespace) -> SearchConfig:
    """The run's configuration, every option checked before the run folder is touched."""
    from common.device import resolve_device
    from search import lifecycle
    from search.backends import check_versions
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
        check_versions(config.backend)
        check_budget(config.budget_macs, config.resolution, config.block_types)
        if config.backend == "optuna" or config.gpus_per_trial == 0:
            resolve_device(config.device)  # on a Ray cluster the GPUs may be elsewhere
        lifecycle.check(config)  # the data, and a shared storage (reached, the same search)
        if config.backend == "ray" and config.ray_address is not None:
            from search.ray_backend import connect

            connect(config.ray_address)
        if config.latency_target() is not None:
            from search.latency_limit import check_limit

            check_limit(config)
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_folder(config)
    return config


class Progress:
    """What the run shows while it works: a bar for the search's trials ("search"), then one
    for the trainings after it ("scaling, family, baselines, noise"), each with its count, the
    time that remains and what trains now; a one-shot search's supernet epochs and scored
    subnets come first."""

    def __init__(self, trials: int) -> None:
        from tqdm.auto import tqdm

        self.tqdm, self.trials, self.bar, self.phase = tqdm, trials, None, None

    def _open(self, phase: str, total: int, unit: str) -> None:
        self.close()
        self.phase = phase
        self.bar = self.tqdm(total=total, desc=phase, unit=unit, dynamic_ncols=True)

    def on_oneshot(self, phase: str, done: int, total: int) -> None:
        """A one-shot search's supernet epochs, then its subnets scored."""
        if self.phase != phase:
            self._open(phase, total, "epoch" if phase == "supernet" else "subnet")
        self.bar.update(done - self.bar.n)

    def on_trial(self, finished: int, best: float | None) -> None:
        if self.phase != "search":
            self._open("search", self.trials, "trial")
        self.bar.update(finished - self.bar.n)
        self.bar.set_postfix_str("best accuracy " + ("-" if best is None else f"{best:.1%}"))

    def on_step(self, done: int, total: int, running: list[str]) -> None:
        if self.phase != "after":
            self._open("after", total, "training")
            self.bar.set_description("scaling, family, baselines, noise")
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str("; ".join(running) or "done")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


def search_and_report(args: argparse.Namespace) -> None:
    import optuna

    from reports.report import write_reports
    from search import pipeline

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = prepare(args)
    progress = Progress(config.trials)
    if not args.report_only:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "config.json").write_text(config.to_json() + "\n")
        baselines = config.baselines if config.baselines != "none" else "no baselines"
        if config.strategy == "oneshot":
            print(
                f"one-shot: a supernet trained {config.supernet_epochs} epochs, {config.subnets} "
                f"subnets scored with its weights, the best {config.trials} trained as trials"
            )
        print(
            f"searching {config.trials} trials within {config.budget} at {config.resolution}px "
            f"on {config.data} ({config.backend}), then scaling ({config.scaling}), the family, "
            f"{baselines} and the noise; run folder {config.out}"
        )
    try:
        results = pipeline.run(
            config,
            on_trial=progress.on_trial,
            on_step=progress.on_step,
            on_oneshot=progress.on_oneshot,
            report_only=args.report_only,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    finally:
        progress.close()
    write_reports(config.out, config, results)
    best = results.best
    if best is None:
        print("no trial completed within the budget")
    else:
        print(
            f"S, the best within budget: trial {int(best.number)} ({best.blocks}), "
            f"{best.accuracy:.1%} proxy top-1, {best.macs / 1e9:.3f} GMACs, "
            f"{best.params / 1e6:.2f}M params; coefficients "
            + ", ".join(f"{c:g}" for c in results.coefficients)
        )
    print(f"report: {Path(config.out) / 'report.md'}")


def main(argv: list[str] | None = None) -> int:
    from common.lock import FolderBusy
    from search.storage import RepeatedFailure

    return exit_status(
        "run_search.py",
        lambda: search_and_report(build_parser().parse_args(argv)),
        usage=(FolderBusy,),
        failures=(RepeatedFailure,),
    )


if __name__ == "__main__":
    sys.exit(main())
