"""The model store of a Serve replica: one copy of each base model, the LoRA adapters injected into it, the
embedding cache, and the one model thread every model operation runs on (no Ray here: one process).

A **shared base** per base fingerprint is loaded once; every LoRA version trained on it is a named peft adapter
(``PeftModel.from_pretrained(base, dir, adapter_name=…)``, then ``load_adapter``); frozen versions use the base with
no adapter; each version keeps its own classification head. Full fine-tuning versions carry their own backbone and
are loaded separately. No adapter is ever *switched*: each forward row names its adapter
(:mod:`~protpeft.deploy.mixed_adapters`), so calls for different adapters run at once on the forward threads.

Load, release and the prediction flow (:class:`~protpeft.deploy.prediction_pass.PredictionFlow`: requests taken,
forward calls handed to the forward threads, answers when they return) run on the model thread in submission order.
Loading and releasing change the shared modules, so they first wait for the forward calls in flight; a release
queued behind a prediction never pulls the adapter from under it.
"""

import asyncio
import itertools
import logging
import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from protpeft.artifact import RunArtifact, read_artifact
from protpeft.base_location import resolve_base
from protpeft.deploy.schemas import StorageReport
from protpeft.models.assembly import assemble_task_model, load_checked_base
from protpeft.models.backbone import load_tokenizer
from protpeft.predict import Predictor
from protpeft.registry import ModelVersionInfo

from .embedding_lru import DEFAULT_EMBEDDING_CACHE_SIZE, EmbeddingLRU
from .mixed_adapters import BASE, install_routing
from .prediction_pass import ModelReleased, PredictionFlow, PredictionJob, forward_thread_setup

__all__ = ["ModelReleased", "ModelStore", "PredictionJob", "ServedModel", "SharedBase"]

log = logging.getLogger("ray.serve")
T = TypeVar("T")


class SharedBase:
    """One base backbone in memory and the LoRA adapters injected into it."""

    def __init__(self, fingerprint: str, location: str, backbone, tokenizer) -> None:
        self.fingerprint = fingerprint
        self.location = location
        self.backbone = backbone.eval()
        self.tokenizer = tokenizer
        self.peft = None  # the PeftModel wrapping ``backbone`` while it holds adapters
        self.users: set[str] = set()  # adapter names / frozen model ids using this base

    def add_adapter(self, run_dir: Path, name: str) -> None:
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.backbone, run_dir, adapter_name=name)
        else:
            self.peft.load_adapter(run_dir, adapter_name=name)
        self.peft.eval()
        install_routing(self.backbone)  # peft injected its layers into ``backbone`` itself

    def remove_adapter(self, name: str) -> None:
        if self.peft is None or name not in self.peft.peft_config:
            return
        if len(self.peft.peft_config) == 1:  # peft cannot delete its last adapter cleanly: unwrap instead
            self.peft.unload()
            self.peft = None
        else:
            with warnings.catch_warnings():  # "adapter X was active which is now deleted": expected, another is set
                warnings.simplefilter("ignore", UserWarning)
                self.peft.delete_adapter(name)


@dataclass(eq=False)
class ServedModel:
    """One registered version, ready to predict."""

    model_id: str
    info: ModelVersionInfo
    task: str
    label_names: tuple[str, ...]
    predictor: Predictor | None
    """Dropped on release, so that an evicted shell keeps no weights alive."""
    base: SharedBase | None
    """None for full fine-tuning (own backbone)."""
    adapter: str | None
    store: "ModelStore"
    encoder_id: str
    """What computes its pooled representations: ``adapter:<name>``, ``base:<fingerprint>`` (frozen versions share
    it) or ``own:<id>`` (full fine-tuning)."""
    released: bool = False

    labels = Predictor.labels  # reads only ``task`` and ``label_names``: usable after a release too

    @property
    def encoder_key(self) -> str:
        """The embedding cache's key for this model's encoder: the encoder, its pooling and its crop."""
        artifact = self.predictor.artifact
        return f"{self.encoder_id}|{artifact.pooling}|{artifact.crop}"

    @property
    def call_group(self) -> tuple:
        """Models whose sequences may share a forward call: one backbone, pooling and crop (adapters may differ)."""
        artifact = self.predictor.artifact
        return id(self.predictor.model.encoder.backbone), artifact.pooling, artifact.crop

    def row_adapter(self) -> str | None:
        """This model's name in a call's ``adapter_names`` (None: its backbone has no LoRA layers)."""
        if self.base is None or self.base.peft is None:
            return None
        return self.adapter or BASE

    def __del__(self) -> None:
        # ``@serve.multiplexed`` calls __del__ when it evicts a model (and the garbage collector may call it again,
        # anywhere); the release is queued on the model thread, behind any prediction already submitted for it.
        if not self.released:
            self.store.submit(self.store.release, self)


