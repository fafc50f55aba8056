"""Pure pandas tables of a run: the trials and their accuracy-MACs front, the scaling
candidates, the searched family beside the published CMT family, the baselines, the proxy's
noise and the size-by-size comparison that report.md opens with. Parameters and MACs come from
``space.cost.estimate``, the closed-form count that equals fvcore's (``space.cost.count``) on
every preset and sampled architecture the tests and ``benchmarks/estimate.py`` check, in a
millisecond instead of seconds."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pandas as pd

from search.pipeline import SCALING_PHI, Results, Row
from space import presets
from space.cost import estimate
from space.genotype import ArchSpec

__all__ = [
    "CMT_FAMILY",
    "LatencyData",
    "Noise",
    "ParetoData",
    "baselines_table",
    "comparison",
    "family_table",
    "latency_data",
    "noise",
    "pareto_data",
    "pareto_front",
    "scaling_table",
    "tradeoff_data",
]

CMT_FAMILY = {"Ti": "cmt_ti", "XS": "cmt_xs", "S": "cmt_s", "B": "cmt_b"}
SHAPE = ["resolution", "blocks", "widths", "depths", "params", "macs"]
TRAINED = ["proxy_input", "seed", "accuracy", "status"]
SCALING_COLUMNS = ["alpha", "beta", "gamma", "phi", *SHAPE, *TRAINED, "chosen"]
BASELINE_COLUMNS = ["preset", *SHAPE, "published_params", "published_macs", *TRAINED]
FAMILY_COLUMNS = [
    "variant",
    "phi",
    *SHAPE,
    *TRAINED,
    "cmt_preset",
    "cmt_resolution",
    "cmt_params",
    "cmt_macs",
    "cmt_accuracy",
]


def _scored(trials: pd.DataFrame, cost: str = "macs") -> pd.DataFrame:
    return trials[(trials.state == "COMPLETE") & trials.accuracy.notna() & trials[cost].notna()]


def pareto_front(trials: pd.DataFrame, cost: str = "macs") -> pd.DataFrame:
    """The completed trials no other completed trial beats on both accuracy (higher) and
    ``cost`` (lower: ``macs`` or ``latency_ms``), sorted by it; of equal points the first
    trial is kept."""
    scored = _scored(trials, cost).sort_values(
        [cost, "accuracy", "number"], ascending=[True, False, True]
    )
    front, best = [], -1.0
    for index, row in scored.iterrows():
        if row.accuracy > best:
            front.append(index)
            best = row.accuracy
    return scored.loc[front]


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


class LatencyData(NamedTuple):
    """What the latency figure draws: the trials with a predicted latency (scored ones and the
    rest), the accuracy-against-latency front, the latency limit in ms (None without), and the
    presets measured whole (``preset``, ``macs``, ``latency_ms``; empty when none were)."""

    scored: pd.DataFrame
    front: pd.DataFrame
    limit_ms: float | None
    presets: pd.DataFrame


def latency_data(
    trials: pd.DataFrame, limit_ms: float | None, baselines: pd.DataFrame | None = None
) -> LatencyData:
    """The figure's data from the trial table and the baselines table (its measured rows)."""
    columns = ["preset", "macs", "latency_ms"]
    presets = pd.DataFrame(columns=columns)
    if baselines is not None and "latency_ms" in baselines:
        presets = baselines.loc[baselines.latency_ms.notna(), columns]
    return LatencyData(
        _scored(trials, "latency_ms"), pareto_front(trials, "latency_ms"), limit_ms, presets
    )


def _status(row: Row) -> str:
    """``trained``, ``not trained`` (the run stopped first) or the failure's reason."""
    if row.training is None:
        return "not trained"
    return row.training.reason if row.training.failed else "trained"


def _shape(arch: ArchSpec) -> dict[str, Any]:
    cost = estimate(arch)
    return {
        "resolution": arch.resolution,
        "blocks": arch.block_mix,
        "widths": "/".join(str(s.width) for s in arch.stages),
        "depths": "/".join(str(s.depth) for s in arch.stages),
        "params": cost.params,
        "macs": cost.macs,
    }


def _trained(row: Row) -> dict[str, Any]:
    return {
        "proxy_input": row.job.recipe.resolution,
        "seed": row.job.seed,
        "accuracy": row.accuracy,
        "status": _status(row),
    }


def scaling_table(results: Results) -> pd.DataFrame:
    """One row per alpha/beta/gamma candidate: its member at ``SCALING_PHI``, its cost, its
    proxy accuracy and whether it was chosen."""
    rows = []
    for row in results.scaling:
        facts = row.job.facts
        coefficients = (facts["alpha"], facts["beta"], facts["gamma"])
        rows.append(
            {
                "alpha": facts["alpha"],
                "beta": facts["beta"],
                "gamma": facts["gamma"],
                "phi": SCALING_PHI,
                **_shape(row.job.arch),
                **_trained(row),
                "chosen": coefficients == results.coefficients,
            }
        )
    return pd.DataFrame(rows, columns=SCALING_COLUMNS)


