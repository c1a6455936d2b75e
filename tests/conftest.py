"""Shared fixtures: the tiny random ESM-2 checkpoint and the synthetic datasets, built once per test session."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ppi-dscript"

os.environ.update(
    # Ray's own metrics (OpenCensus export from every worker to its node's agent), Ray Train's metrics callbacks and
    # usage reports: nothing in the suite reads them, and every Ray process of every test paid for them (about 6 %
    # of a training run's CPU on this machine). Nodes and local instances the tests start inherit this environment.
    RAY_enable_metrics_collection="0",
    RAY_TRAIN_METRICS_ENABLED="0",
    RAY_USAGE_STATS_ENABLED="0",
)

CLUSTER_GROUP = "shared-nothing-cluster"
"""The cluster tests (``tests/cluster``) share one S3 server and one multi-node cluster: one group."""
LOCAL_RAY_GROUP = "local-ray"
"""The integration test modules that ask for the session's local Ray instance (the ``ray_local`` fixture) share it:
one group. Every other integration module (MLflow servers, Ray Serve, `mlflow models serve`) is a group of its
own, so its module-scoped fixtures are built once, on whichever worker is free."""
FIRST_UNIT_MODULE = "tests/unit/test_training.py"
"""The unit module that trains (six in-process runs, shared by its tests): first among the unit modules, so that it
starts while other modules can still fill the other worker, never last on one worker."""


@functools.cache
def _asks_for_local_ray(path: Path) -> bool:
    return "ray_local" in path.read_text()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Schedule the suite over ``make test``'s two pytest-xdist workers: the two groups above start first, one per
    worker (together most of the suite's CPU time; the two cores are busy from the start), and the other integration
    modules, then the unit modules, fill in wherever a group has ended. A module goes to one worker whole: its
    module-scoped fixtures and per-process caches (the trained runs of ``test_training.py``, ~45 s of training) are
    then built once, where spreading its tests had built them on both workers. Collection order,
    not xdist's largest-scope-first order, which would start a 15-test registry module before either group and queue
    the second group behind it. Not xdist's ``loadgroup``: it renames items through ``item._nodeid``, which pytest
    9.2 no longer reads, so its groups silently split over the workers (each then started its own cluster and Ray
    instance, and 2 cores ran four Ray clusters)."""
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath

    class FolderGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/")
            if len(parts) < 3 or parts[0] != "tests":
                return nodeid
            if parts[1] == "cluster":
                return CLUSTER_GROUP
            if parts[1] == "integration":
                module = nodeid.split("::", 1)[0]
                return LOCAL_RAY_GROUP if _asks_for_local_ray(root / module) else module
            return nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False
    return FolderGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move :data:`FIRST_UNIT_MODULE` before the other unit modules (the order scopes are handed out in)."""
    first = [item for item in items if item.nodeid.startswith(FIRST_UNIT_MODULE + "::")]
    if not first:
        return
    rest = [item for item in items if not item.nodeid.startswith(FIRST_UNIT_MODULE + "::")]
    at = next((i for i, item in enumerate(rest) if item.nodeid.startswith("tests/unit/")), len(rest))
    items[:] = rest[:at] + first + rest[at:]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's in-process torch gets its share of the CPUs: two workers with a thread per
    CPU each oversubscribe the cores, and OpenMP's spinning threads then slow in-process training by 10x or more."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep embedding caches and tokens of the test session out of the user's home directory."""
    os.environ.setdefault("PROTPEFT_CACHE", str(tmp_path_factory.mktemp("protpeft-cache")))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised ESM-2 (4 layers, hidden 64) with the real ESM vocabulary, written like a hub checkpoint."""
    from protpeft.models.backbone import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny-esm2"))


@pytest.fixture(scope="session")
def synth_ppi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Learnable synthetic PPI data (gold layout, split by protein): {"pairs": …, "sequences": …}."""
    from protpeft.data.synth import write_synthetic

    return write_synthetic("ppi", tmp_path_factory.mktemp("synth-ppi"))


@pytest.fixture(scope="session")
def synth_symmetry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Learnable synthetic symmetry table: {"table": …}."""
    from protpeft.data.synth import write_synthetic

    return write_synthetic("symmetry", tmp_path_factory.mktemp("synth-symmetry"))


@pytest.fixture(scope="session")
def small_ppi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """200 synthetic pairs, for tests whose claim does not need a model that learns: evaluating the default 1200
    would dominate a short run's time."""
    from protpeft.data.synth import write_synthetic

    return write_synthetic("ppi", tmp_path_factory.mktemp("small-ppi"), n=200)


@pytest.fixture(scope="session")
def small_symmetry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """100 synthetic symmetry rows (see ``small_ppi``)."""
    from protpeft.data.synth import write_synthetic

    return write_synthetic("symmetry", tmp_path_factory.mktemp("small-symmetry"), n=100)


@pytest.fixture
def make_config(tiny_model: Path, tmp_path: Path, request: pytest.FixtureRequest):
    """Build a RunConfig for the tiny model + synthetic data: ``make_config("ppi", "lora", "optim.lr=1e-3", ...)``.

    Defaults are small and fast (batch 16, no accumulation, 1 epoch); overrides win. ``small=True`` takes the
    small data sets (``small_ppi``, ``small_symmetry``) instead of the learnable ``synth_ppi`` / ``synth_symmetry``.
    """
    from protpeft.config import load_config

    def build(task: str = "ppi", mode: str = "lora", *overrides: str, name: str | None = None, small: bool = False):
        sets = ("small_ppi", "small_symmetry") if small else ("synth_ppi", "synth_symmetry")
        source = request.getfixturevalue(sets[0] if task == "ppi" else sets[1])
        data = (
            [f"data.pairs={source['pairs']}", f"data.sequences={source['sequences']}"]
            if task == "ppi"
            else [f"data.table={source['table']}"]
        )
        base = [
            f"task={task}",
            f"mode={mode}",
            f"name={name or f'{task}-{mode}'}",
            f"output_dir={tmp_path / 'runs'}",
            f"model.base={tiny_model}",
            "optim.batch_size=16",
            "optim.grad_accum=1",
            "optim.epochs=1",
            "lora.last_layers=4",
            "tracking.mlflow=false",
        ]
        return load_config(None, base + data + list(overrides))

    return build


@pytest.fixture(scope="session")
def dscript_data() -> Path:
    if not (SHARED_DATA / "ecoli_test.tsv").is_file():
        pytest.skip(f"real D-SCRIPT data not found at {SHARED_DATA} (../shared/data/ppi-dscript beside the checkout)")
    return SHARED_DATA
