"""The pure report tables and the plots drawn from them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from reports import plots
from reports.tables import pareto_data, pareto_front
from search.records import COLUMNS, TrialRecord, best_within_budget


def trials(*rows: tuple[int, str, float | None, float | None]) -> pd.DataFrame:
    """(number, state, GMACs, accuracy) rows as a trial table."""
    table = pd.DataFrame(
        [
            {
                "number": n,
                "state": state,
                "macs": None if gmacs is None else int(gmacs * 1e9),
                "accuracy": accuracy,
                "blocks": f"mix{n % 3}",
            }
            for n, state, gmacs, accuracy in rows
        ]
    )
    return table.reindex(columns=COLUMNS)


TABLE = trials(
    (0, "COMPLETE", 3.0, 0.80),
    (1, "COMPLETE", 3.5, 0.90),
    (2, "COMPLETE", 3.2, 0.70),  # dominated by 0
    (3, "COMPLETE", 3.9, 0.95),
    (4, "PRUNED", 2.0, 0.99),  # not scored: stopped early
    (5, "FAIL", None, None),
    (6, "COMPLETE", 3.5, 0.90),  # the same point as 1
)


def test_pareto_front_keeps_the_non_dominated_completed_trials() -> None:
    front = pareto_front(TABLE)
    assert front.number.tolist() == [0, 1, 3]
    assert front.macs.is_monotonic_increasing and front.accuracy.is_monotonic_increasing


def test_best_within_budget() -> None:
    records = [
        TrialRecord(
            row.number,
            row.state,
            "optuna",
            macs=None if pd.isna(row.macs) else int(row.macs),
            accuracy=None if pd.isna(row.accuracy) else row.accuracy,
        )
        for row in TABLE.itertuples()
    ]
    assert best_within_budget(records, int(4e9)).number == 3
    assert best_within_budget(records, int(3.6e9)).number == 1  # ties go to the earlier trial
    assert best_within_budget(records, int(2.5e9)) is None


@pytest.mark.parametrize("mixes", [3, 30])
def test_the_pareto_plot_draws_every_trial(mixes: int, tmp_path: Path) -> None:
    rows = [(n, "COMPLETE", 1 + n / 10, 0.5 + n / 100) for n in range(mixes)]
    table = trials(*rows, (mixes, "FAIL", None, None))
    table["blocks"] = [f"mix{n}" for n in range(mixes + 1)]
    ax = plots.plot_pareto(pareto_data(table, int(4e9)))
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn == mixes + 1  # every scored trial and the failed one
    labels = ax.get_legend_handles_labels()[1]
    assert len(labels) <= plots.MAX_NAMED_MIXES + 4  # a readable legend, even with 30 mixes
    plots.save(ax, str(tmp_path / "pareto.png"))
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
