"""Matplotlib drawings of the report tables; each function draws and returns its Axes.

Figures are made with ``matplotlib.figure.Figure`` rather than pyplot, so drawing needs no
display and leaves pyplot's state alone.
"""

from __future__ import annotations

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from reports.tables import LatencyData, ParetoData, TradeoffData

__all__ = ["plot_latency", "plot_pareto", "plot_tradeoff", "save"]


PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5, 2, 40 rather than 5x10^-1
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


def plot_latency(data: LatencyData, axes: tuple[Axes, Axes] | None = None) -> tuple[Axes, Axes]:
    """Left: proxy accuracy against predicted latency, the front as a step line, the limit as a
    vertical line. Right: latency against GMACs, the trials (predicted) one colour per block type
    of stage 3 (the deepest), the presets (measured) as labelled crosses: where the same MACs
    take different times."""
    if axes is None:
        figure = Figure(figsize=(13, 5))
        axes = (figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2))
    left, right = axes
    left.scatter(data.scored.latency_ms, data.scored.accuracy, color="tab:blue", s=30, zorder=3)
    if not data.front.empty:
        left.step(
            data.front.latency_ms,
            data.front.accuracy,
            where="post",
            color="black",
            marker="o",
            markersize=10,
            markerfacecolor="none",
            label="front",
        )
    if data.limit_ms is not None:
        left.axvline(data.limit_ms, color="crimson", linestyle="--", label="latency budget")
    left.set_xlabel("predicted latency (ms)")
    left.set_ylabel("proxy validation top-1")
    left.set_title("Trials: proxy accuracy against latency")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    third = data.scored.blocks.str.split("-").str[2]
    for block in sorted(third.unique()):
        mine = data.scored[third == block]
        right.scatter(mine.macs / 1e9, mine.latency_ms, s=30, label=f"stage 3: {block}")
    if not data.presets.empty:
        right.scatter(
            data.presets.macs / 1e9,
            data.presets.latency_ms,
            marker="x",
            color="black",
            s=40,
            label="presets (measured)",
        )
        for row in data.presets.itertuples():
            right.annotate(
                row.preset,
                (row.macs / 1e9, row.latency_ms),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    right.set_xlabel("GMACs at each model's own input")
    right.set_ylabel("latency (ms): trials predicted, presets measured")
    right.set_title("Latency against MACs")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    return left, right


def plot_tradeoff(data: TradeoffData, axes: tuple[Axes, Axes] | None = None) -> tuple[Axes, Axes]:
    """Proxy accuracy against GMACs and against parameters (log axes): a one-shot search's
    scored subnets faintest (their supernet score), every trial faint, the search's front as a
    step line, the searched family Ti -> XS -> S -> B and CMT's family as
    lines, other presets as labelled points, the budget as a vertical line; one legend below."""
    if axes is None:
        figure = Figure(figsize=(13, 5.5))
        axes = (figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2))
    _tradeoff_panel(axes[0], data, "macs", 1e9)
    _tradeoff_panel(axes[1], data, "params", 1e6)
    axes[0].axvline(data.budget_macs / 1e9, color="crimson", linestyle="--", label="budget")
    axes[0].set_xlabel("GMACs (multiply-accumulates) at each model's own input")
    axes[1].set_xlabel("parameters (millions)")
    axes[0].set_ylabel("proxy validation top-1")
    axes[0].set_title("Proxy accuracy against MACs")
    axes[1].set_title("Proxy accuracy against parameters")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].figure.legend(
        handles,
        labels,
        loc="lower center",
        ncol=len(labels),
        fontsize=9,
        bbox_to_anchor=(0.5, -0.04),
        frameon=False,
    )
    return axes


def _tradeoff_panel(ax: Axes, data: TradeoffData, column: str, scale: float) -> None:
    if data.subnets is not None and not data.subnets.empty:
        ax.scatter(
            data.subnets[column].astype(float) / scale,
            data.subnets.score,
            s=4,
            color="tab:purple",
            alpha=0.15,
            linewidths=0,
            label="one-shot subnets (supernet score)",
            zorder=0,
        )
    ax.scatter(
        data.trials[column] / scale,
        data.trials.accuracy,
        s=14,
        color="lightgrey",
        label="search trials",
        zorder=1,
    )
    if column == "macs" and not data.front.empty:
        front = data.front.macs / scale
        ax.step(
            front,
            data.front.accuracy,
            where="post",
            color="grey",
            linewidth=1,
            label="search front",
            zorder=2,
        )
    _family_line(ax, data.family, column, scale, "variant", "tab:blue", "searched family")
    _family_line(ax, data.cmt, column, scale, "preset", "tab:orange", "CMT family")
    known = data.others[data.others.accuracy.notna()]
    if not known.empty:
        ax.scatter(
            known[column] / scale,
            known.accuracy,
            marker="s",
            color="tab:green",
            label="other presets",
            zorder=4,
        )
    for row in known.itertuples():
        ax.annotate(
            row.preset,
            (getattr(row, column) / scale, row.accuracy),
            fontsize=8,
            xytext=(4, -10),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")


def _family_line(
    ax: Axes, table: pd.DataFrame, column: str, scale: float, name: str, colour: str, label: str
) -> None:
    """A family as a line through its trained members, each labelled (Ti, cmt_ti, ...)."""
    known = table[table.accuracy.notna()].sort_values("macs")
    if known.empty:
        return
    ax.plot(
        known[column] / scale,
        known.accuracy,
        marker="o",
        color=colour,
        label=label,
        linewidth=1.8,
        zorder=3,
    )
    for row in known.itertuples():
        ax.annotate(
            getattr(row, name),
            (getattr(row, column) / scale, row.accuracy),
            fontsize=8,
            color=colour,
            xytext=(4, 4),
            textcoords="offset points",
        )


def save(ax: Axes, path: str) -> None:
    """Write the figure of ``ax`` to ``path`` (legends outside the axes included)."""
    figure = ax.figure
    figure.tight_layout()
    figure.savefig(path, dpi=130, bbox_inches="tight")
