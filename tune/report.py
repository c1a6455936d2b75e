"""The robustness report: how much does the result move when hyperparameters move?

Reads an experiment's ``trials.json`` and writes ``report/report.md``, ``report/report.html`` and PNG plots:

- ``distribution.png``: for each mode, the final metric of every trial (box + points) — the spread a user should
  expect from this search space; the table gives min / median / max / mean / std and the best-to-worst gap;
- ``effect_<key>.png``: one per searched hyperparameter, the metric against the key's value, one panel per mode side
  by side (shared y axis), with the mean ± std of each value (continuous keys are cut into quartile bins);
- ``sensitivity.png``: for each hyperparameter and mode, the gap between its best and worst mean — which knobs
  matter, and whether e.g. LoRA is less sensitive to the learning rate than full fine-tuning.

Statistics use the trials that trained to the end (``FINISHED``). Trials ASHA stopped early appear in the plots as
hollow grey markers at the last value they reported (an earlier step, so not comparable) and are counted, not
averaged. No Ray here; matplotlib only (Agg backend), MLflow only in :func:`log_report`.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Group",
    "ReportFiles",
    "effect_groups",
    "load_trials",
    "log_report",
    "mode_stats",
    "sensitivity",
    "write_report",
]

MODE_ORDER = ("frozen", "lora", "full")
MODE_COLOURS = {"frozen": "#1f77b4", "lora": "#2ca02c", "full": "#d62728"}
STOPPED_COLOUR = "#9a9a9a"
MAX_DISTINCT = 8
"""Numeric keys with more distinct values than this are cut into quartile bins for the mean ± std."""
FONT = {
    "font.size": 12,
    "axes.titlesize": 14,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 10,
    "figure.titlesize": 15,
}


@dataclass
class ReportFiles:
    directory: Path
    markdown: Path
    html: Path
    plots: list[Path]


@dataclass
class Group:
    """The finished trials sharing one value (or one bin of values) of a hyperparameter, in one mode."""

    label: str
    position: float
    """x of the group: the value, the mean value of a bin (geometric on log keys), or the category's index."""
    metrics: list[float]
    values: list[Any]

    @property
    def n(self) -> int:
        return len(self.metrics)

    @property
    def mean(self) -> float:
        return float(np.mean(self.metrics))

    @property
    def std(self) -> float:
        return float(np.std(self.metrics, ddof=1)) if self.n > 1 else 0.0


# --------------------------------------------------------------------------------------------------------------
# numbers


def load_trials(experiment: str | Path) -> dict[str, Any]:
    """An experiment directory's (or a path to a) ``trials.json``."""
    path = Path(experiment)
    path = path / "trials.json" if path.is_dir() else path
    if not path.is_file():
        from protpeft.errors import ProtpeftError

        raise ProtpeftError(f"{path}: no trials.json (run the search first: protpeft tune TUNE.yaml)")
    return json.loads(path.read_text())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _modes(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["mode"] for r in rows}
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def _scored(rows: list[dict[str, Any]], metric: str, state: str = "FINISHED") -> list[dict[str, Any]]:
    return [r for r in rows if r["state"] == state and _is_number(r["metrics"].get(metric))]


