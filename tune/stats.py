"""The numbers of the robustness report, from the rows of an experiment's ``trials.json``: per-mode spread of the final
metric, per-hyperparameter groups (by value, or quartile bins of continuous keys) and each mode's sensitivity.

Statistics use the trials that trained to the end (``FINISHED``); rows stopped early are counted, not averaged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MODE_ORDER",
    "Group",
    "all_numeric",
    "effect_groups",
    "load_trials",
    "mode_stats",
    "modes_present",
    "scored_rows",
    "sensitivity",
    "value_label",
]

MODE_ORDER = ("frozen", "lora", "full")
MAX_DISTINCT = 8
"""Numeric keys with more distinct values than this are cut into quartile bins for the mean ± std."""


@dataclass
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


def modes_present(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["mode"] for r in rows}
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def scored_rows(rows: list[dict[str, Any]], metric: str, state: str = "FINISHED") -> list[dict[str, Any]]:
    return [r for r in rows if r["state"] == state and _is_number(r["metrics"].get(metric))]


def mode_stats(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per mode, over its finished trials: n, min, median, max, mean, std (sample), gap (max − min), and how many
    trials were stopped early or failed."""
    out = []
    for mode in modes_present(rows):
        mine = [r for r in rows if r["mode"] == mode]
        values = np.array([r["metrics"][metric] for r in scored_rows(mine, metric)], dtype=float)
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


def value_label(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v) for v in value) if value else "[]"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def all_numeric(values: list[Any]) -> bool:
    return bool(values) and all(_is_number(v) for v in values)


def effect_groups(rows: list[dict[str, Any]], key: str, metric: str, log: bool = False) -> dict[str, list[Group]]:
    """Per mode, the finished trials grouped by ``key``'s value: by value for categories and numeric keys with few
    distinct values, else by quartile bins of the values over the whole search (log-spaced keys binned on log)."""
    scored = [r for r in scored_rows(rows, metric) if key in r["config"]]
    all_values = [r["config"][key] for r in scored]
    numeric = all_numeric(all_values)
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
    for mode in modes_present(scored):
        groups: dict[str, Group] = {}
        for r in (r for r in scored if r["mode"] == mode):
            value = r["config"][key]
            if binned and edges is not None:
                x = math.log10(value) if log else float(value)
                i = min(int(np.searchsorted(edges, x, side="right")) - 1, len(edges) - 2)
                lo, hi = (10 ** edges[i], 10 ** edges[i + 1]) if log else (edges[i], edges[i + 1])
                ident, label = f"bin{i}", f"{lo:.3g}–{hi:.3g}"
            else:
                ident, label = json.dumps(value, sort_keys=True), value_label(value)
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
