"""One pass of the model thread over the waiting requests: each protein's pooled representation once, from the
embedding cache or from a forward call, then every request's head.

A request's examples are tuples of member sequences (two for a PPI pair). What a head receives for an example is
the mean of its members' pooled representations (:class:`~protpeft.models.classifier.ProteinClassifier`), and a
pooled representation depends only on the encoder and the sequence. So a pass

1. collects the distinct (encoder, sequence) keys of all its requests, whatever model each addresses;
2. takes what the :class:`~protpeft.deploy.embedding_lru.EmbeddingLRU` holds; the rest is encoded in forward calls
   of at most ``forward_batch`` sequences of one base (longest first, so the forward threads finish together),
   rows of different adapters side by side (:mod:`~protpeft.deploy.mixed_adapters`); calls run concurrently on the
   forward threads;
3. runs each model's head over its requests' examples at once, and answers each request's future.

With the cache off (capacity 0) the same pass runs; only step 2 finds nothing. The arithmetic is the model's own
(``ProteinEncoder.forward``, member mean, head, sigmoid), so answers equal ``Predictor.predict``'s up to the
float rounding of how sequences share padded calls (none with ``forward_batch`` 1).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from protpeft.tasks import TASKS

from .embedding_lru import CacheKey, EmbeddingLRU
from .mixed_adapters import route_rows

if TYPE_CHECKING:
    from .model_store import ServedModel

__all__ = ["ModelReleased", "PassCounts", "PredictionJob", "run_pass"]


class ModelReleased(RuntimeError):
    """A prediction reached the model thread after its version was released (a reload raced it)."""


@dataclass(eq=False)
class PredictionJob:
    """One request's examples for one model, and the future its probabilities arrive on."""

    model: ServedModel
    examples: list[tuple[str, ...]]
    """Cleaned as :func:`~protpeft.deploy.schemas.check_inputs` leaves them (upper case, accepted letters)."""
    future: Future = field(default_factory=Future)


@dataclass
class PassCounts:
    """What passes did since the replica started."""

    passes: int = 0
    requests: int = 0
    sequences: int = 0
    """Member sequences the passes' requests held."""
    encoded: int = 0
    """Sequences that went through a backbone (the rest: repeats within a pass, or cache hits)."""
    forward_calls: int = 0


@dataclass(eq=False)
class _Call:
    """One forward call: sequences of one encoder group, each row with its adapter."""

    model: ServedModel
    keys: list[CacheKey]
    sequences: list[str]
    adapters: list[str] | None


def run_pass(jobs: list[PredictionJob], cache: EmbeddingLRU, forwards: Executor, forward_batch: int,
             counts: PassCounts) -> None:  # fmt: skip
    """Answer ``jobs`` (on the model thread): set each job's future to its (N, outputs) probabilities or error."""
    live = []
    for job in jobs:
        if job.model.released or job.model.predictor is None:
            job.future.set_exception(ModelReleased(f"{job.model.model_id} was released before its batch ran"))
        else:
            live.append(job)
    counts.passes += 1
    counts.requests += len(jobs)
    wanted: dict[CacheKey, ServedModel] = {}
    for job in live:
        key = job.model.encoder_key
        for example in job.examples:
            counts.sequences += len(example)
            for seq in example:
                wanted.setdefault((key, seq), job.model)
    rows = cache.lookup(wanted)
    missing = [k for k in wanted if k not in rows]
    failed: dict[CacheKey, BaseException] = {}
    calls = _plan_calls(missing, wanted, forward_batch)
    for call, result in zip(calls, _map_calls(forwards, calls), strict=True):
        if isinstance(result, BaseException):
            failed.update(dict.fromkeys(call.keys, result))
            continue
        fresh = {key: result[i].clone() for i, key in enumerate(call.keys)}  # own storage: not a view of the call
        rows.update(fresh)
        cache.store(fresh)
    counts.encoded += len(missing)
    counts.forward_calls += len(calls)
    by_model: dict[int, list[PredictionJob]] = {}
    for job in live:
        by_model.setdefault(id(job.model), []).append(job)
    for model_jobs in by_model.values():
        _answer(model_jobs, rows, failed)


def _plan_calls(missing: list[CacheKey], owner: dict[CacheKey, ServedModel], forward_batch: int) -> list[_Call]:
    """Missing keys grouped by what can share a call (one backbone, pooling and crop), longest sequences first."""
    groups: dict[tuple, list[CacheKey]] = {}
    for key in missing:
        model = owner[key]
        groups.setdefault(model.call_group, []).append(key)
    calls = []
    for keys in groups.values():
        keys.sort(key=lambda k: -len(k[1]))
        for start in range(0, len(keys), max(1, forward_batch)):
            part = keys[start : start + forward_batch]
            models = [owner[k] for k in part]
            adapters = [m.row_adapter() for m in models]
            calls.append(_Call(models[0], part, [k[1] for k in part], None if adapters[0] is None else adapters))
    calls.sort(key=lambda c: -len(c.sequences[0]) * len(c.sequences))
    return calls


def _map_calls(forwards: Executor, calls: list[_Call]) -> list[torch.Tensor | BaseException]:
    futures = [forwards.submit(_encode, call) for call in calls]
    results: list[Any] = []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as err:  # answered to the requests that needed these sequences
            results.append(err)
    return results


@torch.inference_mode()
def _encode(call: _Call) -> torch.Tensor:
    """Pooled representations (n, H) of one call's sequences (on a forward thread)."""
    predictor = call.model.predictor
    inputs = predictor.tokens.batch(call.sequences)
    with route_rows(call.adapters):
        return predictor.model.encoder(**inputs).float()


@torch.inference_mode()
def _answer(jobs: list[PredictionJob], rows: dict[CacheKey, torch.Tensor], failed: dict[CacheKey, BaseException]
            ) -> None:  # fmt: skip
    """One head call for a model's jobs; each job's future gets its slice (or the error of one of its sequences)."""
    model = jobs[0].model
    key = model.encoder_key
    ok: list[PredictionJob] = []
    for job in jobs:
        error = next((failed[(key, s)] for ex in job.examples for s in ex if (key, s) in failed), None)
        if error is not None:
            job.future.set_exception(error)
        else:
            ok.append(job)
    if not ok:
        return
    try:
        classifier = model.predictor.model
        members = classifier.members
        pooled = torch.stack([rows[(key, s)] for job in ok for ex in job.examples for s in ex])
        embedding = pooled.view(-1, members, pooled.shape[-1]).mean(1)  # the member mean ProteinClassifier takes
        logits = classifier.head(embedding.to(classifier.head.net[1].weight.dtype))
        probs = TASKS[model.task].probabilities(torch.sigmoid(logits.float()).numpy())
    except Exception as err:
        for job in ok:
            job.future.set_exception(err)
        return
    start = 0
    for job in ok:
        job.future.set_result(np.array(probs[start : start + len(job.examples)]))
        start += len(job.examples)


def forward_thread_setup(threads: int) -> Callable[[], None]:
    """The initializer of a forward thread: torch's intra-op threads for this thread (OpenMP's setting is per
    thread; without it every forward thread would use the process's count and oversubscribe the cores)."""

    def setup() -> None:
        torch.set_num_threads(max(1, threads))

    return setup
