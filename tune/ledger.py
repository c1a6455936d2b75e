"""How the trials of an experiment ended, from files in the experiment directory: the ledger a Tune callback keeps
(:class:`TrialLedger`), the driver's ``attempts.jsonl``, and the rows of ``trials.json`` built from them
(:func:`collect_trials`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback

from protpeft.tune.experiment_files import ATTEMPTS_FILE, ENDS_FILE, SNAPSHOT_FILE, ExperimentFiles, read_json
from protpeft.tune.space import SearchSpec

__all__ = [
    "FAILED",
    "FINISHED",
    "INTERRUPTED",
    "PENDING",
    "STOPPED",
    "TrialLedger",
    "collect_trials",
]

FINISHED, STOPPED, FAILED, PENDING, INTERRUPTED = "FINISHED", "STOPPED", "FAILED", "PENDING", "INTERRUPTED"
"""Trial states in trials.json: trained to the end; stopped early by ASHA; failed; not started; cut off by an
interruption (resumed by ``--resume``)."""


class TrialLedger(Callback):
    """Records in the experiment directory how each trial ended and, at the end of a (possibly interrupted) run,
    a snapshot of every trial. Tune reports the trials an interruption cut off as TERMINATED, like finished ones;
    only ``on_trial_complete`` (which an interruption does not call) tells them apart. Files, not attributes: on
    resume Tune restores this callback from its own pickle (the resuming experiment points ``files`` at its own
    directory). Each file is copied to the experiment's storage as it is written."""

    def __init__(self, files: ExperimentFiles) -> None:
        self.files = files

    def _end(self, trial, how: str) -> None:
        ends = read_json(self.files.local / ENDS_FILE, {})
        ends[trial.trial_id] = how
        self.files.write(ENDS_FILE, ends)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "complete")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "error")

    def on_experiment_end(self, trials: list, **info) -> None:
        from protpeft.trainer.ray_launch import root_cause

        snapshot = []
        for trial in trials:
            error = trial.get_error() if trial.status == "ERROR" else None
            snapshot.append(
                {
                    "trial_id": trial.trial_id,
                    "status": trial.status,
                    "config": dict(trial.config),
                    "last_result": dict(trial.last_result or {}),
                    "error": root_cause(error) if error is not None else None,
                }
            )
        self.files.write(SNAPSHOT_FILE, snapshot)


def _state(status: str, end: str | None, last: dict[str, Any]) -> str:
    if end == "error" or status == "ERROR":
        return FAILED
    if "run_dir" in last:  # only the report after a complete run carries it
        return FINISHED
    if end == "complete":
        return STOPPED
    return PENDING if status == "PENDING" and not last else INTERRUPTED


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def collect_trials(experiment_dir: Path, search: SearchSpec) -> list[dict[str, Any]]:
    """One row per trial: ``trial_id``, ``state``, ``mode``, ``config`` (the searched keys' values), ``metrics``
    (final val + test for finished trials, the last reported val for the others), ``steps``,
    ``embedded_sequences``, ``prefix_forwards``, ``run_dir``, ``mlflow_run_id``, ``seconds``, ``trainable_params``,
    ``attempts``, ``error``."""
    ends = read_json(experiment_dir / ENDS_FILE, {})
    attempts: dict[str, int] = {}
    attempts_file = experiment_dir / ATTEMPTS_FILE
    if attempts_file.is_file():
        for line in attempts_file.read_text().splitlines():
            if line.strip():
                tid = json.loads(line)["trial_id"]
                attempts[tid] = attempts.get(tid, 0) + 1
    rows = []
    for snap in sorted(read_json(experiment_dir / SNAPSHOT_FILE, []), key=lambda s: s["trial_id"]):
        last, tid = snap["last_result"], snap["trial_id"]
        values = search.decode(snap["config"])
        state = _state(snap["status"], ends.get(tid), last)
        rows.append(
            {
                "trial_id": tid,
                "state": state,
                "mode": search.trial_config(values).mode,
                "config": values,
                "metrics": {k: v for k, v in sorted(last.items()) if k.startswith(("val_", "test_")) and _number(v)},
                "steps": last.get("step"),
                "embedded_sequences": last.get("embedded_sequences"),
                "prefix_forwards": last.get("prefix_forwards"),
                "run_dir": last.get("run_dir"),
                "mlflow_run_id": last.get("mlflow_run_id"),
                "seconds": last.get("seconds"),
                "trainable_params": last.get("trainable_params"),
                "attempts": attempts.get(tid, 0),
                "error": snap.get("error"),
            }
        )
    return rows
