"""Prometheus metrics of one Serve replica (``GET /metrics``, text exposition format).

Each replica owns a :class:`ServeMetrics` with its own ``CollectorRegistry`` (no process-global default registry:
several replicas or tests in one process never share counters). Ray Serve's own metrics (``ray_serve_*``) are
exported by Ray's metrics agent on its own port; these are the ones protpeft adds, served by the application
itself: HTTP requests and their status codes, request latency, how requests were batched, and what is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """The counters, histograms and gauges of one replica."""

    def __init__(self, loaded_models: Callable[[], float], loaded_adapters: Callable[[], float],
                 store: Any = None) -> None:  # fmt: skip
        """``store``: the replica's :class:`~protpeft.deploy.model_store.ModelStore`, whose embedding cache and
        pass counts are read at each scrape."""
        self.registry = CollectorRegistry(auto_describe=True)
        if store is not None:
            self.registry.register(_StoreCollector(store))
        self.requests = Counter("protpeft_http_requests", "HTTP requests answered, by route template and status code.",
                                ["method", "route", "status"], registry=self.registry)  # fmt: skip
        self.errors = Counter("protpeft_http_errors", "HTTP answers with a 4xx or 5xx status, by status code.",
                              ["status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("protpeft_http_request_duration_seconds", "Time from request to response, by route.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_requests = Histogram("protpeft_batch_requests", "Requests per @serve.batch call.",
                                        buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.predicted = Counter("protpeft_predicted_examples", "Pairs or sequences predicted, by served model.",
                                 ["model"], registry=self.registry)  # fmt: skip
        Gauge("protpeft_loaded_models", "Registered versions held in memory.",
              registry=self.registry).set_function(loaded_models)  # fmt: skip
        Gauge("protpeft_loaded_adapters", "LoRA adapters injected into the shared base models.",
              registry=self.registry).set_function(loaded_adapters)  # fmt: skip

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        if status >= 400:
            self.errors.labels(str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector:
    """The model store's own counters (kept as plain integers on the model thread), read at scrape time."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        cache, counts = self.store.cache, self.store.counts
        yield CounterMetricFamily("protpeft_embedding_cache_hits", "Proteins whose pooled representation came from "
                                  "the embedding cache.", value=cache.hits)  # fmt: skip
        yield CounterMetricFamily("protpeft_embedding_cache_misses", "Proteins looked up in the embedding cache and "
                                  "not found (then encoded).", value=cache.misses)  # fmt: skip
        yield GaugeMetricFamily("protpeft_embedding_cache_entries", "Pooled representations held now.",
                                value=len(cache))  # fmt: skip
        yield GaugeMetricFamily("protpeft_embedding_cache_capacity", "Entries the cache holds at most (0: off).",
                                value=cache.capacity)  # fmt: skip
        yield CounterMetricFamily("protpeft_model_passes", "Passes of the model thread over waiting requests.",
                                  value=counts.passes)  # fmt: skip
        yield CounterMetricFamily("protpeft_requested_sequences", "Proteins the predicted examples held (two per "
                                  "pair).", value=counts.sequences)  # fmt: skip
        yield CounterMetricFamily("protpeft_encoded_sequences", "Sequences that went through a backbone (not cached, "
                                  "not repeated within a pass).", value=counts.encoded)  # fmt: skip
        yield CounterMetricFamily("protpeft_forward_calls", "Backbone forward calls.", value=counts.forward_calls)
