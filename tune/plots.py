"""The robustness report's PNG plots (matplotlib, Agg backend): one message per plot.

- ``distribution.png``: the final metric of every trial per mode (box + points; stopped trials hollow grey);
- ``effect_<key>.png``: the metric against one hyperparameter, a panel per mode side by side, mean ± std per value;
- ``sensitivity.png``: each mode's best-to-worst gap of the mean metric, per hyperparameter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from protpeft.tune.stats import MODE_ORDER, Group, all_numeric, modes_present, scored_rows

__all__ = ["plot_distribution", "plot_effect", "plot_sensitivity", "slug"]

MODE_COLOURS = {"frozen": "#1f77b4", "lora": "#2ca02c", "full": "#d62728"}
STOPPED_COLOUR = "#9a9a9a"
FONT = {
    "font.size": 12,
    "axes.titlesize": 14,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 10,
    "figure.titlesize": 15,
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def plot_distribution(rows: list[dict[str, Any]], metric: str, out: Path) -> Path:
    """Box + points of the final metric per mode; stopped trials as hollow grey markers."""
    plt = _pyplot()
    modes = modes_present(rows)
    rng = np.random.default_rng(0)
    with plt.rc_context(FONT):
        fig, ax = plt.subplots(figsize=(max(5.5, 2.2 * len(modes) + 2), 4.8))
        finished = [[r["metrics"][metric] for r in scored_rows(rows, metric) if r["mode"] == m] for m in modes]
        positions = [i for i, vals in enumerate(finished) if vals]
        if positions:
            ax.boxplot(
                [finished[i] for i in positions],
                positions=positions,
                widths=0.5,
                showfliers=False,
                medianprops={"color": "black", "linewidth": 2},
            )
        for i, mode in enumerate(modes):
            vals = finished[i]
            ax.scatter(
                i + rng.uniform(-0.12, 0.12, len(vals)),
                vals,
                s=45,
                color=MODE_COLOURS.get(mode, "C4"),
                zorder=3,
                label="finished trial" if i == 0 else None,
            )
            stopped = [r["metrics"][metric] for r in scored_rows(rows, metric, "STOPPED") if r["mode"] == mode]
            ax.scatter(
                i + 0.3 + rng.uniform(-0.05, 0.05, len(stopped)),
                stopped,
                s=45,
                facecolors="none",
                edgecolors=STOPPED_COLOUR,
                zorder=3,
                label="stopped early (last value)" if stopped else None,
            )
        ax.set_xticks(range(len(modes)), [f"{m}\n(n={len(finished[i])})" for i, m in enumerate(modes)])
        ax.set_xlim(-0.6, len(modes) - 0.4)
        ax.set_xlabel("mode")
        ax.set_ylabel(f"final {metric}")
        ax.set_title(f"Spread of final {metric} over the search, by mode")
        ax.grid(axis="y", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            unique = dict(zip(labels, handles, strict=True))
            ax.legend(unique.values(), unique.keys(), loc="best")
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        plt.close(fig)
    return out


def plot_effect(
    rows: list[dict[str, Any]], key: str, metric: str, groups: dict[str, list[Group]], log: bool, out: Path
) -> Path:
    """Metric against one hyperparameter, a panel per mode side by side, with each value's mean ± std."""
    plt = _pyplot()
    modes = list(groups) or modes_present(rows)
    numeric = all_numeric([r["config"].get(key) for r in scored_rows(rows, metric) if key in r["config"]])
    categories = sorted({(g.position, g.label) for gs in groups.values() for g in gs})
    rng = np.random.default_rng(0)
    with plt.rc_context(FONT):
        fig, axes = plt.subplots(
            1,
            max(1, len(modes)),
            figsize=(max(6.0, 4.6 * len(modes)), 4.8),
            sharey=True,
            sharex=True,
            squeeze=False,
        )
        for ax, mode in zip(axes[0], modes, strict=False):
            colour = MODE_COLOURS.get(mode, "C4")
            mine = [g for g in groups.get(mode, [])]
            for g in mine:
                if numeric:
                    xs = np.array(g.values, dtype=float)
                else:
                    xs = g.position + rng.uniform(-0.1, 0.1, g.n)
                ax.scatter(xs, g.metrics, s=40, color=colour, alpha=0.75, zorder=3, label="finished trial")
            if mine:
                ax.errorbar(
                    [g.position for g in mine],
                    [g.mean for g in mine],
                    yerr=[g.std for g in mine],
                    color="black",
                    marker="D",
                    markersize=6,
                    capsize=5,
                    linewidth=1.5,
                    zorder=4,
                    label="mean ± std per value" + (" bin" if any("–" in g.label for g in mine) else ""),
                )
            if numeric:
                stopped = [r for r in scored_rows(rows, metric, "STOPPED") if r["mode"] == mode and key in r["config"]]
                ax.scatter(
                    [r["config"][key] for r in stopped],
                    [r["metrics"][metric] for r in stopped],
                    s=40,
                    facecolors="none",
                    edgecolors=STOPPED_COLOUR,
                    zorder=2,
                    label="stopped early (last value)" if stopped else None,
                )
                if log:
                    from matplotlib.ticker import NullFormatter

                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short decade
            else:
                ax.set_xticks(
                    [p for p, _ in categories],
                    [lbl for _, lbl in categories],
                    rotation=30 if max((len(lbl) for _, lbl in categories), default=0) > 8 else 0,
                    ha="right" if max((len(lbl) for _, lbl in categories), default=0) > 8 else "center",
                )
                ax.set_xlim(-0.6, len(categories) - 0.4)
            n = sum(g.n for g in mine)
            ax.set_title(f"{mode} (n={n})", color=colour)
            ax.set_xlabel(key + (" (log scale)" if numeric and log else ""))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"final {metric}")
        handles, labels = [], []
        for ax in axes[0]:
            for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
                if lbl not in labels:
                    handles.append(h)
                    labels.append(lbl)
        if handles:
            axes[0][-1].legend(handles, labels, loc="best")
        fig.suptitle(f"Effect of {key} on {metric}")
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        plt.close(fig)
    return out


