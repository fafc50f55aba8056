"""The run folder's study: the one store of a search's trials, whichever backend runs them.

- Storage: Optuna's journal file ``study.journal`` in the run folder (append-only, safe against
  a killed process and shared by processes, Ray workers included; ``optuna-dashboard
  <out>/study.journal`` opens it). Its study holds two objectives, proxy accuracy (up) and MACs
  (down), and each trial's user attributes (``ATTRS``) say what it trained and how it went.
- Resume: ``recover_interrupted`` fails the trials a dead process left RUNNING (reason
  ``INTERRUPTED``) and queues their parameters again (``redo``), so the next trial redoes the
  same architecture; a trial whose Ray worker or node died is redone the same way (reason
  ``LOST``). Interrupted trials do not use a slot (``slots_used``).
- ``records`` turns the stored trials into ``TrialRecord`` rows, the same for every backend.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from search.pruning import Finished
from search.records import TrialRecord, best_accuracy, to_frame
from space.genotype import ArchSpec

__all__ = [
    "ATTRS",
    "DIRECTIONS",
    "INTERRUPTED",
    "LATENCY_MACHINE",
    "LOST",
    "STUDY_NAME",
    "RepeatedFailure",
    "check_failures",
    "completed",
    "finished",
    "interrupted",
    "journal",
    "load_study",
    "open_study",
    "progress",
    "records",
    "recover_interrupted",
    "redo",
    "repeated_failure",
    "slots_used",
    "to_record",
    "trial_count",
    "trial_id",
    "trial_table",
]

STUDY_NAME = "search"
DIRECTIONS = {"accuracy": "maximize", "macs": "minimize", "latency_ms": "minimize"}
LATENCY_MACHINE = "latency_machine"  # the study's note of where latency was measured
INTERRUPTED = "interrupted: the process stopped while this trial was running"
LOST = "interrupted: the Ray worker running this trial was lost"  # + what Ray said, in brackets
# The user attributes a trial stores, written by the shared trial code (``search.trial``).
ATTRS = (
    "backend",
    "arch",
    "blocks",
    "macs",
    "params",
    "latency_ms",
    "epoch_accuracies",
    "train_seconds",
    "fail_reason",
    "duplicate_of",
    "redo_of",
)
log = logging.getLogger(__name__)


def journal(out: str | Path) -> JournalStorage:
    """The study storage of a run folder."""
    return JournalStorage(JournalFileBackend(str(Path(out) / "study.journal")))


def open_study(
    storage: JournalStorage,
    sampler: optuna.samplers.BaseSampler,
    objectives: tuple[str, ...] = ("accuracy", "macs"),
) -> optuna.Study:
    """The run folder's study in ``storage`` (``journal(out)``), created on first use with its
    objectives (``SearchConfig.objectives``) named and directed (``DIRECTIONS``)."""
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        sampler=sampler,
        directions=[DIRECTIONS[name] for name in objectives],
        load_if_exists=True,
    )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))
    return study


def load_study(out: str | Path) -> optuna.Study:
    """The run folder's existing study; ``ValueError`` if there is none."""
    if not (Path(out) / "study.journal").exists():
        raise ValueError(f"{out} holds no search (no study.journal)")
    return optuna.load_study(study_name=STUDY_NAME, storage=journal(out))


def trial_count(out: str | Path) -> int:
    """How many trials the run folder's study holds (0 without one)."""
    if not (Path(out) / "study.journal").exists():
        return 0
    summaries = optuna.get_all_study_summaries(journal(out), include_best_trial=False)
    return sum(s.n_trials for s in summaries if s.study_name == STUDY_NAME)


