"""Early stopping of hopeless trials that works with two objectives (accuracy up, MACs down).

Optuna's pruners rank a trial by one intermediate value and refuse multi-objective studies
(``Trial.report`` raises there), and stopping on accuracy alone would kill cheap architectures
that belong on the accuracy-MACs front. ``DominancePruner`` stops a trial after epoch e when at
least ``quorum`` finished trials were already more accurate after their epoch e while costing
no more MACs: the trial is then dominated several times over at that point of training. Early
rankings do reverse (``docs/backends.md`` measures how often), so the quorum asks for three
such trials.
Pruning starts once ``min_finished`` trials have finished and never happens after the last
epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["DominancePruner", "Finished", "TrialStopped"]


class TrialStopped(Exception):  # a control-flow signal, like optuna.TrialPruned
    """Raised from a proxy's ``report`` callback to stop a hopeless trial."""

    def __init__(self, epoch: int, accuracy: float, reason: str) -> None:
        super().__init__(reason)
        self.epoch, self.accuracy = epoch, accuracy


@dataclasses.dataclass(frozen=True)
class Finished:
    """What the pruner needs of a finished trial."""

    macs: int
    epoch_accuracies: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class DominancePruner:
    quorum: int = 3
    min_finished: int = 4

    def check(
        self,
        epoch: int,
        accuracy: float,
        macs: int,
        epochs: int,
        finished: Sequence[Finished],
    ) -> None:
        """Raise ``TrialStopped`` if the trial is dominated by ``quorum`` finished trials."""
        if epoch >= epochs - 1 or len(finished) < self.min_finished:
            return
        better = [
            f
            for f in finished
            if len(f.epoch_accuracies) > epoch
            and f.epoch_accuracies[epoch] > accuracy
            and f.macs <= macs
        ]
        if len(better) >= self.quorum:
            raise TrialStopped(
                epoch,
                accuracy,
                f"stopped after epoch {epoch + 1}: {len(better)} finished trials were more "
                f"accurate at that epoch ({accuracy:.3f}) with no more MACs",
            )
