"""The Ray Serve application: registered models served by name, one copy of each base model, many adapters on it.

One deployment (:class:`ModelServer`, FastAPI ingress) holds a :class:`~protpeft.deploy.model_store.ModelStore`:

- a **shared base** per base fingerprint, loaded once; every LoRA version trained on it is a named peft adapter
  injected into that one backbone (``PeftModel.from_pretrained(base, dir, adapter_name=…)``, then
  ``load_adapter``); each forward row names its adapter (peft's mixed-adapter batches), so requests for different
  adapters share passes and run concurrently; frozen versions use the base with no adapter; each version keeps its
  own classification head;
- full fine-tuning versions, which carry their own backbone, loaded separately (``/v1/models`` says so);
- an exact embedding cache: a protein's pooled representation, per encoder, for proteins seen before.

Versions are loaded per id through ``@serve.multiplexed`` (id ``name/version#serial``, LRU-bounded per replica).
Requests are batched with ``@serve.batch``, and the model thread merges every batch waiting for it into one pass
(:mod:`~protpeft.deploy.prediction_pass`). Every model operation (load, predict pass, release) runs on that one
thread, in submission order: loading and releasing change the shared modules, so nothing may interleave, and a
release queued behind a prediction never pulls the adapter from under it.

``POST /admin/reload`` (or ``--poll``) re-resolves each served reference (``NAME@alias``) and swaps in new
versions; ``POST /admin/models`` adds one at run time.
"""

import asyncio
import itertools
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve

from protpeft.artifact import ArtifactError
from protpeft.errors import ProtpeftError
from protpeft.modes import MODES
from protpeft.registry import ModelRef, ModelVersionInfo, RegistryError, get_version, parse_ref, pull

from .api import BODY_ERRORS, ERRORS, INVALID, api, use_metrics
from .auth import API_SCHEME, AUTH_ERRORS, AdminCredentials, ApiCredentials, check_token, without_scheme
from .embedding_lru import DEFAULT_EMBEDDING_CACHE_SIZE
from .metrics import CONTENT_TYPE_LATEST, ServeMetrics
from .model_store import ModelReleased, ModelStore, PredictionJob, ServedModel, SharedBase
from .schemas import (
    AddModelRequest,
    BatchingReport,
    ErrorResponse,
    Health,
    Limits,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    ReloadResponse,
    RequestError,
    ServedModelInfo,
    VersionChange,
    check_inputs,
    published_limits,
)

__all__ = ["APP_NAME", "MAX_LOADED_MODELS", "ModelServer", "ModelStore", "ServeSettings", "SharedBase", "build_app"]

APP_NAME = "protpeft"
MAX_LOADED_MODELS = 32
"""Versions held per replica (``@serve.multiplexed`` LRU); an evicted one is pulled again on its next request."""

CONCURRENT_BATCHES = 8
"""Batches Serve hands on at once (the model thread merges them); ``max_ongoing_requests`` is this × batch size."""

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ServeSettings:
    """What a replica needs; built by :func:`protpeft.deploy.serve.serve_models`."""

    refs: tuple[str, ...]
    tracking_uri: str
    """Resolved on the driver: a replica's working directory is not the user's."""
    base: str | None = None
    """Base model location override (as ``protpeft predict --base``)."""
    workdir: str | None = None
    """The driver's working directory: relative base paths recorded by runs are read from there."""
    limits: Limits = field(default_factory=Limits)
    poll_seconds: float | None = None
    max_batch_size: int = 8
    batch_wait_s: float = 0.005
    predict_batch_size: int = 1
    """Sequences per forward call."""
    forward_threads: int = 1
    """Forward calls of one model pass run concurrently on this many threads (torch's threads are shared out)."""
    embedding_cache_size: int = DEFAULT_EMBEDDING_CACHE_SIZE
    """Pooled representations kept per replica (:class:`~protpeft.deploy.embedding_lru.EmbeddingLRU`); 0: off."""
    admin_token: str | None = None
    """Bearer token ``/admin/*`` requires (always set by :func:`~protpeft.deploy.serve.serve_models`)."""
    api_token: str | None = None
    """Bearer token the prediction and model-listing endpoints require; None: they are open."""
    pass_examples: int = 64
    """Examples the model thread takes per pass over the waiting requests (a larger request goes alone)."""


