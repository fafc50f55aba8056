"""The Optuna backend: trials on the run folder's study, one after another in this process, or
``parallel`` at a time in as many worker processes sharing the study's journal (the
folder lock keeps other runs out, not the run's own workers; with several workers the order of
trials, and so the architectures drawn, depends on timing). With a shared ``--storage``,
runs on several machines work on one study: each claims slots until ``trials`` are used, redoes
the trials of processes found dead (``storage.dead_trials``) and, when no slot is left, waits
(on a database, whose heartbeats show a dead machine) for the other machines' running trials to
end or to be found dead. The slot count is checked
per machine before asking, so two machines may start the last slot's trial both (as with
Optuna's ``MaxTrialsCallback``).

Each trial is asked from the study, defined, trained and told (``search.trial``); hopeless
trials stop early (``search.pruning.DominancePruner``) and are PRUNED. When the last
``max_repeated_failures`` trials of this run failed for the same reason the search stops with
``storage.RepeatedFailure``."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
import warnings
from pathlib import Path

import filelock
import optuna

from common import datasets
from common.device import resolve_device
from search import storage, trial, workers
from search.config import SearchConfig
from search.pruning import DominancePruner
from search.records import OnTrial

__all__ = ["OptunaBackend"]

# A storage with heartbeats warns at every ask outside Study.optimize; this backend asks and
# records the heartbeats itself (``storage.heartbeat``).
warnings.filterwarnings("ignore", "Heartbeat of storage is supposed", UserWarning)


def _pruner_report(
    study: optuna.Study, pruner: DominancePruner | None, macs: int, epochs: int
) -> trial.Report:
    """The per-epoch hook of one trial: the dominance pruner against the finished trials."""
    finished = storage.finished(study)

    def report(epoch: int, accuracy: float) -> None:
        if pruner is not None:
            pruner.check(epoch, accuracy, macs, epochs, finished)

    return report


def _run_one(
    study: optuna.Study,
    asked: optuna.Trial,
    config: SearchConfig,
    data: datasets.ImageData,
    pruner: DominancePruner | None,
) -> None:
    with storage.heartbeat(storage.study_storage(config.out), asked.number):
        _train_one(study, asked, config, data, pruner)


def _train_one(
    study: optuna.Study,
    asked: optuna.Trial,
    config: SearchConfig,
    data: datasets.ImageData,
    pruner: DominancePruner | None,
) -> None:
    try:
        arch = trial.define(asked, config)
        report = _pruner_report(study, pruner, asked.user_attrs["macs"], config.proxy.epochs)
        outcome = trial.evaluate(asked, arch, study, config, data, report)
    except Exception as error:  # a trial that cannot even be defined is recorded, not fatal
        outcome = trial.Outcome(
            optuna.trial.TrialState.FAIL, reason=f"{type(error).__name__}: {error}"
        )
        asked.set_user_attr("fail_reason", outcome.reason)
    study.tell(asked, outcome.values, state=outcome.state)


def _running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _claim(study: optuna.Study, config: SearchConfig) -> bool:
    """Whether a slot is left for one more trial: finished ones and those running count."""
    return storage.slots_used(study) + _running(study) < config.trials


def _work(
    config: SearchConfig,
    first: int,
    seed: int,
    processes: int = 1,
    on_trial: OnTrial | None = None,
) -> None:
    """One of ``processes`` processes sharing the study: ask, train and tell trials until the
    slots are taken or the same failure repeats (asking is serialised by ``.ask.lock``);
    ``on_trial`` reports progress before each trial."""
    if processes > 1:
        workers.die_with_parent()
        workers.share_cores(processes, resolve_device(config.device))
    data = datasets.load(config.data)
    where = storage.study_storage(config.out)
    study = storage.open_study(where, trial.sampler(config, seed), config.objectives)
    pruner = DominancePruner() if config.prune else None
    ask_lock = filelock.FileLock(Path(config.out) / ".ask.lock")
    shared = config.storage is not None
    beats = isinstance(where, optuna.storages.RDBStorage)  # other machines' deaths show
    while True:
        if on_trial is not None:
            on_trial(*storage.progress(study))
        with ask_lock:
            if shared:  # another machine's dead trials are redone here
                storage.recover_interrupted(study, where, shared=True)
            if not _claim(study, config):
                if beats and _running(study):  # wait for the other machines' last trials
                    time.sleep(storage.HEARTBEAT_SECONDS)
                    continue
                return
            asked = study.ask()
            asked.set_user_attr("worker", storage.worker_name())
        _run_one(study, asked, config, data, pruner)
        if storage.repeated_failure(study, first, config.max_repeated_failures):
            return


@dataclasses.dataclass(frozen=True)
class OptunaBackend:
    """Runs (or continues) the search in ``config.out`` until ``config.trials`` slots are
    used, ``search_workers(config)`` trials at a time (worker processes on the one study);
    ``on_trial(finished, best_accuracy)`` is called before the first trial and as they end."""

    name: str = "optuna"

    def run_trials(self, config: SearchConfig, first: int, on_trial: OnTrial | None) -> None:
        # A fresh run repeats exactly; a resumed one does not draw its first trials again.
        seed = config.seed + first
        if workers.search_workers(config) == 1:
            _work(config, first, seed, on_trial=on_trial)
        else:
            _parallel(config, first, seed, on_trial)

    def step_pool(self, config: SearchConfig) -> None:
        """The trainings after the search run in this machine's worker processes."""
        return None


def _parallel(config: SearchConfig, first: int, seed: int, on_trial: OnTrial | None) -> None:
    """``config.parallel`` worker processes (samplers seeded apart); this one reports progress
    until they end."""
    context = multiprocessing.get_context("spawn")
    n = workers.search_workers(config)
    processes = [
        context.Process(target=_work, args=(config, first, seed + 1000 * i, n)) for i in range(n)
    ]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            if on_trial is not None:
                on_trial(*storage.progress(storage.load_study(config.out)))
            time.sleep(1.0)
    finally:
        for process in processes:
            process.join(timeout=0 if process.is_alive() else None)
            if process.is_alive():
                process.terminate()
