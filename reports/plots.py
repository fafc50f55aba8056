"""Matplotlib drawings of the report tables; each function draws and returns its Axes.

Figures are made with ``matplotlib.figure.Figure`` rather than pyplot, so drawing needs no
display and leaves pyplot's state alone.
"""

from __future__ import annotations

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from reports.tables import ParetoData

__all__ = ["plot_family", "plot_pareto", "save"]


MAX_NAMED_MIXES = 12  # block mixes named in the Pareto plot's legend; the rest are grey


def _new_axes(ax: Axes | None, size: tuple[float, float] = (8, 5.5)) -> Axes:
    return ax if ax is not None else Figure(figsize=size).add_subplot()


def plot_pareto(data: ParetoData, ax: Axes | None = None) -> Axes:
    """Every trial as proxy accuracy against GMACs, coloured by block mix; the front as a step
    line through ringed points (a one-trial front shows as its ring); the budget as a vertical
    line; pruned trials hollow; failed trials on a strip below."""
    ax = _new_axes(ax, size=(10, 5.5))
    counts = pd.concat([data.scored.blocks, data.pruned.blocks]).value_counts()  # most first
    keep = len(counts) if len(counts) <= MAX_NAMED_MIXES + 1 else MAX_NAMED_MIXES
    named, others = sorted(counts.index[:keep]), list(counts.index[keep:])
    colours = matplotlib.colormaps["tab20"](range(len(named)))
    groups = [(mix, [mix], c) for mix, c in zip(named, colours, strict=True)]
    if others:
        groups.append((f"{len(others)} other block mixes", others, "darkgrey"))
    for label, members, shade in groups:
        done = data.scored[data.scored.blocks.isin(members)]
        ax.scatter(done.macs / 1e9, done.accuracy, color=shade, s=40, label=label, zorder=3)
        stopped = data.pruned[data.pruned.blocks.isin(members)]
        ax.scatter(
            stopped.macs / 1e9,
            stopped.accuracy,
            facecolors="none",
            edgecolors=[shade],
            s=40,
            zorder=3,
        )
    if not data.pruned.empty:
        ax.scatter(
            [], [], facecolors="none", edgecolors="grey", label="pruned (accuracy when stopped)"
        )
    if not data.front.empty:
        ax.step(
            data.front.macs / 1e9,
            data.front.accuracy,
            where="post",
            color="black",
            linewidth=1.2,
            marker="o",
            markersize=11,
            markerfacecolor="none",
            label="Pareto front",
            zorder=2,
        )
    ax.axvline(data.budget_macs / 1e9, color="crimson", linestyle="--", label="budget")
    low = min([0.0, *data.scored.accuracy, *data.pruned.accuracy])
    if not data.failed.empty:
        strip = low - 0.06
        ax.scatter(
            data.failed.macs.fillna(0) / 1e9,
            [strip] * len(data.failed),
            marker="x",
            color="dimgrey",
            label=f"failed ({len(data.failed)})",
            zorder=3,
        )
        ax.axhline(low - 0.03, color="lightgrey", linewidth=0.8)
    ax.set_xlabel("GMACs (multiply-accumulates; the papers' FLOPs) at the target resolution")
    ax.set_ylabel("proxy validation top-1")
    ax.set_title("Trials: proxy accuracy against MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return ax


def plot_family(table: pd.DataFrame, axes: tuple[Axes, Axes] | None = None) -> tuple[Axes, Axes]:
    """The Ti/XS/S/B family: GMACs and parameters by variant, the published CMT family beside."""
    if axes is None:
        figure = Figure(figsize=(10, 4.5))
        axes = (figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2))
    x = range(len(table))
    labels = [f"{v}\n{r}px" for v, r in zip(table.variant, table.resolution, strict=True)]
    for ax, ours, theirs, unit, scale in (
        (axes[0], "macs", "cmt_macs", "GMACs (multiply-accumulates)", 1e9),
        (axes[1], "params", "cmt_params", "parameters (millions)", 1e6),
    ):
        ax.bar(
            [i - 0.2 for i in x],
            table[ours] / scale,
            width=0.4,
            label="searched family",
            color="tab:blue",
        )
        ax.bar(
            [i + 0.2 for i in x],
            table[theirs] / scale,
            width=0.4,
            label="published CMT",
            color="lightgrey",
        )
        for i, value in zip(x, table[ours] / scale, strict=True):
            ax.annotate(f"{value:.2f}", (i - 0.2, value), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x), labels)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("MACs by variant")
    axes[1].set_title("Parameters by variant")
    return axes


def save(ax: Axes, path: str) -> None:
    """Write the figure of ``ax`` to ``path``."""
    figure = ax.figure
    figure.tight_layout()
    figure.savefig(path, dpi=130)
