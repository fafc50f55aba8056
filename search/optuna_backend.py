"""The Optuna backend: a two-objective study (proxy accuracy up, MACs down) stored in the run
folder, so that rerunning the same command continues it.

- Storage: Optuna's journal file ``study.journal`` (append-only; safe against a killed process;
  ``optuna-dashboard <out>/study.journal`` opens it).
- Sampler: NSGA-II (default; population max(4, min(50, trials / 4)) so that small searches
  still evolve) or multivariate TPE, seeded; the budget is hard in sampling and also recorded
  as the constraint value ``macs_over_budget`` (MACs - budget <= 0), which both samplers read.
- Resume: finished trials are kept; a trial left RUNNING by a dead process is marked FAIL
  ("interrupted") and its parameters are queued, so the next trial redoes the same architecture.
  A lock file stops two processes from sharing one folder.
- A trial that raises, or whose proxy failed (NaN, out of memory), is FAIL with the reason; the
  search goes on. FAIL trials use their slot; interrupted ones do not.
- An architecture already trained in this study is not trained again: its result is reused.
- Hopeless trials stop early (``search.pruning.DominancePruner``) and are PRUNED.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from search import data as datasets
from search import proxy
from search.config import SearchConfig
from search.pruning import DominancePruner, Finished, TrialStopped
from search.records import OnTrial, TrialRecord, best_accuracy
from space.cost import estimate
from space.sampling import check_budget, sample

__all__ = [
    "STUDY_NAME",
    "FolderBusy",
    "folder_lock",
    "journal",
    "load_study",
    "open_study",
    "records",
    "run",
]

STUDY_NAME = "search"
INTERRUPTED = "interrupted: the process stopped while this trial was running"
log = logging.getLogger(__name__)


class FolderBusy(RuntimeError):
    """Another process is running a search in the same run folder."""


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` for the duration; another process gets a clear error."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(
                f"another search is running in {out}; wait for it or use another --out"
            ) from None
        yield


def _sampler(config: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    population = max(4, min(50, config.trials // 4))
    return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)


def journal(out: str | Path) -> JournalStorage:
    """The study storage of a run folder."""
    return JournalStorage(JournalFileBackend(str(Path(out) / "study.journal")))


def open_study(config: SearchConfig, storage: JournalStorage) -> optuna.Study:
    """The run folder's study, created on first use.

    The sampler is seeded with ``config.seed`` plus the number of trials already in the study:
    a fresh run repeats exactly, and a resumed one does not draw its first trials again.
    """
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    existing = sum(s.n_trials for s in summaries if s.study_name == STUDY_NAME)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        sampler=_sampler(config, config.seed + existing),
        directions=["maximize", "minimize"],
        load_if_exists=True,
    )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["accuracy", "macs"])
    return study


def load_study(config: SearchConfig) -> optuna.Study:
    """The run folder's existing study, read-only use; ``ValueError`` if there is none."""
    if not (Path(config.out) / "study.journal").exists():
        raise ValueError(f"{config.out} holds no Optuna study (study.journal)")
    return optuna.load_study(study_name=STUDY_NAME, storage=journal(config.out))


def _recover_interrupted(study: optuna.Study, storage: JournalStorage) -> None:
    """Fail the trials a dead process left RUNNING and queue their parameters again."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "fail_reason", INTERRUPTED)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"redo_of": trial.number})
        log.warning("trial %d was interrupted; it is failed and will be redone", trial.number)


def _slots_used(study: optuna.Study) -> int:
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(
        t.state in done and t.user_attrs.get("fail_reason") != INTERRUPTED
        for t in study.get_trials(deepcopy=False)
    )


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def _run_trial(
    study: optuna.Study,
    config: SearchConfig,
    data: datasets.ImageData,
    pruner: DominancePruner | None,
) -> None:
    trial = study.ask()
    trial.set_user_attr("backend", "optuna")
    trial.set_user_attr("start", datetime.now().isoformat())
    started = time.perf_counter()
    accuracies: list[float] = []
    try:
        arch = sample(trial, config.budget_macs, config.resolution)
        cost = estimate(arch)
        trial.set_constraint("macs_over_budget", cost.macs - config.budget_macs)
        for key, value in (
            ("arch", arch.to_json()),
            ("blocks", arch.block_mix),
            ("macs", cost.macs),
            ("params", cost.params),
        ):
            trial.set_user_attr(key, value)
        twin = next(
            (t for t in _finished(study) if t.user_attrs.get("arch") == arch.to_json()), None
        )
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            trial.set_user_attr("epoch_accuracies", twin.user_attrs.get("epoch_accuracies", []))
            trial.set_user_attr("train_seconds", 0.0)
            study.tell(trial, twin.values)
            return
        finished = [
            Finished(t.user_attrs["macs"], tuple(t.user_attrs["epoch_accuracies"]))
            for t in _finished(study)
        ]

        def report(epoch: int, accuracy: float) -> None:
            accuracies.append(accuracy)
            trial.set_user_attr("epoch_accuracies", accuracies)
            if pruner is not None:
                pruner.check(epoch, accuracy, cost.macs, config.epochs, finished)

        result = proxy.train(
            arch,
            data,
            epochs=config.epochs,
            resolution=config.proxy_resolution,
            seed=config.seed,
            device=config.device,
            report=report,
        )
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("epoch_accuracies", list(result.epoch_accuracies))
        if result.failed:
            trial.set_user_attr("fail_reason", result.reason)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [result.accuracy, float(cost.macs)])
    except TrialStopped as stop:
        trial.set_user_attr("train_seconds", time.perf_counter() - started)
        trial.set_user_attr("fail_reason", str(stop))
        study.tell(trial, state=TrialState.PRUNED)
    except Exception as error:  # any failure of one trial is recorded, not fatal
        log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        trial.set_user_attr("train_seconds", time.perf_counter() - started)
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)


def records(study: optuna.Study) -> list[TrialRecord]:
    """The study's trials as trial records."""
    out = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        epochs = tuple(attrs.get("epoch_accuracies", ()))
        if trial.state == TrialState.COMPLETE:
            accuracy = trial.values[0]
        elif trial.state == TrialState.PRUNED and epochs:
            accuracy = epochs[-1]
        else:
            accuracy = None
        out.append(
            TrialRecord(
                number=trial.number,
                state=trial.state.name,
                backend=attrs.get("backend", "optuna"),
                arch=attrs.get("arch", ""),
                blocks=attrs.get("blocks", ""),
                params=attrs.get("params"),
                macs=attrs.get("macs"),
                accuracy=accuracy,
                epoch_accuracies=epochs,
                train_seconds=attrs.get("train_seconds"),
                start=trial.datetime_start,
                end=trial.datetime_complete,
                fail_reason=attrs.get("fail_reason", ""),
                duplicate_of=attrs.get("duplicate_of"),
            )
        )
    return out


def run(config: SearchConfig, on_trial: OnTrial | None = None) -> list[TrialRecord]:
    """Run (or continue) the search in ``config.out`` until ``config.trials`` slots are used.

    ``on_trial(finished, best_accuracy)`` is called before the first trial and after each one.
    """
    data = datasets.load(config.data)
    check_budget(config.budget_macs, config.resolution)
    with folder_lock(Path(config.out)):
        storage = journal(config.out)
        study = open_study(config, storage)
        _recover_interrupted(study, storage)
        pruner = DominancePruner() if config.prune else None
        while True:
            used = _slots_used(study)
            if on_trial is not None:
                on_trial(used, best_accuracy([t.values[0] for t in _finished(study)]))
            if used >= config.trials:
                break
            _run_trial(study, config, data, pruner)
        return records(study)
