"""``run-many``: several training runs launched on the cluster at once, each with its own resources.

JOBS.yaml is one of::

    # a list of jobs (or a mapping with `jobs:` plus defaults for all of them)
    output: runs/compare            # where summary.json / summary.md go (default: the first job's output_dir)
    set: [optim.max_steps=200]      # overrides for every job, before each job's own
    resources: {CPU: 1}             # per-worker resources for every job, unless a job says otherwise
    jobs:
      - {name: ppi-lora, config: configs/paper/ppi_lora.yaml, set: [optim.lr=3e-4], resources: {GPU: 0.25}}
      - {name: ppi-frozen, config: configs/paper/ppi_frozen.yaml}

    # or a base config times a grid of overrides (every combination is a job)
    base: configs/paper/ppi_lora.yaml
    grid: {mode: [lora, frozen, full], optim.lr: [1.0e-3, 3.0e-4]}
    set: [...]
    resources: {CPU: 1, GPU: 0.25}

``resources`` are per training worker: ``CPU`` and ``GPU`` become ``engine.cpus_per_worker`` and
``engine.gpus_per_worker`` (fractions pack several jobs on one GPU); ``engine.workers`` comes from the config or
``set``. Without ``CPU`` (``engine.cpus_per_worker: auto``) the cluster's CPUs are shared by all jobs' workers, at
least 1 each. Config paths are relative to the current directory, as for ``protpeft train``.

Storage: ``--storage`` (a directory every training node shares, or ``s3://BUCKET/PREFIX``) becomes every job's
``engine.storage``; without it each job keeps its own (default ``<output_dir>/ray_results``). Each job's Ray Train
run is ``<storage>/<job name>``. Every distinct storage is parsed in this process (an object store's filesystem
carries the credentials read here) and checked once before any job starts — reachable and writable, and on a
cluster of several nodes shared by all of them — so a bad setting is one line, not a failure per job.

Every job's driver is a Ray task (no resources of its own) that runs ``launch_training``; its TorchTrainer asks the
cluster for the job's workers, so what does not fit waits in Ray's queue. The live table shows each job's state
(set by its driver in a small actor) and its progress, read from its run directory's ``metrics.jsonl``
(:mod:`protpeft.progress`: step / total, loss, last validation metric, ETA). A failing job is recorded as FAILED with
its error on one line; the others carry on.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protpeft.config import RunConfig, load_config, read_yaml_mapping, worker_resource_values
from protpeft.errors import ConfigError
from protpeft.progress import METRICS_FILE, RunProgress, planned_steps
from protpeft.trainer.storage import RunStorage

__all__ = ["Job", "load_jobs", "run_many"]

TERMINAL = ("FINISHED", "FAILED")


@dataclass
class Job:
    name: str
    cfg: RunConfig
    resources: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# JOBS.yaml


def _overrides_of(entry: dict[str, Any], where: str) -> list[str]:
    items = entry.get("set") or []
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{where}: 'set' must be a list of key=value strings")
    return list(items)


def _resource_values(resources: Any, where: str) -> dict[str, float]:
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}: 'resources' must be a mapping like {{CPU: 1, GPU: 0.25}}")
    try:
        return worker_resource_values(resources)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(value))


def _grid_jobs(spec: dict[str, Any], where: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(job entry, its grid values) for every combination of the grid."""
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{where}: 'grid' must map config keys to non-empty lists of values")
    base_name = RunConfig.model_fields["name"].default
    if spec.get("base"):  # the name only: the base is validated once, with each job's values
        base_name = read_yaml_mapping(spec["base"], "config", "a config must be a mapping of sections")[0].get(
            "name", base_name
        )
    jobs = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        suffix = "-".join(f"{key.split('.')[-1]}={_slug(value)}" for key, value in values.items())
        jobs.append(({"name": f"{base_name}-{suffix}" if suffix else base_name, "config": spec.get("base")}, values))
    return jobs


