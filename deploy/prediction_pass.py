"""How the model thread answers requests: each protein's pooled representation once — from the embedding cache, from
a forward call already running for another request, or from a new one — then each request's head.

A request's examples are tuples of member sequences (two for a PPI pair). What a head receives for an example is the
mean of its members' pooled representations (:class:`~protpeft.models.classifier.ProteinClassifier`), and a pooled
representation depends only on the encoder and the sequence. So :class:`PredictionFlow`, on the model thread,

1. takes the waiting requests, whatever model each addresses, and their distinct (encoder, sequence) keys;
2. answers what it can from the :class:`~protpeft.deploy.embedding_lru.EmbeddingLRU`, attaches keys already being
   encoded for an earlier request to that call, and hands the rest to the forward threads in calls of at most
   ``forward_batch`` sequences of one base (longest first), rows of different adapters side by side
   (:mod:`~protpeft.deploy.mixed_adapters`);
3. when a call returns (the forward thread posts it back to the model thread), stores its rows in the cache and runs
   the head of every request whose proteins are now all in, one head call per model.

Nothing waits for a whole batch to finish: the forward threads stay busy while requests keep arriving, and a
request is answered as soon as its own proteins are in. Loading and releasing a version change the shared modules,
so they first wait for the calls in flight (:meth:`PredictionFlow.quiesce`).

With the cache off (capacity 0) the same flow runs; only the cache finds nothing. The arithmetic is the model's own
(``ProteinEncoder.forward``, member mean, head, sigmoid), so answers equal ``Predictor.predict``'s up to the float
rounding of how sequences share padded calls (none with ``forward_batch`` 1).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from protpeft.tasks import TASKS

from .embedding_lru import CacheKey, EmbeddingLRU
from .mixed_adapters import route_rows

if TYPE_CHECKING:
    from .model_store import ServedModel

__all__ = ["ModelReleased", "PassCounts", "PredictionFlow", "PredictionJob", "forward_thread_setup"]


class ModelReleased(RuntimeError):
    """A prediction reached the model thread after its version was released (a reload raced it)."""


@dataclass(eq=False)
class PredictionJob:
    """One request's examples for one model, and the future its (N, outputs) probabilities arrive on."""

    model: ServedModel
    examples: list[tuple[str, ...]]
    """Cleaned as :func:`~protpeft.deploy.schemas.check_inputs` leaves them (upper case, accepted letters)."""
    future: Future = field(default_factory=Future)
    rows: dict[CacheKey, torch.Tensor] = field(default_factory=dict)
    """Pooled representations found so far."""
    missing: set[CacheKey] = field(default_factory=set)
    """Keys still being encoded."""


@dataclass
class PassCounts:
    """What the model thread did since the replica started."""

    passes: int = 0
    """Takes of the waiting requests."""
    requests: int = 0
    sequences: int = 0
    """Member sequences the requests held."""
    encoded: int = 0
    """Sequences that went through a backbone (the rest: repeats, cache hits, or shared with a call in flight)."""
    forward_calls: int = 0


@dataclass(eq=False)
class _Call:
    """One forward call: sequences of one encoder group, each row with its adapter."""

    model: ServedModel
    keys: list[CacheKey]
    sequences: list[str]
    adapters: list[str] | None