class ModelThread:
    """One thread running submitted calls in submission order.

    Not a ``ThreadPoolExecutor``: its ``submit`` takes a module-global lock, and ``ServedModel.__del__`` submits
    (a release) whenever the garbage collector runs it, which may be inside another ``submit`` on the same thread
    (a deadlock). ``queue.SimpleQueue.put`` is reentrant: safe from ``__del__``.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, fn, args))
        return future

    def stop(self) -> None:
        """End the thread after what is queued now (callers of later submissions wait forever: none expected)."""
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # the caller sees it; the thread goes on
                future.set_exception(err)


class ModelStore:
    """Served versions, the shared bases under them and the embedding cache. Call its methods through
    :meth:`submit`/:meth:`call` (the model thread).

    Args:
        forward_threads: forward calls run concurrently on this many threads, torch's intra-op threads
            (the replica's CPUs) shared out among them: on CPU, concurrent small calls beat one thread on large ones
            (padding, and matmuls too small to scale).
        forward_batch: sequences per forward call.
        pass_examples: examples the model thread takes from the waiting requests at once (a larger request goes
            alone).
        embedding_cache_size: entries of the :class:`~protpeft.deploy.embedding_lru.EmbeddingLRU` (0: off).
    """

    def __init__(self, base_override: str | None = None, workdir: str | None = None, *, forward_threads: int = 1,
                 forward_batch: int = 1, pass_examples: int = 64,
                 embedding_cache_size: int = DEFAULT_EMBEDDING_CACHE_SIZE) -> None:  # fmt: skip
        import torch

        self.base_override = base_override
        self.workdir = Path(workdir) if workdir else None
        self.bases: dict[str, SharedBase] = {}
        self.models: dict[str, ServedModel] = {}
        self.cache = EmbeddingLRU(embedding_cache_size)
        self.pass_examples = max(1, pass_examples)
        self._model_thread = ModelThread("protpeft-model")
        self._serial = itertools.count()
        self._waiting: deque[PredictionJob] = deque()
        self._waiting_lock = threading.Lock()
        self.forward_threads = max(1, forward_threads)
        self.threads_per_forward = max(1, torch.get_num_threads() // self.forward_threads)
        self._forwards = ThreadPoolExecutor(self.forward_threads, thread_name_prefix="protpeft-forward",
                                            initializer=forward_thread_setup(self.threads_per_forward))  # fmt: skip
        self.flow = PredictionFlow(self.cache, self._forwards, forward_batch, self.submit)
        self.counts = self.flow.counts

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._model_thread.submit(fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        self._model_thread.stop()
        self._forwards.shutdown(wait=False, cancel_futures=True)

    def adapter_count(self) -> int:
        """LoRA adapters injected into the shared bases now (read from any thread: a gauge)."""
        return sum(len(b.peft.peft_config) for b in list(self.bases.values()) if b.peft is not None)

    def predict_later(self, jobs: list[PredictionJob]) -> None:
        """Queue jobs for the model thread; their futures get (N, outputs) probabilities or the error.

        Each job queues one take, and a take hands every job waiting by then (up to ``pass_examples``; takes that
        find nothing left return at once) to the prediction flow: requests that arrived together share its forward
        calls, whichever models they address.
        """
        with self._waiting_lock:
            self._waiting.extend(jobs)
        for _ in jobs:
            self.submit(self._run_waiting)

    # ---- on the model thread

    def load(self, model_id: str, info: ModelVersionInfo, run_dir: Path) -> ServedModel:
        """Put a pulled (and verified) run directory into memory, sharing its base when one is loaded."""
        self.flow.quiesce()  # an adapter goes into modules that forward calls may be running through
        artifact = read_artifact(run_dir)
        mode = artifact.mode_spec
        base = adapter = None
        serial = next(self._serial)
        if mode.own_backbone:
            classifier, tokens = assemble_task_model(artifact, run_dir)
            encoder_id = f"own:{model_id}~{serial}"
        else:
            base = self._base_for(artifact, run_dir)
            if mode.adapter:
                adapter = f"{model_id}~{serial}"
                base.add_adapter(run_dir, adapter)
            base.users.add(adapter or model_id)
            classifier, tokens = assemble_task_model(
                artifact, run_dir, backbone=base.backbone, tokenizer=base.tokenizer
            )
            encoder_id = f"adapter:{adapter}" if adapter else f"base:{base.fingerprint}"
        predictor = Predictor(classifier, tokens, artifact)
        model = ServedModel(model_id, info, predictor.task, predictor.label_names, predictor, base, adapter, self,
                            encoder_id)  # fmt: skip
        self.models[model_id] = model
        log.info("loaded %s (%s, %s)", model_id, artifact.mode, f"base {base.fingerprint}" if base else "own backbone")
        return model

    def _base_for(self, artifact: RunArtifact, run_dir: Path) -> SharedBase:
        fingerprint = artifact.base_fingerprint
        if fingerprint in self.bases:
            return self.bases[fingerprint]
        # a run's base named relative to the directory it was launched from: as the serving driver sees it
        location = resolve_base(artifact, self.base_override, workdir=self.workdir, source=run_dir)
        backbone = load_checked_base(artifact, location, run_dir, given=bool(self.base_override))
        self.bases[fingerprint] = SharedBase(fingerprint, location, backbone, load_tokenizer(location))
        return self.bases[fingerprint]

    def release(self, model: ServedModel) -> None:
        """Drop a version: its adapter leaves the shared base, its cached embeddings go, and a base nobody uses any
        more is freed (with the frozen versions' embeddings on it)."""
        if model.released:
            return
        self.flow.quiesce()  # no forward call may run through the adapter while it is taken out
        model.released = True
        model.predictor = None
        if self.models.get(model.model_id) is model:
            del self.models[model.model_id]
        if not model.encoder_id.startswith("base:"):
            self.cache.forget(model.encoder_id + "|")
        base = model.base
        if base is not None:
            if model.adapter is not None:
                base.remove_adapter(model.adapter)
            base.users.discard(model.adapter or model.model_id)
            if not base.users:
                self.bases.pop(base.fingerprint, None)
                self.cache.forget(f"base:{base.fingerprint}|")
        log.info("released %s", model.model_id)

    def _run_waiting(self) -> None:
        taken: list[PredictionJob] = []
        size = 0
        with self._waiting_lock:
            while self._waiting and (not taken or size + len(self._waiting[0].examples) <= self.pass_examples):
                taken.append(self._waiting.popleft())
                size += len(taken[-1].examples)
        if taken:  # else an earlier call took this call's jobs
            self.flow.take(taken)

    def storage(self) -> StorageReport:
        """Parameter bytes measured on the tensors themselves, deduplicated by storage address."""
        seen: set[int] = set()
        base_bytes = separate = own_bytes = head_bytes = 0
        for model in self.models.values():
            classifier = model.predictor.model
            for name, param in classifier.encoder.backbone.named_parameters():
                if "lora_" in name:
                    continue
                size = param.numel() * param.element_size()
                separate += size if model.base is not None else 0
                if param.data_ptr() in seen:
                    continue
                seen.add(param.data_ptr())
                if model.base is not None:
                    base_bytes += size
                else:
                    own_bytes += size
            head_bytes += sum(p.numel() * p.element_size() for p in classifier.head.parameters())
        adapter_bytes = sum(
            p.numel() * p.element_size()
            for base in self.bases.values()
            for name, p in base.backbone.named_parameters()
            if "lora_" in name
        )
        return StorageReport(
            base_copies=len(self.bases), base_bytes=base_bytes, base_bytes_if_separate=separate,
            adapters=self.adapter_count(),
            adapter_bytes=adapter_bytes, head_bytes=head_bytes,
            own_backbones=sum(1 for m in self.models.values() if m.base is None), own_backbone_bytes=own_bytes,
            rss_bytes=_rss(), pid=os.getpid(),
        )  # fmt: skip


def _rss() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil comes with Ray; a report without RSS is still useful
        return None
