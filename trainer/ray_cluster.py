"""Connecting to Ray, shared by ``train`` (launch), ``run-many`` and ``tune``: which cluster, and a local instance
that takes no more than it should.

Address resolution: the ``address`` argument, else ``$RAY_ADDRESS`` (set inside Ray jobs), else a *new* local
instance (``address="local"``). A bare ``ray.init()`` would attach to whatever cluster ``ray start`` last left on
this machine; protpeft only joins an existing cluster when asked (``--address auto`` or an explicit address).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from pathlib import Path
from typing import Any

__all__ = ["connect", "ray_output", "resolve_address", "train_env"]

LOCAL_OBJECT_STORE_BYTES = 1 << 30
"""A local instance moves configs and small results through the object store, never tensors: 1 GiB is plenty
(Ray's default reserves 30% of the machine's memory)."""

TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
"""Ray Train settings of every run, local or on a cluster, set (unless already set) by
:func:`~protpeft.trainer.ray_launch.build_trainer` in the process that fits the trainer (the driver, or a Tune
trial's actor), from where Ray passes them to the Train controller. The controller drains its workers' reports once
per poll, through a queue of one report per worker: at Ray's default 2 s, a worker waits up to 2 s at each checkpoint
(protpeft waits until Ray has registered it) and at each live log report while the previous one is still queued, so
short steps on a joined cluster were paced by the poll. A poll is one small RPC per worker."""

LOCAL_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one machine: no node can be preempted; saves an actor per run
    # run-many / tune queue jobs that do not fit yet: their worker groups wait for resources, not 60 s then fail
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "86400",
    # Ray starts Python workers `CPUs` at a time (2 here) and warns once 4x that many were started. A run-many job is
    # three processes (driver task, Train controller, worker), two of them without a CPU request, so three jobs on
    # two cores already trip that warning; let a few more start at once instead.
    "RAY_worker_maximum_startup_concurrency": str(max(4, os.cpu_count() or 1)),
}
"""Ray Train settings for a local instance (its processes inherit this environment); a variable already set wins."""


def train_env() -> dict[str, str]:
    """:data:`TRAIN_ENV` set in this process's environment where the user left it unset; returns what is set now."""
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in TRAIN_ENV}


def resolve_address(address: str | None) -> str:
    """``address`` → ``$RAY_ADDRESS`` → ``"local"``."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def ray_output(verbose: bool | None) -> dict[str, Any]:
    """``ray.init`` settings for the console: quiet (False) shows none of Ray's own lines — workers' and actors'
    output stays in the session's log files (``log_to_driver=False``: the Train controller, a line per checkpoint
    report, worker start-up warnings) and the driver logs only Ray's errors; verbose (True) forwards everything and
    logs Ray's INFO; None keeps the earlier default (output forwarded, Ray's warnings). Worker failures reach the
    user either way: ``fit()`` raises them and protpeft prints their root cause on one line."""
    if verbose is None:
        return {"logging_level": logging.WARNING, "log_to_driver": True}
    return {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose}


_PORT_CHOICE = random.SystemRandom()
"""Not the ``random`` module: training seeds it (``seed_everything``), and two processes that trained with the same
seed would then try the same ports in the same order (two test workers did, and took the same port)."""

QUIET_PORTS = range(28000, 32768)
"""Where :func:`free_port` picks: above Ray's default worker ports (10002-19999) and just below Linux's ephemeral
range (from 32768), so the kernel hands none of them to a process (``bind(0)``, outgoing connections)."""


def free_port() -> int:
    """A loopback TCP port that is free now and that nothing takes by itself before the caller binds it: a port from
    ``bind(0)`` is from the ephemeral range, where every Ray worker starting on the machine (each binds a gRPC port
    with ``bind(0)``) may take it in the seconds before a Ray dashboard or agent binds it."""
    low = _ephemeral_low()
    quiet = [port for port in QUIET_PORTS if port < low]
    for port in _PORT_CHOICE.sample(quiet, min(len(quiet), 64)):
        if port_is_free(port):
            return port
    with socket.socket() as sock:  # no quiet port free (or none below this machine's ephemeral range)
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a loopback TCP port can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The first port of Linux's ephemeral range (32768 by default and where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    verbose: bool | None = None,
    dashboard: bool = True,
    env: dict[str, str] | None = None,
) -> None:
    """``ray.init`` once per process. A local instance gets the machine's cores (or ``num_cpus``) and a small
    object store; an existing cluster is joined as it is. ``verbose``: see :func:`ray_output`; default from the
    command's ``--verbose`` (:func:`protpeft.console.verbosity`).

    Args:
        dashboard: start the local instance's dashboard (Ray Train's placement-group cleaner polls the state API it
            serves; Serve needs none).
        env: variables for the local instance's processes (set unless already set), besides Ray Train's.
    """
    import ray

    from protpeft.console import verbosity

    if ray.is_initialized():
        return
    target = resolve_address(address)
    if target.startswith(("http://", "https://")):
        from protpeft.errors import ProtpeftError

        raise ProtpeftError(
            f"--address {target} is a dashboard (Jobs API) address; training joins a cluster by its GCS address "
            "(HEAD:6379, auto or ray://HEAD:10001). To run on a remote cluster through the Jobs API use "
            "`protpeft submit --address http://HEAD:8265 -- train ...`"
        )
    common = ray_output(verbosity() if verbose is None else verbose)
    if target == "local":
        for key, value in (LOCAL_TRAIN_ENV | (env or {})).items():
            os.environ.setdefault(key, value)
        settings: dict[str, Any] = {"include_dashboard": False}
        if dashboard:
            port = free_port()
            settings = {"dashboard_host": "127.0.0.1", "dashboard_port": port}
            # Ray's own processes find "their" cluster's state API by this variable, else by looking for running
            # clusters on the machine, which fails once a second Ray instance runs beside this one (another user's
            # `ray start`, another protpeft run): Ray Train's placement-group cleaner then dies and its groups leak.
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            **settings,
            **common,
        )
    else:
        check_reachable(target)
        ray.init(address=target, **common)


def check_reachable(target: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` address must accept a TCP connection and answer gRPC, as a GCS does: ``ray.init`` retries an
    unreachable GCS for many minutes, with Ray's warnings and then a traceback, and hangs as long on a port where
    something else listens (the dashboard's 8265 given without ``http://``, an MLflow server). ``auto`` and
    ``ray://`` addresses are left to Ray, and so is the gRPC check under ``RAY_USE_TLS`` (a plain channel cannot
    tell a TLS GCS from anything else).

    Raises:
        ClusterError: one line naming the address.
    """
    from protpeft.trainer.cluster_checks import ClusterError

    host, sep, port = target.rpartition(":")
    if "://" in target or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()  # [::1]:6379 too
    except OSError as err:
        raise ClusterError(
            f"--address {target}: no Ray cluster answers there ({err.strerror or err}); pass the head's GCS address "
            "(HEAD:6379, as `ray start --head` prints it) or `auto` on a cluster node"
        ) from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    import grpc

    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ClusterError(
            f"--address {target}: something listens there but does not answer gRPC as a Ray cluster's GCS does (a "
            "dashboard or other HTTP port?); pass the head's GCS address (HEAD:6379, as `ray start --head` prints "
            "it); to run through the Jobs API use `protpeft submit --address http://HEAD:8265 -- train ...`"
        ) from None
    finally:
        channel.close()