def trial_id(storage: JournalStorage, number: int) -> int:
    """The storage id of trial ``number`` of the run folder's study."""
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def recover_interrupted(study: optuna.Study, storage: JournalStorage) -> None:
    """Fail the trials a dead process left RUNNING and queue their parameters again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        redo(study, storage, trial, INTERRUPTED)


def redo(study: optuna.Study, storage: JournalStorage, trial: FrozenTrial, reason: str) -> None:
    """Fail the RUNNING ``trial`` with ``reason`` (which starts "interrupted:") and queue its
    parameters again, so that the next trial asked trains the same architecture."""
    ident = trial_id(storage, trial.number)
    storage.set_trial_user_attr(ident, "fail_reason", reason)
    storage.set_trial_state_values(ident, TrialState.FAIL)
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={"redo_of": trial.number})
    log.warning("trial %d failed (%s) and will be redone", trial.number, reason)


def interrupted(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was interrupted and queued again (``INTERRUPTED``, ``LOST``)."""
    return str(trial.user_attrs.get("fail_reason", "")).startswith("interrupted:")


def slots_used(study: optuna.Study) -> int:
    """Finished trials that count towards ``--trials`` (interrupted ones do not)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and not interrupted(t) for t in study.get_trials(deepcopy=False))


class RepeatedFailure(RuntimeError):
    """The search stopped because its last trials all failed for the same reason."""


def repeated_failure(study: optuna.Study, since: int, times: int) -> str | None:
    """The reason shared by the last ``times`` trials to finish, numbered ``since`` or later
    (interrupted ones aside), if they all failed for it (numbers in reasons may differ); None
    otherwise."""
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number >= since
        and t.state.is_finished()
        and t.datetime_complete is not None
        and not interrupted(t)
    ]
    last = sorted(done, key=lambda t: t.datetime_complete)[-times:]
    if len(last) < times or any(t.state != TrialState.FAIL for t in last):
        return None
    reasons = {re.sub(r"[\d.]+", "#", t.user_attrs.get("fail_reason", "")) for t in last}
    return last[-1].user_attrs.get("fail_reason", "unknown") if len(reasons) == 1 else None


def check_failures(study: optuna.Study, since: int, times: int) -> None:
    """Raise ``RepeatedFailure`` naming the reason when ``repeated_failure`` finds one."""
    reason = repeated_failure(study, since, times)
    if reason is not None:
        raise RepeatedFailure(
            f"the search stopped: the last {times} trials all failed with: {reason}. "
            "Finished trials are kept; fix the cause and rerun the same command to resume"
        )


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def finished(study: optuna.Study) -> list[Finished]:
    """The completed trials as the dominance pruner compares against them (both backends)."""
    return [
        Finished(t.user_attrs["macs"], tuple(t.user_attrs["epoch_accuracies"]))
        for t in completed(study)
    ]


def progress(study: optuna.Study) -> tuple[int, float | None]:
    """(slots used, best accuracy so far) for a progress display."""
    return slots_used(study), best_accuracy([t.values[0] for t in completed(study)])


def to_record(trial: FrozenTrial) -> TrialRecord:
    """A stored trial as a trial record (``ATTRS`` hold everything but state and times)."""
    attrs = trial.user_attrs
    epochs = tuple(attrs.get("epoch_accuracies", ()))
    if trial.state == TrialState.COMPLETE:
        accuracy = trial.values[0]
    elif trial.state == TrialState.PRUNED and epochs:
        accuracy = epochs[-1]
    else:
        accuracy = None
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        backend=attrs.get("backend", "optuna"),
        arch=ArchSpec.from_json(attrs["arch"]) if attrs.get("arch") else None,
        blocks=attrs.get("blocks", ""),
        params=attrs.get("params"),
        macs=attrs.get("macs"),
        latency_ms=attrs.get("latency_ms"),
        accuracy=accuracy,
        epoch_accuracies=epochs,
        train_seconds=attrs.get("train_seconds"),
        start=trial.datetime_start,
        end=trial.datetime_complete,
        fail_reason=attrs.get("fail_reason", ""),
        duplicate_of=attrs.get("duplicate_of"),
    )


def records(out: str | Path) -> list[TrialRecord]:
    """Every trial of the run folder's study, as trial records (trials queued for the next run
    are not trials yet)."""
    trials = load_study(out).get_trials(deepcopy=False)
    return [to_record(t) for t in trials if t.state != TrialState.WAITING]


def trial_table(out: str | Path) -> pd.DataFrame:
    """The trial table (``search.records.COLUMNS``) of the run folder ``out`` as it stands,
    without running anything; ``ValueError`` if the folder holds no search."""
    return to_frame(records(out))
