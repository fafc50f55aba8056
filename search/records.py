"""One trial record for both search backends, the trial table built from them, and S, the best
trial within the budget, picked from the records (a typed record, its genotype an ``ArchSpec``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

import pandas as pd

from space.genotype import ArchSpec

__all__ = [
    "COLUMNS",
    "STATES",
    "OnTrial",
    "TrialRecord",
    "best_accuracy",
    "best_within_budget",
    "to_frame",
]

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """What happened to one trial.

    ``accuracy`` is the proxy's last validation top-1 (for a pruned trial, at the epoch it was
    stopped); ``epoch_accuracies`` the validation top-1 after every epoch run; ``macs`` and
    ``params`` are the architecture's at its target resolution (fvcore's count); ``latency_ms``
    its predicted latency on the run's latency target (None without one); ``arch`` is
    None for a trial that failed before its architecture was defined. ``duplicate_of`` names
    the trial whose result was reused for the same architecture.
    """

    number: int
    state: str
    backend: str
    arch: ArchSpec | None = None
    blocks: str = ""
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    accuracy: float | None = None
    epoch_accuracies: tuple[float, ...] = ()
    train_seconds: float | None = None
    start: datetime | None = None
    end: datetime | None = None
    fail_reason: str = ""
    duplicate_of: int | None = None


COLUMNS = [field.name for field in dataclasses.fields(TrialRecord)]

OnTrial = Callable[[int, "float | None"], None]
"""Progress callback of the backends: ``on_trial(finished_trials, best_accuracy_so_far)``."""


def best_accuracy(accuracies: list[float | None]) -> float | None:
    known = [a for a in accuracies if a is not None]
    return max(known) if known else None


def best_within_budget(records: list[TrialRecord], budget_macs: int) -> TrialRecord | None:
    """S: the most accurate completed trial within the budget (fewer MACs, then earlier, on
    ties); None when no completed trial fits."""
    scored = [
        r
        for r in records
        if r.state == "COMPLETE"
        and r.accuracy is not None
        and r.macs is not None
        and r.macs <= budget_macs
    ]
    return min(scored, key=lambda r: (-r.accuracy, r.macs, r.number), default=None)


def to_frame(records: list[TrialRecord]) -> pd.DataFrame:
    """The trial table, one row per trial in trial-number order: the genotype as its JSON text,
    per-epoch accuracies as a list."""
    rows = []
    for record in sorted(records, key=lambda r: r.number):
        row = {field: getattr(record, field) for field in COLUMNS}
        row["arch"] = "" if record.arch is None else record.arch.to_json()
        row["epoch_accuracies"] = list(record.epoch_accuracies)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("params", "macs", "duplicate_of"):
        frame[column] = frame[column].astype("Int64")
    for column in ("start", "end"):
        frame[column] = pd.to_datetime(frame[column])
    return frame
