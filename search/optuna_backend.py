"""The Optuna backend: trials one after another in this process, on the run folder's study.

Each trial is asked from the study, defined, trained and told (``search.trial``); hopeless
trials stop early (``search.pruning.DominancePruner``) and are PRUNED. When the last
``max_repeated_failures`` trials of this run failed for the same reason the search stops with
``storage.RepeatedFailure``. The sampler is seeded
with ``config.seed`` plus the number of trials already in the study: a fresh run repeats
exactly, and a resumed one does not draw its first trials again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from search import data as datasets
from search import storage, trial
from search.config import SearchConfig
from search.pruning import DominancePruner, Finished
from search.records import OnTrial
from space.sampling import check_budget

__all__ = ["OptunaBackend"]


def _pruner_report(
    study: optuna.Study, pruner: DominancePruner | None, macs: int, epochs: int
) -> trial.Report:
    """The per-epoch hook of one trial: the dominance pruner against the finished trials."""
    finished = [
        Finished(t.user_attrs["macs"], tuple(t.user_attrs["epoch_accuracies"]))
        for t in storage.completed(study)
    ]

    def report(epoch: int, accuracy: float) -> None:
        if pruner is not None:
            pruner.check(epoch, accuracy, macs, epochs, finished)

    return report


def _run_one(
    study: optuna.Study,
    config: SearchConfig,
    data: datasets.ImageData,
    pruner: DominancePruner | None,
) -> None:
    asked = study.ask()
    try:
        arch = trial.define(asked, config)
        report = _pruner_report(study, pruner, asked.user_attrs["macs"], config.proxy.epochs)
        outcome = trial.train(asked, arch, study, config, data, report)
    except Exception as error:  # a trial that cannot even be defined is recorded, not fatal
        outcome = trial.Outcome(
            optuna.trial.TrialState.FAIL, reason=f"{type(error).__name__}: {error}"
        )
        asked.set_user_attr("fail_reason", outcome.reason)
    study.tell(asked, outcome.values, state=outcome.state)


@dataclasses.dataclass(frozen=True)
class OptunaBackend:
    """Runs (or continues) the search in ``config.out`` until ``config.trials`` slots are
    used; ``on_trial(finished, best_accuracy)`` is called before the first trial and after
    each one."""

    name: str = "optuna"

    def run(self, config: SearchConfig, on_trial: OnTrial | None = None) -> None:
        data = datasets.load(config.data)
        check_budget(config.budget_macs, config.resolution)
        with storage.folder_lock(Path(config.out)):
            journal = storage.journal(config.out)
            seed = config.seed + storage.trial_count(config.out)
            study = storage.open_study(journal, trial.sampler(config, seed))
            first = len(study.trials)  # trials of this run (redone ones too) number from here
            storage.recover_interrupted(study, journal)
            pruner = DominancePruner() if config.prune else None
            while True:
                used, best = storage.progress(study)
                if on_trial is not None:
                    on_trial(used, best)
                if used >= config.trials:
                    break
                _run_one(study, config, data, pruner)
                storage.check_failures(study, first, config.max_repeated_failures)
