"""The run folder's reports: tables as CSV, the best architecture and its family as JSON, the
plots, and ``report.md``, the file a person reads first. It opens with the answer the run is
for: at each size, the searched family's proxy accuracy against CMT's, next to the proxy's
seed-to-seed noise, and the chosen alpha/beta/gamma next to CMT's.

``write_reports`` only reads the pipeline's results (``search.pipeline.Results``, which
``pipeline.run(..., report_only=True)`` rebuilds from the folder), so every file can be made
again at any time without training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from common import datasets
from oneshot.search import FIRST_PASS_IMAGES
from oneshot.space import window
from reports import plots
from reports.tables import (
    baselines_table,
    comparison,
    family_table,
    latency_data,
    noise,
    pareto_data,
    pareto_front,
    scaling_table,
    tradeoff_data,
)
from search.config import SearchConfig
from search.pipeline import CMT_COEFFICIENTS, SCALING_PHI, Results
from search.records import TrialRecord
from space.genotype import ArchSpec
from space.geometry import blind_spots

__all__ = ["FILES", "render", "write_reports"]

FILES = {
    "report.md": "this report",
    "config.json": "the resolved configuration (rerun with the same --out to resume)",
    "trials.csv": "every trial: state, reason, architecture, params, MACs, accuracy, times",
    "pareto.csv": "the non-dominated trials (accuracy up, MACs down)",
    "pareto.png": "accuracy against MACs for every trial, the front and the budget",
    "best_arch.json": "the best architecture within the budget (load with ArchSpec.from_json)",
    "scaling.csv": "the alpha/beta/gamma candidates, their members, costs and accuracies",
    "family.csv": "the searched Ti/XS/S/B family beside the published CMT family",
    "family/": "one JSON per variant (Ti.json, XS.json, S.json, B.json)",
    "baselines.csv": "the published models trained under the same proxy",
    "tradeoff.png": "proxy accuracy against MACs and parameters: trials, front, both families",
    "trainings.jsonl": "every training after the search, as it ended (read on a rerun)",
    "study.journal": "the search's study, with either backend (optuna-dashboard opens it)",
}
ONESHOT_FILES = {
    "subnets.csv": "every scored subnet: blocks, MACs, params, latency, scores, genotype",
    "oneshot.journal": "the one-shot scoring study (every draw, scored or outside the window)",
    "supernet.pt": "the trained supernet (oneshot.Supernet's state dict; extract a subnet)",
}
LATENCY_FILES = {
    "latency.jsonl": "S, the family and the baselines measured whole on the latency target",
    "pareto-latency.csv": "the non-dominated trials (accuracy up, predicted latency down)",
    "latency.png": "accuracy against predicted latency, and latency against MACs",
}


def _data(config: SearchConfig) -> str:
    """The run's dataset as named, and in full when the name was an alias (``default``)."""
    full = datasets.absolute(config.data)
    return f"`{config.data}`" + (f" (`{full}`)" if full != config.data else "")


def _pct(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1%}"