def plot_sensitivity(sens: dict[str, dict[str, float | None]], metric: str, out: Path) -> Path:
    """Grouped horizontal bars: per hyperparameter, each mode's best-to-worst gap of mean metric."""
    plt = _pyplot()
    keys = list(sens)
    modes = [m for m in MODE_ORDER if any(m in v for v in sens.values())]
    modes += sorted({m for v in sens.values() for m in v} - set(modes))
    height = 0.8 / max(1, len(modes))
    with plt.rc_context(FONT):
        fig, ax = plt.subplots(figsize=(9, max(3.2, 0.9 + 0.75 * len(keys) * max(1, len(modes)) ** 0.5)))
        top = max((v for by in sens.values() for v in by.values() if v is not None), default=0.0)
        for j, mode in enumerate(modes):
            ys = [i + (j - (len(modes) - 1) / 2) * height for i in range(len(keys))]
            gaps = [sens[k].get(mode) for k in keys]
            ax.barh(ys, [g or 0.0 for g in gaps], height=height * 0.9, color=MODE_COLOURS.get(mode, "C4"), label=mode)
            for y, g in zip(ys, gaps, strict=True):
                ax.text((g or 0.0) + top * 0.01, y, "n/a" if g is None else f"{g:.3f}", va="center", fontsize=10)
        ax.set_yticks(range(len(keys)), keys)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.2 if top > 0 else 1)
        ax.set_xlabel(f"best − worst mean {metric} across the key's values")
        ax.set_ylabel("hyperparameter")
        ax.set_title(f"How much each hyperparameter moves {metric}, by mode")
        ax.grid(axis="x", alpha=0.3)
        if modes:
            ax.legend(title="mode", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        plt.close(fig)
    return out