def mode_stats(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per mode, over its finished trials: n, min, median, max, mean, std (sample), gap (max − min), and how many
    trials were stopped early or failed."""
    out = []
    for mode in _modes(rows):
        mine = [r for r in rows if r["mode"] == mode]
        values = np.array([r["metrics"][metric] for r in _scored(mine, metric)], dtype=float)
        stats: dict[str, Any] = {
            "mode": mode,
            "n": len(values),
            "stopped": sum(r["state"] == "STOPPED" for r in mine),
            "failed": sum(r["state"] == "FAILED" for r in mine),
        }
        if len(values):
            stats.update(
                min=float(values.min()),
                median=float(np.median(values)),
                max=float(values.max()),
                mean=float(values.mean()),
                std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                gap=float(values.max() - values.min()),
            )
        out.append(stats)
    return out


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v) for v in value) if value else "[]"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _numeric(values: list[Any]) -> bool:
    return bool(values) and all(_is_number(v) for v in values)


def effect_groups(rows: list[dict[str, Any]], key: str, metric: str, log: bool = False) -> dict[str, list[Group]]:
    """Per mode, the finished trials grouped by ``key``'s value: by value for categories and numeric keys with few
    distinct values, else by quartile bins of the values over the whole search (log-spaced keys binned on log)."""
    scored = [r for r in _scored(rows, metric) if key in r["config"]]
    all_values = [r["config"][key] for r in scored]
    numeric = _numeric(all_values)
    distinct = sorted({json.dumps(v, sort_keys=True) for v in all_values})
    binned = numeric and len(distinct) > MAX_DISTINCT
    edges: np.ndarray | None = None
    if binned:
        scale = np.log10(np.array(all_values, dtype=float)) if log else np.array(all_values, dtype=float)
        edges = np.unique(np.quantile(scale, [0, 0.25, 0.5, 0.75, 1.0]))
    categories = {
        d: i for i, d in enumerate(sorted(distinct, key=lambda d: (not numeric, json.loads(d) if numeric else d)))
    }
    out: dict[str, list[Group]] = {}
    for mode in _modes(scored):
        groups: dict[str, Group] = {}
        for r in (r for r in scored if r["mode"] == mode):
            value = r["config"][key]
            if binned and edges is not None:
                x = math.log10(value) if log else float(value)
                i = min(int(np.searchsorted(edges, x, side="right")) - 1, len(edges) - 2)
                lo, hi = (10 ** edges[i], 10 ** edges[i + 1]) if log else (edges[i], edges[i + 1])
                ident, label = f"bin{i}", f"{lo:.3g}–{hi:.3g}"
            else:
                ident, label = json.dumps(value, sort_keys=True), _label(value)
            group = groups.setdefault(ident, Group(label, 0.0, [], []))
            group.metrics.append(float(r["metrics"][metric]))
            group.values.append(value)
        for ident, group in groups.items():
            if binned:
                vals = np.array(group.values, dtype=float)
                group.position = float(10 ** np.mean(np.log10(vals))) if log else float(vals.mean())
            elif numeric:
                group.position = float(group.values[0])
            else:
                group.position = float(categories[ident])
        out[mode] = sorted(groups.values(), key=lambda g: g.position)
    return out


def sensitivity(effects: dict[str, dict[str, list[Group]]]) -> dict[str, dict[str, float | None]]:
    """key → mode → best-to-worst gap of the group means (None where the mode saw fewer than two values)."""
    return {
        key: {
            mode: (max(g.mean for g in groups) - min(g.mean for g in groups)) if len(groups) > 1 else None
            for mode, groups in by_mode.items()
        }
        for key, by_mode in effects.items()
    }


# --------------------------------------------------------------------------------------------------------------
# plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def plot_distribution(rows: list[dict[str, Any]], metric: str, out: Path) -> Path:
    """Box + points of the final metric per mode; stopped trials as hollow grey markers."""
    plt = _pyplot()
    modes = _modes(rows)
    rng = np.random.default_rng(0)
    with plt.rc_context(FONT):
        fig, ax = plt.subplots(figsize=(max(5.5, 2.2 * len(modes) + 2), 4.8))
        finished = [[r["metrics"][metric] for r in _scored(rows, metric) if r["mode"] == m] for m in modes]
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
            stopped = [r["metrics"][metric] for r in _scored(rows, metric, "STOPPED") if r["mode"] == mode]
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
    modes = list(groups) or _modes(rows)
    numeric = _numeric([r["config"].get(key) for r in _scored(rows, metric) if key in r["config"]])
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
                stopped = [r for r in _scored(rows, metric, "STOPPED") if r["mode"] == mode and key in r["config"]]
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


# --------------------------------------------------------------------------------------------------------------
# documents: a list of blocks rendered to Markdown and to HTML


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return _label(value)
    return str(value)


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(out) + "\n"


def _html(title: str, blocks: list[tuple]) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
    ]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in block[2]
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            parts.append(f"<p><img src='{html.escape(block[1])}' alt='{html.escape(block[2])}'></p>")
    return "".join(parts) + "</body></html>\n"


STATS_HEADERS = ["mode", "finished", "min", "median", "max", "mean", "std", "best − worst", "stopped", "failed"]


def write_report(experiment: str | Path, out: str | Path | None = None) -> ReportFiles:
    """Write the robustness report of an experiment (directory or trials.json) into ``out`` (default
    ``<experiment>/report``): report.md, report.html and the PNG plots they show."""
    data = load_trials(experiment)
    exp_dir = Path(experiment) if Path(experiment).is_dir() else Path(experiment).parent
    out_dir = Path(out) if out is not None else exp_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, metric, direction = data["trials"], data["metric"], data.get("mode", "max")
    keys = [k for k in data["space"] if k != "mode"]
    log_keys = set(data.get("log_scale", []))
    counts = {s: sum(r["state"] == s for r in rows) for s in ("FINISHED", "STOPPED", "FAILED")}
    unfinished = len(rows) - sum(counts.values())
    best = next((r for r in rows if r["trial_id"] == data.get("best_trial_id")), None)

    # -- numbers
    stats = mode_stats(rows, metric)
    effects = {k: effect_groups(rows, k, metric, k in log_keys) for k in keys}
    sens = sensitivity(effects)

    # -- plots
    plots = [plot_distribution(rows, metric, out_dir / "distribution.png")]
    effect_files = {}
    for key in keys:
        effect_files[key] = plot_effect(
            rows, key, metric, effects[key], key in log_keys, out_dir / f"effect_{_slug(key)}.png"
        )
        plots.append(effect_files[key])
    if keys:
        plots.append(plot_sensitivity(sens, metric, out_dir / "sensitivity.png"))

    # -- document
    title = f"Robustness report: {data['experiment']}"
    blocks: list[tuple] = [("h", 1, title)]
    blocks.append(
        (
            "p",
            f"Search: {data.get('algorithm')} over {', '.join(data['space'])}; metric {metric} "
            f"({direction}); ASHA {'on' if data.get('asha') else 'off'}. Trials: {len(rows)} — "
            f"{counts['FINISHED']} finished, {counts['STOPPED']} stopped early by ASHA, "
            f"{counts['FAILED']} failed, {unfinished} unfinished.",
        )
    )
    blocks.append(
        (
            "p",
            "Statistics use the finished trials only. Trials stopped early appear in the plots as "
            "hollow grey markers at the last value they reported (an earlier step).",
        )
    )
    if best is not None:
        registered = f"; registered as {data['registered']}" if data.get("registered") else ""
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in best["config"].items())
        blocks.append(
            (
                "p",
                f"Best trial: {best['trial_id']} ({best['mode']}), {metric} "
                f"{_fmt(best['metrics'][metric])}, with {values}; run directory {best['run_dir']}"
                f"{registered}.",
            )
        )
    blocks += [
        ("h", 2, f"Final {metric} by mode"),
        (
            "table",
            STATS_HEADERS,
            [
                [
                    s["mode"],
                    s["n"],
                    s.get("min"),
                    s.get("median"),
                    s.get("max"),
                    s.get("mean"),
                    s.get("std"),
                    s.get("gap"),
                    s["stopped"],
                    s["failed"],
                ]
                for s in stats
            ],
        ),
        ("img", "distribution.png", f"final {metric} by mode"),
    ]
    if keys:
        blocks.append(("h", 2, "Effect of each hyperparameter"))
        for key in keys:
            table = [
                [mode, g.label, g.n, g.mean, g.std, min(g.metrics), max(g.metrics)]
                for mode, groups in effects[key].items()
                for g in groups
            ]
            blocks += [
                ("h", 3, key),
                ("table", ["mode", "value", "trials", "mean", "std", "min", "max"], table),
                ("img", effect_files[key].name, f"effect of {key} on {metric}"),
            ]
        modes = [s["mode"] for s in stats]
        blocks += [
            ("h", 2, "Sensitivity by mode"),
            (
                "p",
                f"Best − worst mean {metric} across each hyperparameter's values (— where a mode saw fewer "
                "than two values).",
            ),
            ("table", ["hyperparameter", *modes], [[k, *(sens[k].get(m) for m in modes)] for k in keys]),
            ("img", "sensitivity.png", "sensitivity by mode"),
        ]
    metric_cols = sorted({k for r in rows for k in r["metrics"]} & {metric, metric.replace("val_", "test_", 1)})
    blocks += [
        ("h", 2, "All trials"),
        (
            "table",
            ["trial", "state", "mode", *keys, "steps", *metric_cols],
            [
                [
                    r["trial_id"],
                    r["state"],
                    r["mode"],
                    *(_label(r["config"].get(k)) for k in keys),
                    r["steps"],
                    *(r["metrics"].get(c) for c in metric_cols),
                ]
                for r in rows
            ],
        ),
    ]
    markdown = out_dir / "report.md"
    markdown.write_text(_markdown(blocks))
    page = out_dir / "report.html"
    page.write_text(_html(title, blocks))
    return ReportFiles(out_dir, markdown, page, plots)


def log_report(files: ReportFiles, tracking_uri: str, parent_run_id: str) -> None:
    """Upload the report directory to the experiment's parent MLflow run (artefact path ``report/``)."""
    from protpeft.registry import store

    store.client(tracking_uri).log_artifacts(parent_run_id, str(files.directory), "report")
