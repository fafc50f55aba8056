"""The run folder's reports: tables as CSV, the best architecture and its family as JSON, the
plots, and ``report.md``, the file a person reads first.

``write_reports`` only reads the trial table and the configuration, so the reports of an
existing run folder can be rebuilt at any time without training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from reports import plots
from reports.tables import best_within_budget, family_table, pareto_data, pareto_front
from search.config import SearchConfig
from space.cost import count
from space.genotype import ArchSpec
from space.scaling import ALPHA, BETA, GAMMA, family

__all__ = ["FILES", "best_family", "render", "write_reports"]

FILES = {
    "report.md": "this report",
    "config.json": "the resolved configuration (rerun with the same --out to resume)",
    "trials.csv": "every trial: state, reason, architecture, params, MACs, accuracy, times",
    "pareto.csv": "the non-dominated trials (accuracy up, MACs down)",
    "pareto.png": "accuracy against MACs for every trial, the front and the budget",
    "best_arch.json": "the best architecture within the budget (load with ArchSpec.from_json)",
    "family.csv": "its Ti/XS/S/B family by compound scaling",
    "family/": "one JSON per variant (Ti.json, XS.json, S.json, B.json)",
    "family.png": "MACs and parameters of the family against the published CMT family",
}


def best_family(trials: pd.DataFrame, budget_macs: int) -> dict[str, ArchSpec] | None:
    """The Ti/XS/S/B family of the best architecture within the budget (None without one)."""
    best = best_within_budget(trials, budget_macs)
    return None if best is None else family(ArchSpec.from_json(best.arch))


def _gmacs(macs: float) -> str:
    return f"{macs / 1e9:.3f}"


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


def _summary_section(
    config: SearchConfig, trials: pd.DataFrame, best: pd.Series | None
) -> list[str]:
    budget = config.budget_macs
    lines = [f"# Search report: {config.budget} at {config.resolution}px on `{config.data}`", ""]
    if best is None:
        return [
            *lines,
            f"{len(trials)} trials ({_counts(trials)}); no trial completed within the budget of "
            f"{_gmacs(budget)} GMACs, so there is no best architecture and no family.",
            "",
        ]
    return [
        *lines,
        f"{len(trials)} trials ({_counts(trials)}) searched hybrid backbones, one block type per "
        f"stage (CMT, AEWin, CoT, Dual-ViT), under a budget of {_gmacs(budget)} GMACs at "
        f"{config.resolution}px. The best architecture within the budget is trial "
        f"{int(best.number)}, `{best.blocks}`: {best.accuracy:.1%} proxy validation top-1 at "
        f"{_gmacs(best.macs)} GMACs ({best.macs / budget:.0%} of the budget) and "
        f"{best.params / 1e6:.2f}M parameters.",
        "",
    ]


def _best_section(best: pd.Series) -> list[str]:
    arch = ArchSpec.from_json(best.arch)
    return [
        "## Best architecture within the budget",
        "",
        f"Stem `{arch.stem}` ({arch.stem_width} channels), head `{arch.head}` "
        f"({arch.head_width}), input {arch.resolution}px. "
        "JSON: [best_arch.json](best_arch.json).",
        "",
        *_stage_rows(arch),
        "",
    ]


def _family_section(family_rows: pd.DataFrame) -> list[str]:
    lines = [
        f"## The family (compound scaling, alpha={ALPHA}, beta={BETA}, gamma={GAMMA})",
        "",
        "Depth x alpha^phi, width x beta^phi, resolution x gamma^phi from the best "
        "architecture (S, phi = 0); MACs and parameters counted with fvcore at each "
        "variant's resolution. Published CMT variants for reference.",
        "",
        "| variant | phi | input | widths | depths | params | GMACs | proxy top-1 "
        "| CMT input | CMT params | CMT GMACs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in family_rows.itertuples():
        accuracy = f"{row.accuracy:.1%}" if pd.notna(row.accuracy) else "-"
        lines.append(
            f"| [{row.variant}](family/{row.variant}.json) | {row.phi:g} | {row.resolution} "
            f"| {row.widths} | {row.depths} | {row.params / 1e6:.2f}M | {_gmacs(row.macs)} "
            f"| {accuracy} | {row.cmt_resolution} | {row.cmt_params / 1e6:.2f}M "
            f"| {_gmacs(row.cmt_macs)} |"
        )
    note = (
        "Proxy accuracies of the variants come from the same proxy at a proxy resolution "
        "scaled like the input."
        if family_rows.accuracy.notna().any()
        else "The variants were not proxy-trained (`--train-family` does that)."
    )
    return [*lines, "", note, "", "![family](family.png)", ""]


def _trials_section(trials: pd.DataFrame, front: pd.DataFrame) -> list[str]:
    lines = [
        "## All trials and the front",
        "",
        f"{_counts(trials).capitalize()}. Pruned trials were stopped early by the dominance "
        "rule (their accuracy is the one when stopped); failed trials say why in `trials.csv`.",
        "",
        "| trial | blocks | GMACs | params | proxy top-1 |",
        "|---|---|---|---|---|",
    ]
    for row in front.itertuples():
        lines.append(
            f"| {row.number} | {row.blocks} | {_gmacs(row.macs)} | {row.params / 1e6:.2f}M "
            f"| {row.accuracy:.1%} |"
        )
    return [*lines, "", "![pareto](pareto.png)", ""]


def _method_section(config: SearchConfig) -> list[str]:
    recipe = config.proxy
    device = f"`{config.device}`"
    if config.device == "auto":
        device += " (CUDA when present, else the CPU)"
    return [
        "## How it was measured",
        "",
        "- MACs are multiply-accumulates, the quantity the CMT, Swin, Dual-ViT and CoTNet papers "
        "call FLOPs, at the target resolution, counted with fvcore with attention included "
        "whatever kernel computes it; normalisation, activations and pooling are not counted.",
        f"- Proxy: `{config.data}`, {recipe.epochs} epoch(s) at {recipe.resolution}px, "
        f"batch {recipe.batch_size}, AdamW (lr {recipe.lr:g}, weight decay "
        f"{recipe.weight_decay:g}) with warm-up and cosine decay, label smoothing "
        f"{recipe.label_smoothing:g}, seed {config.seed}, device {device}. A proxy ranks "
        "architectures roughly; see the README's proxy-fidelity figures.",
        f"- Search: {config.backend} backend, {config.sampler} sampler, seed {config.seed}, "
        f"early stopping {'on' if config.prune else 'off'}; every setting is in "
        "[config.json](config.json).",
        "",
    ]


def _files_section(config: SearchConfig) -> list[str]:
    return [
        "## Files",
        "",
        *[f"- [{name}]({name}): {what}" for name, what in FILES.items()],
        "- [study.journal](study.journal): the study, every trial of either backend "
        "(`optuna-dashboard study.journal`)",
        "",
    ]


def render(
    config: SearchConfig,
    trials: pd.DataFrame,
    front: pd.DataFrame,
    best: pd.Series | None,
    family_rows: pd.DataFrame | None,
) -> str:
    """The text of ``report.md``, section by section."""
    sections = [
        _summary_section(config, trials, best),
        [] if best is None else _best_section(best),
        [] if family_rows is None else _family_section(family_rows),
        _trials_section(trials, front),
        _method_section(config),
        _files_section(config),
    ]
    return "\n".join(line for section in sections for line in section)


def write_reports(
    out: str | Path,
    config: SearchConfig,
    trials: pd.DataFrame,
    family_accuracies: dict[str, float] | None = None,
) -> None:
    """Write every report file of the run folder ``out`` from its trial table."""
    out = Path(out)
    trials.to_csv(out / "trials.csv", index=False)
    front = pareto_front(trials)
    front.to_csv(out / "pareto.csv", index=False)
    plots.save(plots.plot_pareto(pareto_data(trials, config.budget_macs)), str(out / "pareto.png"))
    best = best_within_budget(trials, config.budget_macs)
    family_rows = None
    if best is not None:
        (out / "best_arch.json").write_text(ArchSpec.from_json(best.arch).to_json(indent=2) + "\n")
        members = family(ArchSpec.from_json(best.arch))
        (out / "family").mkdir(exist_ok=True)
        for variant, arch in members.items():
            (out / "family" / f"{variant}.json").write_text(arch.to_json(indent=2) + "\n")
        costs = {variant: count(arch) for variant, arch in members.items()}
        family_rows = family_table(members, costs, family_accuracies)
        family_rows.to_csv(out / "family.csv", index=False)
        plots.save(plots.plot_family(family_rows)[0], str(out / "family.png"))
    (out / "report.md").write_text(render(config, trials, front, best, family_rows))
    (out / "config.json").write_text(config.to_json() + "\n")
