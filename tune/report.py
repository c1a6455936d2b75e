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
averaged. The numbers are :mod:`protpeft.tune.stats`, the plots :mod:`protpeft.tune.plots`; no Ray here, MLflow only in
:func:`log_report`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protpeft.tune.plots import plot_distribution, plot_effect, plot_sensitivity, slug
from protpeft.tune.stats import Group, effect_groups, load_trials, mode_stats, sensitivity, value_label

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


@dataclass
class ReportFiles:
    directory: Path
    markdown: Path
    html: Path
    plots: list[Path]


# --------------------------------------------------------------------------------------------------------------
# documents: a list of blocks rendered to Markdown and to HTML


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return value_label(value)
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
            rows, key, metric, effects[key], key in log_keys, out_dir / f"effect_{slug(key)}.png"
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
                    *(value_label(r["config"].get(k)) for k in keys),
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