def _latency(results: Results, arch: ArchSpec) -> dict[str, float | None]:
    """The network's measured latency when the run measured latency, else nothing."""
    return {"latency_ms": results.measured_ms.get(arch.to_json())} if results.measured_ms else {}


def baselines_table(results: Results) -> pd.DataFrame:
    """One row per published preset trained under the same proxy, its published size beside
    (and its measured latency when the run measured latency)."""
    rows = []
    for row in results.baselines:
        name = row.job.facts["preset"]
        published = presets.PUBLISHED[name]
        rows.append(
            {
                "preset": name,
                **_shape(row.job.arch),
                "published_params": published.params,
                "published_macs": published.macs,
                **_trained(row),
                **_latency(results, row.job.arch),
            }
        )
    extra = ["latency_ms"] if results.measured_ms else []
    return pd.DataFrame(rows, columns=BASELINE_COLUMNS + extra)


def family_table(results: Results) -> pd.DataFrame:
    """One row per variant Ti/XS/S/B: phi, size, proxy accuracy, and the published CMT variant
    of that size beside it (its published figures, and its proxy accuracy when trained)."""
    cmt = {row.job.facts["preset"]: row for row in results.baselines}
    rows = []
    for row in results.family:
        variant = row.job.label
        name = CMT_FAMILY[variant]
        published = presets.PUBLISHED[name]
        rows.append(
            {
                "variant": variant,
                "phi": row.job.facts["phi"],
                **_shape(row.job.arch),
                **_trained(row),
                "cmt_preset": name,
                "cmt_resolution": presets.get(name).resolution,
                "cmt_params": published.params,
                "cmt_macs": published.macs,
                "cmt_accuracy": cmt[name].accuracy if name in cmt else None,
                **_latency(results, row.job.arch),
                **{f"cmt_{k}": v for k, v in _latency(results, presets.get(name)).items()},
            }
        )
    extra = ["latency_ms", "cmt_latency_ms"] if results.measured_ms else []
    return pd.DataFrame(rows, columns=FAMILY_COLUMNS + extra)


class Noise(NamedTuple):
    """The proxy's seed-to-seed noise from models trained with two seeds: each pair's two
    accuracies, and the standard deviation of one training's accuracy they imply
    (sqrt(mean((a - b)^2) / 2)); None without a complete pair."""

    pairs: dict[str, tuple[float, float]]
    std: float | None


def noise(results: Results) -> Noise:
    first = {"S": _accuracy_of_s(results)}
    first.update({row.job.facts["preset"]: row.accuracy for row in results.baselines})
    pairs = {}
    for row in results.noise:
        name = row.job.facts["pair"]
        if row.accuracy is not None and first.get(name) is not None:
            pairs[name] = (first[name], row.accuracy)
    if not pairs:
        return Noise(pairs, None)
    std = math.sqrt(sum((a - b) ** 2 for a, b in pairs.values()) / (2 * len(pairs)))
    return Noise(pairs, std)


def _accuracy_of_s(results: Results) -> float | None:
    return None if results.best is None else float(results.best.accuracy)


def comparison(results: Results) -> pd.DataFrame:
    """At each size, the searched variant's proxy accuracy against the CMT variant's, their
    difference, and whether it stands out of the noise (more than twice the standard deviation
    of a difference of two single trainings, sqrt(2) x the noise)."""
    family = family_table(results)
    counted = {row.job.facts["preset"]: estimate(row.job.arch).macs for row in results.baselines}
    spread = noise(results).std
    rows = []
    for row in family.itertuples():
        difference = None
        if pd.notna(row.accuracy) and pd.notna(row.cmt_accuracy):
            difference = row.accuracy - row.cmt_accuracy
        beyond = None
        if difference is not None and spread is not None:
            beyond = abs(difference) > 2 * math.sqrt(2) * spread
        rows.append(
            {
                "variant": row.variant,
                "searched_macs": row.macs,
                "searched_accuracy": row.accuracy,
                "cmt_preset": row.cmt_preset,
                "cmt_macs": counted.get(row.cmt_preset, row.cmt_macs),
                "cmt_accuracy": row.cmt_accuracy,
                "difference": difference,
                "beyond_noise": beyond,
            }
        )
    return pd.DataFrame(rows)


class TradeoffData(NamedTuple):
    """What the trade-off figure draws: scored trials and their front, the searched family,
    the CMT family and the other baselines (each with params, MACs and proxy accuracy, failed
    or untrained ones without accuracy), the budget in MACs, and a one-shot search's scored
    subnets (``oneshot.search.table``; None without one)."""

    trials: pd.DataFrame
    front: pd.DataFrame
    family: pd.DataFrame
    cmt: pd.DataFrame
    others: pd.DataFrame
    budget_macs: int
    subnets: pd.DataFrame | None = None


def tradeoff_data(results: Results, budget_macs: int) -> TradeoffData:
    baselines = baselines_table(results)
    is_cmt = baselines.preset.isin(CMT_FAMILY.values())
    return TradeoffData(
        _scored(results.trials),
        pareto_front(results.trials),
        family_table(results),
        baselines[is_cmt],
        baselines[~is_cmt],
        budget_macs,
        results.subnets,
    )
