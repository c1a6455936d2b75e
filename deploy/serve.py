"""Start and stop the Serve application: ``protpeft serve NAME@alias [NAME@alias ...]``.

References are resolved against the registry before Ray starts, so a typo fails in a second with the registry's
message (which lists what exists). A local Ray instance is started unless ``--address`` (or ``$RAY_ADDRESS``) names
a cluster; the call blocks until Ctrl-C or SIGTERM, then shuts Serve down (on a cluster: deletes only this
application). Ray and torch are imported inside the function, so importing this module is cheap.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from protpeft.errors import ProtpeftError

__all__ = ["ServerInfo", "serve_models"]

FORWARDED_ENV = ("PROTPEFT_BASE_MODEL_DIR", "HF_HUB_OFFLINE", "HF_HOME", "MLFLOW_DISABLE_TELEMETRY")
"""Variables a replica needs as the driver sees them (replicas on a cluster do not inherit the driver's env)."""


@dataclass(frozen=True)
class ServerInfo:
    url: str
    models: list[dict[str, Any]]
    """name, ref, version, mode of each served model."""
    generated_admin_token: str | None = None
    """The admin token made up for this server when none was given (to print once); None when one was given."""
    num_cpus: float = 1.0
    forward_threads: int = 1
    forward_batch: int = 1
    embedding_cache_size: int = 0


DEFAULT_FORWARD_BATCH = 1
"""Sequences per forward call on CPU: single sequences on concurrent threads beat padded batches there."""

LOCAL_SERVE_ENV = {
    # Ray starts as many idle Python workers as CPUs in advance, for tasks Serve never runs (~200 MB each).
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}
"""Settings of a local Ray instance started for serving (a variable already set wins)."""


def serve_models(
    refs: Sequence[str],
    *,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    base: str | None = None,
    poll_seconds: float | None = None,
    limits: Any = None,
    num_cpus: float | None = None,
    max_batch_size: int = 8,
    forward_batch: int = DEFAULT_FORWARD_BATCH,
    forward_threads: int | None = None,
    embedding_cache_size: int | None = None,
    admin_token: str | None = None,
    api_token: str | None = None,
    on_ready: Callable[[ServerInfo], None] | None = None,
) -> None:
    """Serve ``refs`` over HTTP on ``host:port`` until interrupted.

    ``num_cpus`` (default: every CPU of the largest node) is the replica's CPU share, hence torch's threads;
    ``forward_threads`` (default: one per CPU) run forward calls of ``forward_batch`` sequences concurrently;
    ``embedding_cache_size`` pooled representations are kept for proteins seen before (0: none).
    ``/admin/*`` needs ``admin_token`` (default: a new random one, passed to ``on_ready`` to print); the prediction
    endpoints need ``api_token`` only when it is given.

    Raises:
        RegistryError: a reference does not resolve (before anything starts).
        ProtpeftError: two references of one name, a dashboard URL as ``address``, or the application failed to
            start (its replica's error is in the message).
    """
    from protpeft.registry import get_version, parse_ref, tracking_uri

    from .schemas import Limits

    parsed = [parse_ref(r) for r in refs]
    if not parsed:
        raise ProtpeftError("name at least one registered model to serve, e.g. `protpeft serve ppi-lora@champion`")
    names = [r.name for r in parsed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ProtpeftError(f"{', '.join(twice)}: serve each registered model once (models are addressed by name)")
    if address and address.startswith(("http://", "https://")):
        raise ProtpeftError(f"--address {address} is a dashboard URL; Serve joins a cluster by its GCS address "
                            "(HEAD:6379 or auto)")  # fmt: skip
    uri = tracking_uri()
    versions = [get_version(r, uri) for r in parsed]  # fail fast, before Ray, with the registry's message

    import ray
    from ray import serve

    from protpeft.trainer.ray_cluster import connect, resolve_address

    from .app import APP_NAME, ServeSettings, build_app
    from .auth import new_token
    from .embedding_lru import DEFAULT_EMBEDDING_CACHE_SIZE

    generated = None if admin_token else new_token()
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ} | {"MLFLOW_TRACKING_URI": uri}
    started = not ray.is_initialized() and resolve_address(address) == "local"
    connect(address, dashboard=False, env=LOCAL_SERVE_ENV)  # a local instance: no dashboard, no idle workers
    num_cpus = num_cpus or largest_node_cpus()
    cache_size = DEFAULT_EMBEDDING_CACHE_SIZE if embedding_cache_size is None else embedding_cache_size
    threads = forward_threads or max(1, int(num_cpus))
    settings = ServeSettings(refs=tuple(str(r) for r in parsed), tracking_uri=uri, base=base, workdir=os.getcwd(),
                             limits=limits or Limits(), poll_seconds=poll_seconds, max_batch_size=max_batch_size,
                             predict_batch_size=forward_batch, forward_threads=threads,
                             embedding_cache_size=cache_size, admin_token=admin_token or generated,
                             api_token=api_token)  # fmt: skip
    stop = _StopOnSignal()
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build_app(settings, num_cpus=num_cpus, env_vars=env), name=APP_NAME, route_prefix="/")
        except RuntimeError as err:
            raise ProtpeftError(f"the Serve application failed to start: {err}") from None
        if on_ready is not None:
            served = [{"name": v.name, "ref": str(r), "version": v.version, "mode": v.mode}
                      for r, v in zip(parsed, versions, strict=True)]  # fmt: skip
            on_ready(ServerInfo(f"http://{host}:{port}", served, generated, num_cpus, threads, forward_batch,
                                cache_size))  # fmt: skip
        stop.wait()
    except KeyboardInterrupt:  # Ctrl-C while starting: stop as cleanly as once running
        pass
    finally:
        stop.restore()
        if started:  # our own local instance: all of it goes
            serve.shutdown()
            ray.shutdown()
        else:  # a cluster (or the caller's Ray) keeps running, without this application
            serve.delete(APP_NAME)


def largest_node_cpus() -> float:
    """CPUs of the largest alive node of the connected Ray cluster (the whole machine for a local instance)."""
    import ray

    cpus = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    return max([c for c in cpus if c > 0] or [1.0])


class _StopOnSignal:
    """SIGINT (Ctrl-C) and SIGTERM both stop cleanly; SIGINT is installed explicitly because a shell starts
    background jobs (``protpeft serve … &``) with it ignored."""

    def __init__(self) -> None:
        self._previous = {sig: signal.signal(sig, self._raise) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def wait(self) -> None:
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            return

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