@dataclass
class Route:
    """A served name: the reference it follows and the version (multiplexed model id) it answers with now."""

    ref: ModelRef
    info: ModelVersionInfo
    model_id: str


def used_ref(route: Route | None, model: ServedModel) -> ModelRef:
    """The reference the answer came through (a model removed meanwhile answers as its exact version)."""
    return route.ref if route is not None else model.info.ref


@dataclass
class BatchItem:
    name: str
    model: ServedModel
    examples: list[tuple[str, ...]]


@serve.deployment(graceful_shutdown_timeout_s=5, health_check_period_s=10)
@serve.ingress(api)
class ModelServer:
    """Serves every reference of ``settings.refs`` under its registered name."""

    async def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.base, settings.workdir, forward_threads=settings.forward_threads,
                                forward_batch=settings.predict_batch_size, pass_examples=settings.pass_examples,
                                embedding_cache_size=settings.embedding_cache_size)  # fmt: skip
        self.metrics = ServeMetrics(lambda: len(self.store.models), self.store.adapter_count, self.store)
        use_metrics(self.metrics)
        self.routes: dict[str, Route] = {}
        self._serial = itertools.count(1)
        self._routes_lock = asyncio.Lock()
        self._batches: list[int] = [0, 0, 0]  # batches, requests, largest batch
        self.predict_batch.set_max_batch_size(settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(settings.batch_wait_s)
        for ref in settings.refs:
            await self._add(parse_ref(ref))
        self._poller = asyncio.create_task(self._poll()) if settings.poll_seconds else None

    # ---- loading

    @serve.multiplexed(max_num_models_per_replica=MAX_LOADED_MODELS)
    async def get_model(self, model_id: str) -> ServedModel:
        """Pull version ``name/version`` of ``model_id`` (``name/version#serial``) and load it onto its base."""
        name, _, version = model_id.partition("#")[0].partition("/")
        info = await asyncio.to_thread(get_version, ModelRef(name, version=int(version)), self.settings.tracking_uri)
        with tempfile.TemporaryDirectory(prefix="protpeft-serve-") as tmp:
            run_dir = await asyncio.to_thread(pull, info.ref, Path(tmp) / "run", self.settings.tracking_uri)
            return await self.store.call(self.store.load, model_id, info, run_dir)

    def _model_id(self, info: ModelVersionInfo) -> str:
        # A new serial per swap: an id never maps back to a version the multiplexer still caches as released.
        return f"{info.name}/{info.version}#{next(self._serial)}"

    async def _add(self, ref: ModelRef) -> Route:
        info = await asyncio.to_thread(get_version, ref, self.settings.tracking_uri)
        route = Route(ref, info, self._model_id(info))
        await self.get_model(route.model_id)
        self.routes[info.name] = route
        return route

    async def _model(self, name: str) -> ServedModel:
        route = self.routes.get(name)
        if route is None:
            raise self._not_served(name)
        model = await self.get_model(route.model_id)
        if model.released:  # evicted between two lookups: load it again under a fresh id
            route.model_id = self._model_id(route.info)
            model = await self.get_model(route.model_id)
        return model

    def _not_served(self, name: str) -> RequestError:
        served = ", ".join(sorted(self.routes)) or "none"
        return RequestError(404, f"no model {name!r} is served here; served models: {served}")

    async def reload(self) -> ReloadResponse:
        """Re-resolve every served reference; load changed versions, switch to them, release the old ones."""
        changed, unchanged, errors = [], [], {}
        async with self._routes_lock:
            for name, route in list(self.routes.items()):
                try:
                    info = await asyncio.to_thread(get_version, route.ref, self.settings.tracking_uri)
                    if info.version == route.info.version:
                        unchanged.append(name)
                        continue
                    new = Route(route.ref, info, self._model_id(info))
                    await self.get_model(new.model_id)
                except (ProtpeftError, OSError) as err:  # keep serving the old version
                    errors[name] = str(err)
                    continue
                old = self.store.models.get(route.model_id)
                self.routes[name] = new
                if old is not None:
                    self.store.submit(self.store.release, old)  # after predictions already queued for it
                changed.append(VersionChange(name=name, ref=str(route.ref), old_version=route.info.version,
                                             new_version=info.version))  # fmt: skip
                log.info("%s: version %s → %s", route.ref, route.info.version, info.version)
        return ReloadResponse(changed=changed, unchanged=unchanged, errors=errors)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.reload()
            except Exception:  # a failed poll must not end polling
                log.exception("polling the registry failed")

    # ---- batching

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, max_concurrent_batches=CONCURRENT_BATCHES)
    async def predict_batch(self, items: list[BatchItem]) -> list[tuple[np.ndarray, ServedModel] | Exception]:
        """Hand a batch of requests to the model thread, which groups them per model.

        Serve forms a batch every ``batch_wait_timeout_s`` whether or not the previous one has finished
        (``max_concurrent_batches`` only caps how many run), so under load its batches stay small; they are therefore
        all let through at once, and the model thread merges whatever waits for it (:meth:`ModelStore.predict_later`).
        """
        self._batches = [self._batches[0] + 1, self._batches[1] + len(items), max(self._batches[2], len(items))]
        self.metrics.batch_requests.observe(len(items))
        results: list[Any] = [None] * len(items)
        todo = list(range(len(items)))
        for attempt in range(2):  # a version a reload released meanwhile: once more with the current one
            jobs: dict[int, PredictionJob] = {}
            for i in todo:
                try:
                    if items[i].model.released:
                        items[i].model = await self._model(items[i].name)
                except Exception as err:
                    results[i] = err
                    continue
                jobs[i] = PredictionJob(items[i].model, items[i].examples)
            self.store.predict_later(list(jobs.values()))
            todo = []
            for i, job in jobs.items():
                try:
                    results[i] = (await asyncio.wrap_future(job.future), job.model)
                except ModelReleased as err:
                    if attempt == 0:
                        todo.append(i)
                    else:
                        results[i] = err
                except Exception as err:
                    results[i] = err
            if not todo:
                break
        return results

    # ---- endpoints

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health(status="ok", models=sorted(self.routes))

    @api.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
             "description": "Prometheus text exposition format."}})  # fmt: skip
    async def prometheus_metrics(self) -> Response:
        """Requests, errors by status, latency, batching and loaded models of this replica (Prometheus text)."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        """The schema as this server runs: without the API token scheme when predictions are open."""
        schema = without_scheme(request.app.openapi(), API_SCHEME if not self.settings.api_token else "")
        return JSONResponse(published_limits(schema, self.settings.limits))

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="protpeft API")

    @api.get("/v1/models", response_model=ModelsResponse, responses=AUTH_ERRORS)
    async def list_models(self, token: ApiCredentials) -> ModelsResponse:
        """What is served (version, base model, metrics) and the replica's parameter storage."""
        check_token(token, self.settings.api_token, "the /v1 endpoints")
        models = [self._describe(name) for name in sorted(self.routes)]
        storage = await self.store.call(self.store.storage)
        batches, requests, largest = self._batches
        passes, passed = self.store.counts.passes, self.store.counts.requests
        batching = BatchingReport(
            batches=batches, requests=requests, requests_per_batch=requests / max(batches, 1),
            max_requests_per_batch=largest, max_batch_size=self.settings.max_batch_size, model_passes=passes,
            requests_per_pass=passed / max(passes, 1),
        )  # fmt: skip
        return ModelsResponse(models=models, storage=storage, batching=batching, limits=self.settings.limits)

    @api.get("/v1/models/{name}", response_model=ServedModelInfo,
             responses={404: ERRORS[404], **INVALID, **AUTH_ERRORS})  # fmt: skip
    async def show_model(self, name: str, token: ApiCredentials) -> ServedModelInfo:
        check_token(token, self.settings.api_token, "the /v1 endpoints")
        if name not in self.routes:
            raise self._not_served(name)
        return self._describe(name)

    @api.post("/v1/models/{name}/predict", response_model=PredictResponse,
              responses={**ERRORS, **BODY_ERRORS, **AUTH_ERRORS})  # fmt: skip
    async def predict(self, name: str, request: PredictRequest, token: ApiCredentials) -> PredictResponse:
        """Probabilities and labels for protein pairs (PPI models) or sequences (symmetry models)."""
        check_token(token, self.settings.api_token, "the /v1 endpoints")
        model = await self._model(name)
        examples = check_inputs(request, model.task, self.settings.limits)
        result = await self.predict_batch(BatchItem(name, model, examples))
        if isinstance(result, Exception):
            raise result
        probs, used = result
        self.metrics.predicted.labels(name).inc(len(examples))
        return PredictResponse(
            model=name, version=used.info.version, ref=str(used_ref(self.routes.get(name), used)), task=used.task,
            label_names=list(used.label_names), probabilities=probs.tolist(),
            labels=used.labels(probs, request.threshold),
        )  # fmt: skip

    @api.post("/admin/reload", response_model=ReloadResponse, responses=AUTH_ERRORS)
    async def admin_reload(self, token: AdminCredentials) -> ReloadResponse:
        """Re-resolve every served ``NAME@alias`` against the registry and swap in versions that moved."""
        check_token(token, self.settings.admin_token, "/admin endpoints")
        return await self.reload()

    @api.post("/admin/models", response_model=ServedModelInfo, status_code=201, responses={
        **BODY_ERRORS, **AUTH_ERRORS,
        404: {"model": ErrorResponse, "description": "The reference names no registered version."},
        409: {"model": ErrorResponse, "description": "A model of that name is already served."},
        422: {"model": ErrorResponse, "description": "Malformed request, or the version's artefact is unusable."},
    })  # fmt: skip
    async def admin_add(self, request: AddModelRequest, token: AdminCredentials) -> ServedModelInfo:
        """Serve one more registered model (its base is shared when already loaded)."""
        check_token(token, self.settings.admin_token, "/admin endpoints")
        try:
            ref = parse_ref(request.ref)
            async with self._routes_lock:
                if ref.name in self.routes:
                    raise RequestError(409, f"{ref.name!r} is already served (as {self.routes[ref.name].ref})")
                await self._add(ref)
        except RegistryError as err:
            raise RequestError(404, str(err)) from None
        except ArtifactError as err:
            raise RequestError(422, str(err)) from None
        return self._describe(ref.name)

    @api.delete("/admin/models/{name}", status_code=204, responses={404: ERRORS[404], **INVALID, **AUTH_ERRORS})
    async def admin_remove(self, name: str, token: AdminCredentials) -> Response:
        """Stop serving ``name`` and free its adapter (and its base when nothing else uses it)."""
        check_token(token, self.settings.admin_token, "/admin endpoints")
        async with self._routes_lock:
            route = self.routes.pop(name, None)
            if route is None:
                raise self._not_served(name)
            model = self.store.models.get(route.model_id)
            if model is not None:
                await self.store.call(self.store.release, model)
        return Response(status_code=204)

    def _describe(self, name: str) -> ServedModelInfo:
        route = self.routes[name]
        info = route.info
        loaded = self.store.models.get(route.model_id)
        fingerprint = info.tags.get("base_fingerprint")
        return ServedModelInfo(
            name=name, ref=str(route.ref), version=info.version, aliases=list(info.aliases), task=info.task,
            mode=info.mode, base_model=info.base_model, base_fingerprint=fingerprint,
            backbone="own (full fine-tuning: its whole backbone, loaded separately)"
            if getattr(MODES.get(info.mode or ""), "own_backbone", False)
            else f"shared base {fingerprint}",
            loaded=loaded is not None, metrics=dict(info.metrics),
        )  # fmt: skip

    def __del__(self) -> None:
        if getattr(self, "_poller", None) is not None:
            self._poller.cancel()
        if getattr(self, "store", None) is not None:
            self.store.close()


def build_app(settings: ServeSettings, num_cpus: float = 1.0, env_vars: dict[str, str] | None = None):
    """The bound application: one replica with ``num_cpus`` CPUs (torch uses as many threads).

    ``max_ongoing_requests`` is raised from Serve's default (5) to batch size × concurrent batches: a replica never
    holds more requests than that, so a lower value caps every batch below ``max_batch_size``.
    """
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if env_vars:
        options["runtime_env"] = {"env_vars": env_vars}
    ongoing = settings.max_batch_size * CONCURRENT_BATCHES
    return ModelServer.options(ray_actor_options=options, max_ongoing_requests=ongoing).bind(settings)
