"""One trial record for both search backends, and the trial table built from them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime

import pandas as pd

__all__ = ["COLUMNS", "STATES", "OnTrial", "TrialRecord", "best_accuracy", "to_frame"]

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """What happened to one trial.

    ``accuracy`` is the proxy's last validation top-1 (for a pruned trial, at the epoch it was
    stopped); ``epoch_accuracies`` the validation top-1 after every epoch run; ``macs`` and
    ``params`` are the architecture's at its target resolution (fvcore's count).
    ``duplicate_of`` names the trial whose result was reused for the same architecture.
    """

    number: int
    state: str
    backend: str
    arch: str = ""
    blocks: str = ""
    params: int | None = None
    macs: int | None = None
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


def to_frame(records: list[TrialRecord]) -> pd.DataFrame:
    """The trial table, one row per trial in trial-number order; per-epoch accuracies as JSON."""
    rows = [dataclasses.asdict(record) for record in sorted(records, key=lambda r: r.number)]
    for row in rows:
        row["epoch_accuracies"] = json.dumps(list(row["epoch_accuracies"]))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("params", "macs", "duplicate_of"):
        frame[column] = frame[column].astype("Int64")
    for column in ("start", "end"):
        frame[column] = pd.to_datetime(frame[column])
    return frame