def load_jobs(spec: str | Path | dict | list, forced: dict[str, Any] | None = None) -> tuple[list[Job], Path]:
    """Parse and validate a JOBS spec (a YAML path or its loaded content) → (jobs, output directory).

    Each job's config is built once: its YAML, the spec's and the job's ``set`` strings, then its grid values,
    resources and name as typed values, then ``forced`` (dotted keys the command line sets for every job, e.g.
    ``{"engine.storage": ...}``), validated together.

    Raises:
        ConfigError: unreadable file, unknown keys, invalid job configs (named by job), or duplicate job names.
    """
    where = "<jobs>"
    if isinstance(spec, str | Path):
        where = str(spec)
        try:
            spec = yaml.safe_load(Path(spec).read_text())
        except OSError as err:
            raise ConfigError(f"{where}: cannot read the jobs file ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: invalid YAML ({err})") from None
    if isinstance(spec, list):
        spec = {"jobs": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a list of jobs or a mapping with 'jobs' or 'base' + 'grid'")
    unknown = sorted(set(spec) - {"jobs", "base", "grid", "set", "resources", "output"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}")
    if "jobs" in spec and "base" in spec:
        raise ConfigError(f"{where}: give either 'jobs' or 'base' + 'grid', not both")
    listed = spec.get("jobs")
    if "jobs" in spec and isinstance(listed, list):
        entries = [(entry, {}) for entry in listed]
    else:
        entries = listed if "jobs" in spec else _grid_jobs(spec, where)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: no jobs")
    common_set = _overrides_of(spec, where)
    jobs: list[Job] = []
    for i, (entry, grid_values) in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: job {i} must be a mapping with name, config, set, resources")
        bad = sorted(set(entry) - {"name", "config", "set", "resources"})
        if bad:
            raise ConfigError(f"{where}: job {entry.get('name', i)}: unknown keys {bad}")
        label = f"{where}: job {entry.get('name', i)}"
        resources = entry.get("resources", spec.get("resources"))
        values = {**grid_values, **_resource_values(resources, label), **(forced or {})}
        if entry.get("name"):
            values["name"] = str(entry["name"])
        try:
            cfg = load_config(entry.get("config"), common_set + _overrides_of(entry, label), values)
        except ConfigError as err:
            raise ConfigError(f"{label}: {err}") from None
        jobs.append(Job(cfg.name, cfg, dict(resources or {})))
    names = [job.name for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: job names must be unique (they name the run directories): {duplicates}")
    output = Path(spec["output"]) if spec.get("output") else jobs[0].cfg.output_dir
    return jobs, output


# --------------------------------------------------------------------------------------------------------------
# progress: each job's state from its driver (a small actor), its steps and metrics from its metrics.jsonl


class ProgressBoard:
    """The latest state of every job, set by the job drivers (a Ray actor with no resources)."""

    def __init__(self, names: list[str]) -> None:
        self.states = dict.fromkeys(names, "PENDING")

    def update(self, name: str, state: str) -> None:
        if self.states[name] not in TERMINAL:  # a late message never reopens an ended job
            self.states[name] = state

    def snapshot(self) -> dict[str, str]:
        return dict(self.states)


def _drive_job(cfg: RunConfig, name: str, board: Any, run: Any, storage: RunStorage) -> dict[str, Any]:
    """One job's driver (a Ray task): launch its training inside its tracked run (``run``: a
    :class:`~protpeft.registry.run_lifecycle.TrackedRun`, or None) on ``storage`` (checked by the launching
    process) and report its end state; never raises."""
    from protpeft.trainer.ray_launch import launch_training, root_cause

    board.update.remote(name, "STARTING")
    try:
        with _tracked(cfg, run) as tracked:
            summary = launch_training(
                cfg, logger_factory=tracked.logger_factory, storage_path=storage, storage_checked=True
            )
        summary.update(state="FINISHED", error=None)
    except Exception as err:  # one failing job must not stop the others
        summary = {"state": "FAILED", "error": root_cause(err.__cause__ or err), "run_dir": str(cfg.run_dir)}
    board.update.remote(name, summary["state"])
    summary["mlflow_run_id"] = getattr(run, "run_id", None)
    return summary


def _tracked(cfg: RunConfig, run: Any):
    """The job's tracked run around its training (FAILED if training raises); a stand-in without tracking."""
    if run is None:
        from contextlib import nullcontext
        from types import SimpleNamespace

        return nullcontext(SimpleNamespace(logger_factory=None))
    from protpeft.registry.run_lifecycle import tracked_run

    return tracked_run(cfg, run=run)


def _progress_table(jobs: list[Job], states: dict[str, str], progress: dict[str, RunProgress], elapsed: float):
    """The live view: per job its state, step / total, last training loss, last validation metric and ETA."""
    from rich.table import Table

    colours = {"FINISHED": "green", "FAILED": "red", "RUNNING": "cyan", "STARTING": "yellow", "PENDING": "dim"}
    metrics = {p.metric for p in progress.values()}
    val_header = metrics.pop() if len(metrics) == 1 else "val metric"
    table = Table(title=f"run-many — {elapsed:.0f}s")
    for column in ("job", "mode", "state", "step", "loss", val_header, "ETA"):
        table.add_column(column, justify="left" if column in ("job", "mode", "state") else "right")
    for job in jobs:
        state, cells = states[job.name], progress[job.name].cells()
        if state == "STARTING" and progress[job.name].records:
            state = "RUNNING"
        table.add_row(
            job.name,
            job.cfg.mode,
            f"[{colours.get(state, 'white')}]{state}[/]",
            cells["step"],
            cells["loss"],
            cells["val"],
            cells["eta"] if state == "RUNNING" else "",
        )
    return table


def checked_storages(cfgs: list[RunConfig]) -> list[RunStorage]:
    """Each config's storage parsed here, and every distinct location checked once (:meth:`RunStorage.check`),
    before Ray starts: one list entry per config, jobs on the same location sharing one object.

    Raises:
        StorageError: the first unusable location, in one line saying what to pass.
    """
    from protpeft.trainer.ray_run_store import run_storage

    distinct: dict[str, RunStorage] = {}
    storages = [distinct.setdefault(s.uri, s) for s in map(run_storage, cfgs)]
    for storage in distinct.values():
        storage.check()
    return storages


# --------------------------------------------------------------------------------------------------------------
# run-many


def run_many(
    jobs_file_or_spec: str | Path | dict | list,
    *,
    address: str | None = None,
    tracking: Callable[[RunConfig], Any] | None = None,
    output: str | Path | None = None,
    storage: str | None = None,
    console: Any = None,
    refresh_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Launch every job at once, show a live table until all end, write and return the summary rows.

    Args:
        jobs_file_or_spec: JOBS.yaml path, or its content as a list / mapping.
        address: cluster to join (default ``$RAY_ADDRESS``, else a new local instance).
        tracking: ``cfg -> TrackedRun`` (or None) for each job: its MLflow run, created here
            (:func:`protpeft.registry.run_lifecycle.start`).
        output: where ``summary.json`` and ``summary.md`` go (default: the spec's ``output``).
        storage: every job's ``engine.storage`` (``--storage``: a directory or ``s3://bucket/prefix``); each job's
            run is ``<storage>/<job name>``.
        console: a Rich console for the tables (default stdout).

    Raises:
        ConfigError: an invalid JOBS spec or DeepSpeed JSON. StorageError: a storage unusable as given. Both before
        any job starts.
    """
    import ray
    from rich.console import Console
    from rich.live import Live
    from rich.markup import escape

    from protpeft.trainer.cluster_checks import check_storage_shared, other_training_nodes
    from protpeft.trainer.ray_cluster import connect
    from protpeft.trainer.ray_launch import for_workers, root_cause
    from protpeft.trainer.resources import node_cpus, with_worker_cpus
    from protpeft.trainer.run_summary import summary_rows, summary_table, write_summary

    jobs, default_output = load_jobs(jobs_file_or_spec, {"engine.storage": storage} if storage else None)
    output = Path(output or default_output)
    console = console or Console()
    cfgs = [for_workers(job.cfg) for job in jobs]  # against this directory, not the driver task's
    storages = checked_storages(cfgs)
    connect(address)
    others = other_training_nodes()
    for shared in {s.uri: s for s in storages}.values():
        check_storage_shared(shared, others)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # The job drivers run on this machine's node: they read the user's files and write the run directories here,
    # and their Ray Train controllers (pinned to the driver's node) write the logs and the MLflow store here.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    board = ray.remote(num_cpus=0)(ProgressBoard).remote([job.name for job in jobs])
    driver = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(_drive_job)
    nodes, together = node_cpus(), sum(job.cfg.engine.workers for job in jobs)
    refs, progress = {}, {}
    for job, cfg, job_storage in zip(jobs, cfgs, storages, strict=True):
        cfg = with_worker_cpus(cfg, nodes, together)  # auto: the cluster's CPUs shared by every job's workers
        progress[job.name] = RunProgress(
            cfg.run_dir / METRICS_FILE, total=planned_steps(cfg), metric=cfg.engine.checkpoint_metric
        )
        run = tracking(cfg) if tracking is not None else None
        refs[driver.options(name=f"run-many:{job.name}").remote(cfg, job.name, board, run, job_storage)] = job

    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    pending = list(refs)
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=refresh_s)
            for ref in done:
                job = refs[ref]
                try:
                    results[job.name] = ray.get(ref)
                except Exception as err:  # the driver task itself died
                    results[job.name] = {"state": "FAILED", "error": root_cause(err)}
                    board.update.remote(job.name, "FAILED")
            for tracker in progress.values():
                tracker.poll()
            states = ray.get(board.snapshot.remote())
            states.update({name: result["state"] for name, result in results.items()})
            live.update(_progress_table(jobs, states, progress, time.perf_counter() - started))
    ray.kill(board)
    rows = summary_rows(jobs, results)
    write_summary(rows, output)
    console.print()
    console.print(summary_table(rows))
    for row in rows:
        if row.get("error"):
            console.print(f"[red]{escape(row['job'])}[/]: {escape(row['error'])}", highlight=False, soft_wrap=True)
    console.print(f"summary: {output / 'summary.md'}", highlight=False)
    return rows
