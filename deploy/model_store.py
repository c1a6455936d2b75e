"""The model store of a Serve replica: one copy of each base model, the LoRA adapters injected into it, and the
one model thread every model operation runs on (no Ray here: one process, one thread).

A **shared base** per base fingerprint is loaded once; every LoRA version trained on it is a named peft adapter
(``PeftModel.from_pretrained(base, dir, adapter_name=…)``, then ``load_adapter``), switched with ``set_adapter`` per
batch; frozen versions use the base with adapters disabled; each version keeps its own classification head. Full
fine-tuning versions carry their own backbone and are loaded separately. Load, predict and release run on the model
thread in submission order: adapters are switched on a shared module, so nothing may interleave.
"""

import asyncio
import itertools
import logging
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from protpeft.artifact import RunArtifact, read_artifact
from protpeft.base_location import resolve_base
from protpeft.deploy.schemas import (
    StorageReport,
)
from protpeft.models.assembly import assemble_task_model, load_checked_base
from protpeft.models.backbone import load_tokenizer
from protpeft.predict import Predictor
from protpeft.registry import ModelVersionInfo

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

    @contextmanager
    def active(self, adapter: str | None) -> Iterator[None]:
        """The backbone computes with ``adapter`` (None: the plain base, every adapter disabled)."""
        if adapter is not None:
            self.peft.set_adapter(adapter)
            yield
        else:
            with self.peft.disable_adapter() if self.peft is not None else nullcontext():
                yield


class ModelReleased(RuntimeError):
    """A prediction reached the model thread after its version was released (a reload raced it)."""


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
    released: bool = False

    labels = Predictor.labels  # reads only ``task`` and ``label_names``: usable after a release too

    def __del__(self) -> None:
        # ``@serve.multiplexed`` calls __del__ when it evicts a model; the release is queued on the model thread,
        # behind any prediction already submitted for it.
        if not self.released:
            try:
                self.store.submit(self.store.release, self)
            except RuntimeError:  # executor already shut down (process exit)
                pass


@dataclass(eq=False)
class PredictionJob:
    """One request's examples for one model, and the future its probabilities arrive on."""

    model: ServedModel
    examples: list[tuple[str, ...]]
    future: Future = field(default_factory=Future)


class ModelStore:
    """Served versions and the shared bases under them. Call its methods through :meth:`submit`/:meth:`call`."""

    def __init__(self, base_override: str | None = None, workdir: str | None = None, forward_threads: int = 1) -> None:
        self.base_override = base_override
        self.workdir = Path(workdir) if workdir else None
        self.bases: dict[str, SharedBase] = {}
        self.models: dict[str, ServedModel] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protpeft-model")
        self._serial = itertools.count()
        self._waiting: deque[PredictionJob] = deque()
        self._waiting_lock = threading.Lock()
        self.passes = self.passed_requests = 0
        # Forward passes of one model pass run on these threads, torch's intra-op threads shared out among them: on
        # CPU, concurrent small passes beat one thread on large ones (padding, and matmuls too small to scale).
        self.forward_threads = max(1, forward_threads)
        self._forwards = ThreadPoolExecutor(self.forward_threads, thread_name_prefix="protpeft-forward")
        if self.forward_threads > 1:
            import torch

            torch.set_num_threads(max(1, torch.get_num_threads() // self.forward_threads))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._executor.submit(fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._forwards.shutdown(wait=False, cancel_futures=True)

    def adapter_count(self) -> int:
        """LoRA adapters injected into the shared bases now (read from any thread: a gauge)."""
        return sum(len(b.peft.peft_config) for b in list(self.bases.values()) if b.peft is not None)

    def predict_later(self, jobs: list[PredictionJob], batch_size: int, pass_examples: int) -> None:
        """Queue jobs for the model thread; their futures get (N, outputs) probabilities or the error.

        Each job queues one pass, and a pass takes every job waiting by then (up to ``pass_examples``; passes that
        find nothing left return at once): requests that arrived while the model was busy share its next forward
        passes, however Serve cut them into batches.
        """
        with self._waiting_lock:
            self._waiting.extend(jobs)
        for _ in jobs:
            self.submit(self._run_waiting, batch_size, pass_examples)

    # ---- on the model thread

    def load(self, model_id: str, info: ModelVersionInfo, run_dir: Path) -> ServedModel:
        """Put a pulled (and verified) run directory into memory, sharing its base when one is loaded."""
        artifact = read_artifact(run_dir)
        mode = artifact.mode_spec
        base = adapter = None
        if mode.own_backbone:
            classifier, tokens = assemble_task_model(artifact, run_dir)
        else:
            base = self._base_for(artifact, run_dir)
            if mode.adapter:
                adapter = f"{model_id}~{next(self._serial)}"
                base.add_adapter(run_dir, adapter)
            base.users.add(adapter or model_id)
            classifier, tokens = assemble_task_model(
                artifact, run_dir, backbone=base.backbone, tokenizer=base.tokenizer
            )
        predictor = Predictor(classifier, tokens, artifact)
        model = ServedModel(model_id, info, predictor.task, predictor.label_names, predictor, base, adapter, self)
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
        """Drop a version: its adapter leaves the shared base, and a base nobody uses any more is freed."""
        if model.released:
            return
        model.released = True
        model.predictor = None
        if self.models.get(model.model_id) is model:
            del self.models[model.model_id]
        base = model.base
        if base is not None:
            if model.adapter is not None:
                base.remove_adapter(model.adapter)
            base.users.discard(model.adapter or model.model_id)
            if not base.users:
                self.bases.pop(base.fingerprint, None)
        log.info("released %s", model.model_id)

    def _run_waiting(self, batch_size: int, pass_examples: int) -> None:
        taken: list[PredictionJob] = []
        size = 0
        with self._waiting_lock:
            while self._waiting and (not taken or size + len(self._waiting[0].examples) <= pass_examples):
                taken.append(self._waiting.popleft())
                size += len(taken[-1].examples)
        if not taken:
            return  # an earlier pass took this call's jobs
        self.passes += 1
        self.passed_requests += len(taken)
        groups: dict[int, list[PredictionJob]] = {}
        for job in taken:
            groups.setdefault(id(job.model), []).append(job)
        for jobs in groups.values():
            try:
                probs = self.predict(jobs[0].model, [ex for job in jobs for ex in job.examples], batch_size)
            except Exception as err:
                for job in jobs:
                    job.future.set_exception(err)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(probs[start : start + len(job.examples)])
                start += len(job.examples)

    def predict(self, model: ServedModel, examples: list[tuple[str, ...]], batch_size: int) -> np.ndarray:
        if model.released or model.predictor is None:
            raise ModelReleased(f"{model.model_id} was released before its batch ran")
        context = model.base.active(model.adapter) if model.base is not None else nullcontext()
        with context:  # the adapter stays active until every forward pass of this call has returned
            if self.forward_threads == 1 or len(examples) <= batch_size:
                return self._forward(model.predictor, examples, batch_size)
            order = sorted(range(len(examples)), key=lambda i: max(len(s) for s in examples[i]))
            chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            parts = self._forwards.map(lambda c: self._forward(model.predictor, [examples[i] for i in c], batch_size),
                                       chunks)  # fmt: skip
            out = None
            for chunk, probs in zip(chunks, parts, strict=True):
                out = np.empty((len(examples), *probs.shape[1:]), probs.dtype) if out is None else out
                out[chunk] = probs
            return out

    @staticmethod
    def _forward(predictor: Predictor, examples: list[tuple[str, ...]], batch_size: int) -> np.ndarray:
        return predictor.predict_examples(examples, batch_size=batch_size)

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
