"""The serving model store without Ray: several versions on one shared tiny base answer like offline predictions,
the embedding cache changes no answer (cache on vs off over a request stream with repeats), forward calls mix
adapters row by row and run for different adapters on several threads at once."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from protpeft.deploy.embedding_lru import EmbeddingLRU
from protpeft.deploy.mixed_adapters import BASE, route_rows, routing_installed
from protpeft.deploy.model_store import ModelStore, PredictionJob
from protpeft.predict import Predictor
from protpeft.registry import ModelVersionInfo

pytestmark = pytest.mark.unit

AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def runs(tiny_model: Path, small_ppi: dict, small_symmetry: dict, tmp_path_factory) -> dict[str, Path]:
    """Two PPI LoRA adapters (other seeds and learning rates), a frozen PPI head and a symmetry adapter, all on the
    tiny base (a few steps each: the claim is equality, not quality)."""
    from protpeft.config import load_config
    from protpeft.trainer.run import run_training

    out = tmp_path_factory.mktemp("serving-runs")

    def run(name: str, task: str, mode: str, *extra: str) -> Path:
        data = ([f"data.pairs={small_ppi['pairs']}", f"data.sequences={small_ppi['sequences']}"] if task == "ppi"
                else [f"data.table={small_symmetry['table']}"])  # fmt: skip
        cfg = load_config(None, [f"name={name}", f"task={task}", f"mode={mode}", f"output_dir={out}",
                                 f"model.base={tiny_model}", "optim.batch_size=16", "optim.grad_accum=1",
                                 "optim.max_steps=3", "optim.lr=2e-2", "lora.last_layers=4", "tracking.mlflow=false",
                                 *data, *extra])  # fmt: skip
        return run_training(cfg).run_dir

    return {
        "lora-a": run("lora-a", "ppi", "lora"),
        "lora-b": run("lora-b", "ppi", "lora", "optim.seed=1", "lora.target_modules=[query,value]"),
        "frozen": run("frozen", "ppi", "frozen"),
        "sym": run("sym", "symmetry", "lora", "optim.seed=2"),
    }


@pytest.fixture
def make_store():
    """``make_store(**kwargs)`` → a ModelStore, closed (its model thread ended) after the test."""
    stores: list[ModelStore] = []
    yield lambda **kwargs: stores.append(ModelStore(**kwargs)) or stores[-1]
    for store in stores:
        store.close()


def version(name: str) -> ModelVersionInfo:
    return ModelVersionInfo(name, 1, (), None, "", "", "")


def load_all(store: ModelStore, runs: dict[str, Path]) -> dict:
    return {name: store.submit(store.load, f"{name}/1#1", version(name), run_dir).result()
            for name, run_dir in runs.items()}  # fmt: skip


def stream(n: int, proteins: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs drawn from ``proteins`` random proteins: most proteins recur, as in a screen."""
    rng = random.Random(seed)
    pool = ["".join(rng.choice(AMINO) for _ in range(rng.randint(8, 60))) for _ in range(proteins)]
    return [(rng.choice(pool), rng.choice(pool)) for _ in range(n)]


def answer(store: ModelStore, requests: list[tuple[object, list[tuple[str, ...]]]]) -> list[np.ndarray]:
    """Queue every request at once (they share passes, as under load) and wait for all."""
    jobs = [PredictionJob(model, examples) for model, examples in requests]
    store.predict_later(jobs)
    return [job.future.result(timeout=120) for job in jobs]


def offline(run_dir: Path, examples: list[tuple[str, ...]]) -> np.ndarray:
    return Predictor.from_run_dir(run_dir).predict_examples(examples, batch_size=1)