class PredictionFlow:
    """Requests in, forward calls out, answers as proteins come in. Every method runs on the model thread; ``post``
    puts a call on that thread's queue (it must be safe from any thread)."""

    def __init__(self, cache: EmbeddingLRU, forwards: Executor, forward_batch: int,
                 post: Callable[..., Any]) -> None:  # fmt: skip
        self.cache = cache
        self.counts = PassCounts()
        self._forwards = forwards
        self._forward_batch = max(1, forward_batch)
        self._post = post
        self._waiting_on: dict[CacheKey, list[PredictionJob]] = {}
        """Keys being encoded now, and the requests waiting for each."""
        self._in_flight: set[Future] = set()

    def take(self, jobs: list[PredictionJob]) -> None:
        """Start answering ``jobs``: each job's future gets its probabilities or its error, now or later."""
        self.counts.passes += 1
        self.counts.requests += len(jobs)
        live = []
        for job in jobs:
            if job.model.released or job.model.predictor is None:
                job.future.set_exception(ModelReleased(f"{job.model.model_id} was released before its batch ran"))
            else:
                live.append(job)
        owner: dict[CacheKey, ServedModel] = {}
        for job in live:
            for example in job.examples:
                self.counts.sequences += len(example)
                for seq in example:
                    key = (job.model.encoder_key, seq)
                    if key not in self._waiting_on:
                        owner.setdefault(key, job.model)
        found = self.cache.lookup(owner)
        missing = [k for k in owner if k not in found]
        for key in missing:
            self._waiting_on[key] = []
        for job in live:
            for example in job.examples:
                for seq in example:
                    key = (job.model.encoder_key, seq)
                    if key in found:
                        job.rows[key] = found[key]
                    elif key not in job.missing:
                        job.missing.add(key)
                        self._waiting_on[key].append(job)
        self._answer([job for job in live if not job.missing])
        calls = _plan_calls(missing, owner, self._forward_batch)
        self.counts.encoded += len(missing)
        self.counts.forward_calls += len(calls)
        for call in calls:
            future = self._forwards.submit(_encode, call)
            self._in_flight.add(future)
            future.add_done_callback(lambda done, call=call: self._post(self._finish, call, done))

    def quiesce(self) -> None:
        """Wait for the forward calls in flight (their answers follow on the model thread's queue)."""
        wait(list(self._in_flight))

    def _finish(self, call: _Call, done: Future) -> None:
        self._in_flight.discard(done)
        error = done.exception()
        # each row in its own storage: not a view that would keep the call's whole batch alive in the cache
        rows = {} if error is not None else {key: done.result()[i].clone() for i, key in enumerate(call.keys)}
        self.cache.store(rows)
        ready = []
        for key in call.keys:
            for job in self._waiting_on.pop(key, []):
                if job.future.done():  # failed on another of its proteins
                    continue
                if error is not None:
                    job.future.set_exception(error)
                    continue
                job.rows[key] = rows[key]
                job.missing.discard(key)
                if not job.missing:
                    ready.append(job)
        self._answer(ready)

    @torch.inference_mode()
    def _answer(self, jobs: list[PredictionJob]) -> None:
        """One head call per model for ``jobs`` (all their proteins in); each future gets its slice."""
        by_model: dict[int, list[PredictionJob]] = {}
        for job in jobs:
            by_model.setdefault(id(job.model), []).append(job)
        for group in by_model.values():
            model = group[0].model
            try:
                if model.released or model.predictor is None:
                    raise ModelReleased(f"{model.model_id} was released before its batch ran")
                classifier, key = model.predictor.model, model.encoder_key
                pooled = torch.stack([job.rows[(key, s)] for job in group for ex in job.examples for s in ex])
                logits = classifier.classify_members(pooled)
                probs = TASKS[model.task].probabilities(torch.sigmoid(logits.float()).numpy())
            except Exception as err:
                for job in group:
                    job.future.set_exception(err)
                continue
            start = 0
            for job in group:
                job.rows.clear()
                job.future.set_result(np.array(probs[start : start + len(job.examples)]))
                start += len(job.examples)


def _plan_calls(missing: list[CacheKey], owner: dict[CacheKey, ServedModel], forward_batch: int) -> list[_Call]:
    """Missing keys grouped by what can share a call (one backbone, pooling and crop), longest sequences first."""
    groups: dict[tuple, list[CacheKey]] = {}
    for key in missing:
        groups.setdefault(owner[key].call_group, []).append(key)
    calls = []
    for keys in groups.values():
        keys.sort(key=lambda k: -len(k[1]))
        for start in range(0, len(keys), forward_batch):
            part = keys[start : start + forward_batch]
            adapters = [owner[k].row_adapter() for k in part]
            calls.append(_Call(owner[part[0]], part, [k[1] for k in part], None if adapters[0] is None else adapters))
    calls.sort(key=lambda c: -len(c.sequences[0]) * len(c.sequences))
    return calls


@torch.inference_mode()
def _encode(call: _Call) -> torch.Tensor:
    """Pooled representations (n, H) of one call's sequences (on a forward thread)."""
    predictor = call.model.predictor
    inputs = predictor.tokens.batch(call.sequences)
    with route_rows(call.adapters):
        return predictor.model.encoder(**inputs).float()


def forward_thread_setup(threads: int) -> Callable[[], None]:
    """The initializer of a forward thread: torch's intra-op threads for this thread (OpenMP's setting is per
    thread; without it every forward thread would use the process's count and oversubscribe the cores)."""

    def setup() -> None:
        torch.set_num_threads(max(1, threads))

    return setup
