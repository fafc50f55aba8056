"""The run folder's study: the one store of a search's trials, whichever backend runs them.

- Storage: Optuna's journal file ``study.journal`` in the run folder (append-only, safe against
  a killed process and shared by processes, Ray workers included; ``optuna-dashboard
  <out>/study.journal`` opens it). Or, for a search shared by several machines, a storage
  they all reach (``--storage``): an RDB URL (``sqlite:///``, ``postgresql://``; Optuna's
  ``RDBStorage`` with heartbeats) or a journal file on shared disk; the run folder then names
  it in ``storage.txt`` and every function here that takes a run folder follows it. The study
  holds two objectives, proxy accuracy (up) and MACs (down), and each trial's user attributes
  (``ATTRS``) say what it trained and how it went.
- Resume: ``recover_interrupted`` fails the trials a dead process left RUNNING (reason
  ``INTERRUPTED``) and queues their parameters again (``redo``), so the next trial redoes the
  same architecture. On the run folder's own journal every RUNNING trial is dead (the folder
  is locked); on a shared storage only a trial whose process is gone from this machine, or
  (RDB) whose heartbeat stopped for ``GRACE_SECONDS``. A trial whose Ray worker or node died
  is redone the same way (reason ``LOST``). Interrupted trials do not use a slot
  (``slots_used``).
- ``records`` turns the stored trials into ``TrialRecord`` rows, the same for every backend.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import threading
import warnings
from collections.abc import Iterator
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
    "dead_trials",
    "finished",
    "heartbeat",
    "hidden",
    "interrupted",
    "load_study",
    "note_storage",
    "open_study",
    "open_url",
    "progress",
    "records",
    "recover_interrupted",
    "redo",
    "repeated_failure",
    "shared_url",
    "slots_used",
    "study_storage",
    "to_record",
    "trial_count",
    "trial_id",
    "trial_table",
    "worker_name",
]

STUDY_NAME = "search"
STORAGE_NOTE = "storage.txt"  # names the shared storage of a run folder whose study is elsewhere
HEARTBEAT_SECONDS = 10  # a trial's heartbeat on an RDB storage, and how long silence means dead
GRACE_SECONDS = 30
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
    "worker",
)
log = logging.getLogger(__name__)


def note_storage(out: str | Path, url: str | None) -> None:
    """Record in run folder ``out`` that its study lives in ``url`` (None: its own journal)."""
    if url is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / STORAGE_NOTE).write_text(url + "\n")


def shared_url(out: str | Path) -> str | None:
    """The shared storage run folder ``out`` names, or None for its own journal."""
    note = Path(out) / STORAGE_NOTE
    return note.read_text().strip() if note.exists() else None


def study_storage(out: str | Path) -> optuna.storages.BaseStorage:
    """The study storage of a run folder: its journal, or the shared storage it names."""
    url = shared_url(out)
    return open_url(url) if url else _journal(str(Path(out) / "study.journal"))


@functools.lru_cache(maxsize=8)
def open_url(url: str) -> optuna.storages.BaseStorage:
    """The storage at ``url`` (once per process): an RDB URL with heartbeats, else a journal
    file. ``ValueError`` naming the storage (its password hidden) when it cannot be opened:
    no server, no such database, a driver missing."""
    if "://" not in url:
        return _journal(url)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
            )
    except ImportError:
        postgres = url.startswith("postgresql")
        raise ValueError(
            f"the storage {hidden(url)} needs its database driver"
            + (": pip install 'psycopg[binary]' (or the [cluster] extra)" if postgres else "")
        ) from None
    except Exception as error:  # SQLAlchemy's errors for a server that is not there
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot open the study storage {hidden(url)}: {said}") from None


def _journal(path: str) -> JournalStorage:
    return JournalStorage(JournalFileBackend(path))


def hidden(url: str) -> str:
    """``url`` with its password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_study(
    storage: optuna.storages.BaseStorage,
    sampler: optuna.samplers.BaseSampler,
    objectives: tuple[str, ...] = ("accuracy", "macs"),
) -> optuna.Study:
    """The run folder's study in ``storage`` (``study_storage(out)``), created on first use with
    its objectives (``SearchConfig.objectives``) named and directed (``DIRECTIONS``)."""
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
    if shared_url(out) is None and not (Path(out) / "study.journal").exists():
        raise ValueError(f"{out} holds no search (no study.journal)")
    return optuna.load_study(study_name=STUDY_NAME, storage=study_storage(out))


def trial_count(out: str | Path) -> int:
    """How many trials the run folder's study holds (0 without one)."""
    if shared_url(out) is None and not (Path(out) / "study.journal").exists():
        return 0
    summaries = optuna.get_all_study_summaries(study_storage(out), include_best_trial=False)
    return sum(s.n_trials for s in summaries if s.study_name == STUDY_NAME)


def trial_id(storage: optuna.storages.BaseStorage, number: int) -> int:
    """The storage id of trial ``number`` of the run folder's study."""
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def worker_name() -> str:
    """This process, as a trial's ``worker`` attribute names it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(trial: FrozenTrial) -> bool:
    """Whether the process that ran ``trial`` is known to have ended: it ran on this machine
    and no process has its id now."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, shared: bool
) -> list[FrozenTrial]:
    """The RUNNING trials whose process is dead: all of them on a run folder's own journal
    (its lock keeps other runs out); on a ``shared`` storage those whose process is gone from
    this machine or, with heartbeats (RDB), silent for ``GRACE_SECONDS``."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not shared:
        return running
    stale: set[int] = set()
    if isinstance(storage, optuna.storages.RDBStorage):
        study_id = storage.get_study_id_from_name(STUDY_NAME)
        stale = set(storage._get_stale_trial_ids(study_id))  # Optuna's heartbeat check
    return [t for t in running if trial_id(storage, t.number) in stale or _gone(t)]


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, number: int) -> Iterator[None]:
    """While the block runs, record trial ``number``'s heartbeat every ``HEARTBEAT_SECONDS``
    on an RDB storage (``dead_trials`` reads them); elsewhere nothing."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    ident, stop = trial_id(storage, number), threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(ident)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat of trial {number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def recover_interrupted(
    study: optuna.Study, storage: optuna.storages.BaseStorage, shared: bool = False
) -> None:
    """Fail the trials a dead process left RUNNING (``dead_trials``) and queue their
    parameters again."""
    for trial in dead_trials(study, storage, shared):
        redo(study, storage, trial, INTERRUPTED)


def redo(
    study: optuna.Study, storage: optuna.storages.BaseStorage, trial: FrozenTrial, reason: str
) -> None:
    """Fail the RUNNING ``trial`` with ``reason`` (which starts "interrupted:") and queue its
    parameters again, so that the next trial asked trains the same architecture (once, when
    two workers find the same dead trial)."""
    ident = trial_id(storage, trial.number)
    try:
        storage.set_trial_user_attr(ident, "fail_reason", reason)
        storage.set_trial_state_values(ident, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another worker got there first
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