def _points(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{100 * value:+.1f}"


def _gmacs(macs: float | None) -> str:
    return "-" if macs is None or pd.isna(macs) else f"{macs / 1e9:.3f}"


def _answer_section(config: SearchConfig, results: Results) -> list[str]:
    """The comparison size by size, the noise, and the coefficients: what the run is for."""
    table, spread = comparison(results), noise(results)
    lines = [
        "## Searched family against CMT, under the same proxy",
        "",
        "| size | searched GMACs | searched top-1 | CMT | CMT GMACs | CMT top-1 | difference "
        "(points) | out of the noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        beyond = {True: "yes", False: "no, within the noise", None: "-"}[
            None if pd.isna(row.beyond_noise) else bool(row.beyond_noise)
        ]
        lines.append(
            f"| {row.variant} | {_gmacs(row.searched_macs)} | {_pct(row.searched_accuracy)} "
            f"| {row.cmt_preset} | {_gmacs(row.cmt_macs)} | {_pct(row.cmt_accuracy)} "
            f"| {_points(row.difference)} | {beyond} |"
        )
    lines += ["", _noise_sentence(spread), "", _verdict(table), ""]
    return lines + _coefficients_lines(config, results)


def _noise_sentence(spread: object) -> str:
    if spread.std is None:
        return "The proxy's seed-to-seed noise was not measured (its second-seed runs are missing)."
    pairs = ", ".join(f"{name} {_pct(a)} / {_pct(b)}" for name, (a, b) in spread.pairs.items())
    threshold = 2 * math.sqrt(2) * spread.std
    return (
        f"Seed-to-seed noise of the proxy: one training's top-1 varies by about "
        f"{100 * spread.std:.1f} points (standard deviation from models trained with two seeds: "
        f"{pairs}). A difference between two single trainings stands out of the noise above "
        f"{100 * threshold:.1f} points (twice its standard deviation)."
    )


def _verdict(table: pd.DataFrame) -> str:
    known = table[table.difference.notna()]
    if known.empty:
        return "No size has both proxy accuracies, so nothing is compared yet."
    wins = known[(known.difference > 0) & (known.beyond_noise == True)]  # noqa: E712
    losses = known[(known.difference < 0) & (known.beyond_noise == True)]  # noqa: E712
    within = known[known.beyond_noise != True]  # noqa: E712
    parts = []
    if len(wins):
        parts.append(f"the searched family is more accurate at {', '.join(wins.variant)}")
    if len(losses):
        parts.append(f"CMT is more accurate at {', '.join(losses.variant)}")
    if len(within):
        parts.append(f"the difference is within the proxy's noise at {', '.join(within.variant)}")
    return "In short: " + "; ".join(parts) + "."


def _coefficients_lines(config: SearchConfig, results: Results) -> list[str]:
    alpha, beta, gamma = results.coefficients
    how = (
        f"the most accurate of {len(results.scaling)} candidates scored at phi = "
        f"{SCALING_PHI:g} ([scaling.csv](scaling.csv))"
        if results.scaling
        else "kept as CMT's (`--scaling cmt`)"
    )
    cmt = ", ".join(f"{c:g}" for c in CMT_COEFFICIENTS)
    return [
        f"Scaling coefficients: alpha = {alpha:g}, beta = {beta:g}, gamma = {gamma:g}, {how}; "
        f"CMT's are {cmt}.",
        "",
        "![trade-off](tradeoff.png)",
        "",
    ]


def _stage_rows(arch: ArchSpec) -> list[str]:
    rows = [
        "| stage | block | depth | width | heads | MLP/expansion ratio | options |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(arch.stages, start=1):
        options = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(s.options).items())
        rows.append(
            f"| {i} | {s.block} | {s.depth} | {s.width} | {s.heads} | {s.ratio_label} | {options} |"
        )
    return rows


def _counts(trials: pd.DataFrame) -> str:
    """``"3 complete, 1 pruned"``: trials by state."""
    states = trials.state.value_counts().to_dict()
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items()))


def _title(config: SearchConfig, results: Results) -> list[str]:
    trials, best, budget = results.trials, results.best, config.budget_macs
    lines = [f"# Search report: {config.budget} at {config.resolution}px on {_data(config)}", ""]
    if best is None:
        return [
            *lines,
            f"{len(trials)} trials ({_counts(trials)}); no trial completed within the budget of "
            f"{_gmacs(budget)} GMACs, so there is no best architecture, family or comparison.",
            "",
        ]
    return [
        *lines,
        f"{len(trials)} trials ({_counts(trials)}) searched hybrid backbones (block types "
        f"{', '.join(config.block_types)}) under {_gmacs(budget)} GMACs at {config.resolution}px. "
        "The best "
        f"within the budget, S, is trial {best.number}, `{best.blocks}`: "
        f"{best.accuracy:.1%} proxy top-1 at {_gmacs(best.macs)} GMACs "
        f"({best.macs / budget:.0%} of the budget), {best.params / 1e6:.2f}M parameters.",
        "",
    ]