@pytest.mark.parametrize("forward_batch", [1, 4])
def test_cache_on_and_off_answer_alike_and_like_offline_predictions(runs, forward_batch, make_store):
    pairs = stream(60, 12)
    sequences = [(a,) for a, _ in pairs[:20]]
    answers, stores = {}, {}
    for size in (0, 1000):
        store = stores[size] = make_store(forward_threads=2, forward_batch=forward_batch, embedding_cache_size=size)
        models = load_all(store, runs)
        requests = []
        for i in range(0, len(pairs), 3):  # requests of 3 pairs, rotating over the PPI versions
            requests.append((models[("lora-a", "lora-b", "frozen")[(i // 3) % 3]], pairs[i : i + 3]))
        requests += [(models["sym"], sequences[i : i + 4]) for i in range(0, len(sequences), 4)]
        answers[size] = [a for i in range(0, len(requests), 5) for a in answer(store, requests[i : i + 5])]
    for off, on in zip(answers[0], answers[1000], strict=True):
        np.testing.assert_allclose(on, off, rtol=0, atol=1e-6)
    assert stores[0].cache.hits == 0 and len(stores[0].cache) == 0
    assert stores[1000].cache.hits > 0 and stores[1000].cache.misses > 0  # repeats were not encoded again
    assert stores[1000].counts.encoded == stores[1000].cache.misses < stores[0].counts.encoded

    ppi = answers[1000][: len(answers[1000]) - 5]
    for name_index, name in enumerate(("lora-a", "lora-b", "frozen")):
        rows = [i for i in range(0, len(pairs), 3) if (i // 3) % 3 == name_index]
        got = np.concatenate([ppi[i // 3] for i in rows])
        expected = offline(runs[name], [p for i in rows for p in pairs[i : i + 3]])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(answers[1000][-5:]), offline(runs["sym"], sequences), rtol=0, atol=1e-5)


def test_adapters_differ_and_mixed_calls_route_each_row_through_its_own(runs, make_store):
    store = make_store(forward_threads=1, forward_batch=8, embedding_cache_size=0)
    models = load_all(store, runs)
    base = models["lora-a"].base
    assert models["lora-b"].base is base and models["frozen"].base is base  # one copy of the base
    assert routing_installed(base.backbone)
    pairs = stream(6, 12, seed=3)
    # one pass, one call of up to 8 rows mixing both adapters and the plain base
    a, b, frozen = answer(store, [(models["lora-a"], pairs), (models["lora-b"], pairs), (models["frozen"], pairs)])
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - frozen).max() > 1e-3
    for name, got in (("lora-a", a), ("lora-b", b), ("frozen", frozen)):
        np.testing.assert_allclose(got, offline(runs[name], pairs), rtol=0, atol=1e-5)
    assert store.counts.forward_calls < store.counts.encoded  # rows shared calls


def test_threads_route_their_own_adapters_concurrently(runs, make_store):
    store = make_store(forward_threads=1, embedding_cache_size=0)
    models = load_all(store, runs)
    encoder = models["lora-a"].predictor.model.encoder
    tokens = models["lora-a"].predictor.tokens
    inputs = tokens.batch(["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"] * 2)
    names = [models["lora-a"].adapter, models["lora-b"].adapter, BASE]
    with torch.inference_mode():
        alone = {}
        for name in names:
            with route_rows([name] * 2):
                alone[name] = encoder(**inputs)
        assert not torch.equal(alone[names[0]], alone[names[1]])
        mismatches: list[str] = []
        start = threading.Barrier(len(names))

        def work(name: str) -> None:
            start.wait()
            for _ in range(20):
                with route_rows([name] * 2):
                    if not torch.equal(encoder(**inputs), alone[name]):
                        mismatches.append(name)

        threads = [threading.Thread(target=work, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert mismatches == []


def test_a_released_version_leaves_the_cache_and_the_base():
    cache = EmbeddingLRU(3)
    rows = {(f"adapter:x~{i}|mean|1024", "MKT"): torch.full((4,), float(i)) for i in range(2)}
    cache.store(rows)
    cache.store({("base:f|mean|1024", s): torch.zeros(4) for s in ("A", "C")})
    assert len(cache) == 3  # capacity: the oldest went
    assert set(cache.lookup([("adapter:x~1|mean|1024", "MKT"), ("adapter:x~0|mean|1024", "MKT")])) == {
        ("adapter:x~1|mean|1024", "MKT")
    }
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.forget("adapter:x~1|") == 1 and len(cache) == 2
    assert EmbeddingLRU(0).store(rows) is None and len(EmbeddingLRU(0)) == 0


def test_release_drops_a_versions_embeddings_and_keeps_the_others(runs, make_store):
    store = make_store(embedding_cache_size=100)
    models = load_all(store, runs)
    pairs = stream(4, 6, seed=5)
    answer(store, [(models[n], pairs) for n in ("lora-a", "lora-b", "frozen")])
    keys = {k[0].split("|")[0] for k in store.cache._entries}
    assert keys == {models[n].encoder_id for n in ("lora-a", "lora-b", "frozen")}
    store.submit(store.release, models["lora-a"]).result()
    assert {k[0].split("|")[0] for k in store.cache._entries} == keys - {models["lora-a"].encoder_id}
    np.testing.assert_allclose(answer(store, [(models["lora-b"], pairs)])[0], offline(runs["lora-b"], pairs), rtol=0,
                               atol=1e-5)  # fmt: skip
    with pytest.raises(RuntimeError, match="released"):
        answer(store, [(models["lora-a"], pairs)])


def test_a_protein_is_encoded_once_however_many_requests_wait_for_it(runs, make_store):
    store = make_store(forward_threads=2, embedding_cache_size=0)  # no cache: only sharing calls can save work
    models = load_all(store, runs)
    pair = stream(1, 2, seed=9)
    jobs = [PredictionJob(models["lora-a"], pair) for _ in range(6)]
    for job in jobs:  # separate takes, while the first calls are still queued or running
        store.predict_later([job])
    answers = [job.future.result(timeout=120) for job in jobs]
    assert store.counts.encoded == len(set(pair[0])) and store.counts.requests == 6
    assert all(np.array_equal(a, answers[0]) for a in answers)
    np.testing.assert_allclose(answers[0], offline(runs["lora-a"], pair), rtol=0, atol=1e-5)
