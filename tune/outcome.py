"""After ``Tuner.fit`` (a complete or an interrupted session): the trials' rows in ``trials.json``, every finished
trial's run directory in the experiment directory, the MLflow end states, the best trial's registration and the
report (:func:`finish_search`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protpeft.trainer.run_summary import best_row
from protpeft.tune.driver import TRIAL_TAG, train_run_name, trial_run_dir
from protpeft.tune.experiment_files import ATTEMPTS_FILE, TRIALS_FILE, ExperimentFiles
from protpeft.tune.ledger import FAILED, FINISHED, INTERRUPTED, PENDING, STOPPED, collect_trials
from protpeft.tune.space import SearchSpec

__all__ = ["ExperimentResult", "bring_home", "finish_search"]


@dataclass
class ExperimentResult:
    experiment_dir: Path
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool
    metric: str
    """The metric the search ranked trials by."""
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    registered: str | None = None
    """``name/version`` of the registered best trial."""
    report: Path | None = None
    """The Markdown report (None while the experiment is unfinished)."""
    counts: dict[str, int] = field(default_factory=dict)
    storage: str | None = None
    """The storage the experiment is kept in (``tune --resume EXPERIMENT --storage STORAGE``), if any."""

    @property
    def trials_file(self) -> Path:
        return self.experiment_dir / TRIALS_FILE


def bring_home(rows: list[dict[str, Any]], files: ExperimentFiles) -> None:
    """Every finished trial's run directory is ``trials/trial-<id>`` of this experiment directory: one that is not
    here (the trial finished in an earlier session, on another machine or before this directory was lost) is pulled
    from its artefact in the trials' storage. Sets each finished row's ``run_dir``."""
    from protpeft.artifact import ARTIFACT_FILE
    from protpeft.trainer.ray_run_store import pull_run

    for row in rows:
        if row["state"] != FINISHED:
            continue
        run_dir = trial_run_dir(files.local, row["trial_id"])
        if not (run_dir / ARTIFACT_FILE).is_file():
            pull_run(files.train_storage(), train_run_name(row["trial_id"]), run_dir)
        row["run_dir"] = str(run_dir)


def _close_runs(rows: list[dict[str, Any]], uri: str, parent_run_id: str, metric: str, best, interrupted: bool):
    """Give every child run its trial's end (a trial stopped by ASHA or an interruption was killed before it could
    say so) and its id in the row; record the best trial on the parent run."""
    from protpeft.registry import store

    client = store.client(uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    by_trial = {run.data.tags.get(TRIAL_TAG): run for run in children}
    status = {STOPPED: "KILLED", INTERRUPTED: "KILLED", FAILED: "FAILED"}
    for row in rows:
        run = by_trial.get(row["trial_id"])
        if run is None:
            continue
        row["mlflow_run_id"] = run.info.run_id
        client.set_tag(run.info.run_id, "protpeft.tune.state", row["state"])
        if row["state"] in status and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status[row["state"]])
    counts = {s: sum(r["state"] == s for r in rows) for s in (FINISHED, STOPPED, FAILED, PENDING, INTERRUPTED)}
    for state, n in counts.items():
        client.log_metric(parent_run_id, f"trials_{state.lower()}", n)
    if best is not None:
        client.set_tag(parent_run_id, "best_trial_id", best["trial_id"])
        client.log_metric(parent_run_id, f"best_{metric}", best["metrics"][metric])
    client.set_terminated(parent_run_id, "KILLED" if interrupted else "FINISHED")


def finish_search(
    files: ExperimentFiles,
    search: SearchSpec,
    uri: str | None,
    parent: str | None,
    *,
    register_best: str | None = None,
    alias: str | None = None,
    report: bool = True,
) -> ExperimentResult:
    """After ``Tuner.fit``: trials.json (copied to the experiment's storage with attempts.jsonl), the finished
    trials' run directories here, MLflow end states, the best trial's registration, the report."""
    exp_dir, settings = files.local, search.spec.search
    rows = collect_trials(exp_dir, search)
    interrupted = any(r["state"] in (PENDING, INTERRUPTED) for r in rows) or len(rows) == 0
    bring_home(rows, files)
    best = best_row(rows, settings.metric, settings.mode)
    if uri is not None and parent is not None:
        _close_runs(rows, uri, parent, settings.metric, best, interrupted)
    registered = None
    if register_best and best is not None and not interrupted:
        from protpeft.registry import register_run

        version = register_run(
            best["run_dir"], register_best, alias, mlflow_run_id=best["mlflow_run_id"], tracking_uri=uri
        )
        registered = f"{version.name}/{version.version}"
    counts = {s: sum(r["state"] == s for r in rows) for s in (FINISHED, STOPPED, FAILED, PENDING, INTERRUPTED)}
    files.write(
        TRIALS_FILE,
        {
            "experiment": search.name,
            "experiment_dir": str(exp_dir),
            "storage": files.where if files.storage is not None else None,
            "metric": settings.metric,
            "mode": settings.mode,
            "algorithm": settings.algorithm,
            "asha": search.spec.asha.enabled,
            "space": {k: d.model_dump(exclude_none=True) for k, d in search.spec.space.items()},
            "log_scale": [k for k, d in search.spec.space.items() if d.log_scale()],
            "parent_run_id": parent,
            "tracking_uri": uri,
            "interrupted": interrupted,
            "counts": counts,
            "best_trial_id": best["trial_id"] if best else None,
            "registered": registered,
            "trials": rows,
        },
    )
    files.upload(ATTEMPTS_FILE)
    report_path = None
    if report and not interrupted:
        from protpeft.tune.report import log_report, write_report

        written = write_report(exp_dir)
        report_path = written.markdown
        if uri is not None and parent is not None:
            log_report(written, uri, parent)
    storage = (search.base.get("engine") or {}).get("storage")
    return ExperimentResult(
        exp_dir, rows, best, interrupted, settings.metric, parent_run_id=parent, tracking_uri=uri,
        registered=registered, report=report_path, counts=counts, storage=storage,
    )  # fmt: skip