def _best_section(best: TrialRecord) -> list[str]:
    arch = best.arch
    return [
        "## S, the best architecture within the budget",
        "",
        f"Stem `{arch.stem}` ({arch.stem_width} channels), head `{arch.head}` "
        f"({arch.head_width}), input {arch.resolution}px. JSON: [best_arch.json](best_arch.json).",
        "",
        *_stage_rows(arch),
        "",
    ]


def _table_section(title: str, intro: str, table: pd.DataFrame, columns: list[str]) -> list[str]:
    lines = [f"## {title}", "", intro, "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in table.to_dict("records"):
        cells = []
        for column in columns:
            value = row[column]
            if column in ("macs", "cmt_macs", "published_macs"):
                value = _gmacs(value)
            elif column in ("params", "cmt_params", "published_params"):
                value = "-" if pd.isna(value) else f"{value / 1e6:.2f}M"
            elif column in ("accuracy", "cmt_accuracy"):
                value = _pct(value)
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


SCALING_SHOWN = [
    "alpha",
    "beta",
    "gamma",
    "resolution",
    "widths",
    "depths",
    "macs",
    "params",
    "proxy_input",
    "accuracy",
    "status",
    "chosen",
]
FAMILY_SHOWN = [
    "variant",
    "phi",
    "resolution",
    "widths",
    "depths",
    "params",
    "macs",
    "proxy_input",
    "accuracy",
    "status",
    "cmt_preset",
    "cmt_params",
    "cmt_macs",
    "cmt_accuracy",
]
BASELINES_SHOWN = [
    "preset",
    "resolution",
    "params",
    "macs",
    "published_params",
    "published_macs",
    "proxy_input",
    "accuracy",
    "status",
]


def _steps_sections(results: Results) -> list[str]:
    """The scaling candidates, the family and the baselines, each as a table."""
    lines = []
    if results.scaling:
        intro = (
            f"S scaled to phi = {SCALING_PHI:g} by each candidate (CMT's first, then the most "
            "spread-out of the grid built from S's measured MAC exponents)."
        )
        lines += _table_section("Scaling candidates", intro, scaling_table(results), SCALING_SHOWN)
    intro = (
        "Ti/XS/S/B by compound scaling of S with the chosen coefficients, counted at "
        "each variant's input; the CMT variant of each size beside it. JSON in family/."
    )
    lines += _table_section("The family", intro, family_table(results), FAMILY_SHOWN)
    if results.baselines:
        intro = (
            "Each preset trained exactly like the searched models, its input scaled by the same "
            "rule."
        )
        lines += _table_section(
            "Published models under the same proxy",
            intro,
            baselines_table(results),
            BASELINES_SHOWN,
        )
    return lines


def _trials_section(trials: pd.DataFrame) -> list[str]:
    lines = [
        "## All trials and the front",
        "",
        f"{_counts(trials).capitalize()}. Pruned trials were stopped early (their accuracy is "
        "the one when stopped); failed trials, collapsed trainings included, say why in "
        "`trials.csv`.",
        "",
        "| trial | blocks | GMACs | params | proxy top-1 |",
        "|---|---|---|---|---|",
    ]
    for row in pareto_front(trials).itertuples():
        lines.append(
            f"| {row.number} | {row.blocks} | {_gmacs(row.macs)} | {row.params / 1e6:.2f}M "
            f"| {row.accuracy:.1%} |"
        )
    return [*lines, "", "![pareto](pareto.png)", ""]


def _oneshot_section(config: SearchConfig, results: Results) -> list[str]:
    """How the one-shot search chose the trials: the supernet, the subnets scored, and the
    rescored best beside their trials' proxy accuracy."""
    subnets, trials = results.subnets, results.trials
    low, high = window(config.budget_macs)
    lines = [
        "## One-shot search",
        "",
        f"A supernet of {', '.join(config.block_types)} blocks trained "
        f"{_plural(config.supernet_epochs, 'epoch')}; {len(subnets)} subnets of {_gmacs(low)}-"
        f"{_gmacs(high)} GMACs (the space as drawn, without fitting) scored with its weights on "
        f"{FIRST_PASS_IMAGES} validation images, the best scored again on all of them, and the "
        "best "
        f"{config.trials} by that trained on their own as the trials below "
        "([subnets.csv](subnets.csv); method: docs/oneshot.md in the repository).",
        "",
        "| subnet | blocks | GMACs | supernet score | rescored | trial | proxy top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    by_arch = {row.arch: row for row in trials.itertuples()}
    rescored = subnets[subnets.rescore.notna()].sort_values(
        ["rescore", "number"], ascending=[False, True]
    )
    for row in rescored.itertuples():
        trial = by_arch.get(row.arch)
        trained = "" if trial is None else str(trial.number)
        accuracy = "" if trial is None or pd.isna(trial.accuracy) else f"{trial.accuracy:.1%}"
        lines.append(
            f"| {row.number} | {row.blocks} | {_gmacs(row.macs)} | {row.score:.1%} "
            f"| {row.rescore:.1%} | {trained} | {accuracy} |"
        )
    return [*lines, ""]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _latency_section(config: SearchConfig, results: Results) -> list[str]:
    """The latency target and machine, the limit, and the accuracy-against-latency front."""
    limit = config.latency_limit_ms
    lines = [
        "## Latency",
        "",
        f"Every trial's latency is predicted from this machine's table of measured units: "
        f"{results.latency_machine or 'machine not recorded'}. "
        + (f"The limit was {limit:g} ms; no trial was trained over it." if limit else "No limit.")
        + " The front of accuracy against predicted latency:",
        "",
        "| trial | blocks | predicted ms | GMACs | proxy top-1 |",
        "|---|---|---|---|---|",
    ]
    for row in pareto_front(results.trials, "latency_ms").itertuples():
        lines.append(
            f"| {row.number} | {row.blocks} | {row.latency_ms:.1f} | {_gmacs(row.macs)} "
            f"| {row.accuracy:.1%} |"
        )
    lines += ["", "![latency](latency.png)", ""]
    if results.measured_ms and results.best is not None:
        lines += [
            "The searched family and CMT's measured whole on the same machine (median of the "
            "timed calls; `latency.jsonl`):",
            "",
            "| size | searched ms | searched GMACs | CMT ms | CMT GMACs |",
            "|---|---|---|---|---|",
        ]
        for row in family_table(results).itertuples():
            lines.append(
                f"| {row.variant} | {_ms(row.latency_ms)} | {_gmacs(row.macs)} "
                f"| {_ms(row.cmt_latency_ms)} | {_gmacs(row.cmt_macs)} |"
            )
        lines.append("")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1f}"


def _method_section(config: SearchConfig) -> list[str]:
    recipe = config.proxy
    device = f"`{config.device}`" + (
        " (CUDA when present, else the CPU)" if config.device == "auto" else ""
    )
    return [
        "## How it was measured",
        "",
        "- MACs are multiply-accumulates, the quantity the CMT, Swin, Dual-ViT and CoTNet papers "
        "call FLOPs, at each model's own input size, attention included whatever kernel "
        "computes it; normalisation, activations and pooling are not counted. They come from "
        "the blocks' cost formulas (`space.cost.estimate`), which equal fvcore's count.",
        f"- Proxy: {_data(config)}, {recipe.epochs} epoch(s), batch {recipe.batch_size}, AdamW "
        f"(lr {recipe.lr:g}, weight decay {recipe.weight_decay:g}, warm-up over "
        f"{recipe.warmup_fraction:.0%} of the steps, then cosine decay), label smoothing "
        f"{recipe.label_smoothing:g}, seed {config.seed}, device {device}. The searched "
        f"architecture trains at {recipe.resolution}px; every other model at "
        f"{recipe.resolution}px x its input / {config.resolution}px (the proxy input column), so "
        "resolution scaling is visible to the proxy. A training that ends below 1.5 x chance "
        "(collapsed) or whose loss became non-finite is retrained once at a quarter of the "
        "learning rate (its reason says so); if that fails too, it is not ranked.",
        f"- Search: {config.backend} backend, {config.sampler} sampler, early stopping "
        f"{'on' if config.prune else 'off'}; every setting is in [config.json](config.json).",
        *_blind_spot_lines(recipe.resolution, config.block_types),
        "",
    ]


def _blind_spot_lines(resolution: int, blocks: Sequence[str] | None = None) -> list[str]:
    """What the proxy input cannot tell apart (``space.geometry``): the searched choices of the
    block types ``blocks`` that give the same model at it, and so were chosen by MACs and by
    chance."""
    spots = blind_spots(resolution, blocks)
    if not spots:
        return [f"- At the {resolution}px proxy input every searched choice gives its own model."]
    return [
        f"- The {resolution}px proxy input cannot tell these searched choices apart (they give "
        "the same model there, so the search chose among them by MACs and by chance; "
        "`python benchmarks/geometry.py`):",
        *[f"  - {spot}" for spot in spots],
    ]


def render(config: SearchConfig, results: Results) -> str:
    """The text of ``report.md``, section by section."""
    sections = [_title(config, results)]
    if results.best is not None:
        sections += [
            _answer_section(config, results),
            _best_section(results.best),
            _steps_sections(results),
        ]
    files = {**FILES, **(LATENCY_FILES if config.latency_device else {})}
    oneshot = config.strategy == "oneshot" and results.subnets is not None
    files.update(ONESHOT_FILES if oneshot else {})
    sections += [
        _oneshot_section(config, results) if oneshot else [],
        _trials_section(results.trials),
        _latency_section(config, results) if config.latency_device else [],
        _method_section(config),
        ["## Files", "", *[f"- [{name}]({name}): {what}" for name, what in files.items()], ""],
    ]
    return "\n".join(line for section in sections for line in section)


def write_reports(out: str | Path, config: SearchConfig, results: Results) -> None:
    """Write every report file of the run folder ``out`` from the pipeline's results."""
    out = Path(out)
    results.trials.to_csv(out / "trials.csv", index=False)
    pareto_front(results.trials).to_csv(out / "pareto.csv", index=False)
    pareto = plots.plot_pareto(pareto_data(results.trials, config.budget_macs))
    plots.save(pareto, str(out / "pareto.png"))
    if results.best is not None:
        (out / "best_arch.json").write_text(results.best.arch.to_json(indent=2) + "\n")
        (out / "family").mkdir(exist_ok=True)
        for row in results.family:
            (out / "family" / f"{row.job.label}.json").write_text(row.job.arch.to_json(2) + "\n")
        family_table(results).to_csv(out / "family.csv", index=False)
        scaling_table(results).to_csv(out / "scaling.csv", index=False)
        baselines_table(results).to_csv(out / "baselines.csv", index=False)
        figure = plots.plot_tradeoff(tradeoff_data(results, config.budget_macs))
        plots.save(figure[0], str(out / "tradeoff.png"))
    if results.subnets is not None:
        results.subnets.to_csv(out / "subnets.csv", index=False)
    if config.latency_device is not None:
        pareto_front(results.trials, "latency_ms").to_csv(out / "pareto-latency.csv", index=False)
        baselines = baselines_table(results) if results.best is not None else None
        data = latency_data(results.trials, config.latency_limit_ms, baselines)
        axes = plots.plot_latency(data)
        plots.save(axes[0], str(out / "latency.png"))
    (out / "report.md").write_text(render(config, results))
    (out / "config.json").write_text(config.to_json() + "\n")
