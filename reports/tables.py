"""Pure pandas tables of a search: the trials, the accuracy-MACs front, the best architecture
within the budget, and the scaled family next to the published CMT family."""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from space import presets
from space.cost import Cost
from space.genotype import ArchSpec
from space.scaling import FAMILY_PHI

__all__ = [
    "PUBLISHED_CMT",
    "ParetoData",
    "best_within_budget",
    "family_table",
    "pareto_data",
    "pareto_front",
]

PUBLISHED_CMT = pd.DataFrame(
    [
        {
            "variant": variant,
            "preset": name,
            "resolution": presets.get(name).resolution,
            "params": presets.PUBLISHED[name].params,
            "macs": presets.PUBLISHED[name].macs,
        }
        for variant, name in (("Ti", "cmt_ti"), ("XS", "cmt_xs"), ("S", "cmt_s"), ("B", "cmt_b"))
    ]
)


def _scored(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[(trials.state == "COMPLETE") & trials.accuracy.notna() & trials.macs.notna()]


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """The completed trials no other completed trial beats on both accuracy (higher) and MACs
    (lower), sorted by MACs; of equal (accuracy, MACs) points the first trial is kept."""
    scored = _scored(trials).sort_values(
        ["macs", "accuracy", "number"], ascending=[True, False, True]
    )
    front, best = [], -1.0
    for index, row in scored.iterrows():
        if row.accuracy > best:
            front.append(index)
            best = row.accuracy
    return scored.loc[front]


def best_within_budget(trials: pd.DataFrame, budget_macs: int) -> pd.Series | None:
    """The most accurate completed trial within the budget (fewer MACs, then earlier, on ties)."""
    scored = _scored(trials)
    scored = scored[scored.macs <= budget_macs]
    if scored.empty:
        return None
    return scored.sort_values(["accuracy", "macs", "number"], ascending=[False, True, True]).iloc[0]


class ParetoData(NamedTuple):
    """What the Pareto plot draws: scored trials, pruned ones (their accuracy when stopped),
    failed ones, the front, and the budget in MACs."""

    scored: pd.DataFrame
    pruned: pd.DataFrame
    failed: pd.DataFrame
    front: pd.DataFrame
    budget_macs: int


def pareto_data(trials: pd.DataFrame, budget_macs: int) -> ParetoData:
    return ParetoData(
        _scored(trials),
        trials[(trials.state == "PRUNED") & trials.accuracy.notna()],
        trials[trials.state == "FAIL"],
        pareto_front(trials),
        budget_macs,
    )


def family_table(
    family: dict[str, ArchSpec],
    costs: dict[str, Cost],
    accuracies: dict[str, float] | None = None,
) -> pd.DataFrame:
    """One row per variant: phi, resolution, widths, depths, params and MACs (and the proxy
    accuracy when the variants were trained), with the published CMT variant alongside."""
    rows = []
    for variant, arch in family.items():
        published = PUBLISHED_CMT.set_index("variant").loc[variant]
        rows.append(
            {
                "variant": variant,
                "phi": FAMILY_PHI[variant],
                "resolution": arch.resolution,
                "blocks": arch.block_mix,
                "widths": "/".join(str(s.width) for s in arch.stages),
                "depths": "/".join(str(s.depth) for s in arch.stages),
                "params": costs[variant].params,
                "macs": costs[variant].macs,
                "accuracy": None if accuracies is None else accuracies.get(variant),
                "cmt_resolution": published.resolution,
                "cmt_params": published.params,
                "cmt_macs": published.macs,
            }
        )
    return pd.DataFrame(rows)
