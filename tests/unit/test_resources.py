"""Engine defaults a run gets without asking: the CPUs of its Ray workers (``engine.cpus_per_worker=auto``) and the
engine ``engine.strategy=auto`` picks (never DeepSpeed for a single worker)."""

from __future__ import annotations

import pytest
import yaml

from protpeft.config import load_config
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import resolve_strategy
from protpeft.trainer.resources import auto_cpus, with_worker_cpus
from protpeft.tune.experiment import trial_capacity, with_trial_cpus
from protpeft.tune.space import search_from_dict

pytestmark = pytest.mark.unit


def test_auto_cpus_share_the_nodes_among_the_workers_that_run_at_once() -> None:
    assert auto_cpus(1, [2]) == 2  # a lone worker on a 2-core machine gets both cores (was 1)
    assert auto_cpus(2, [2]) == 1
    assert auto_cpus(3, [8, 8]) == 4  # 5 each would place only one worker per node
    assert auto_cpus(2, [0, 8, 8]) == 8  # a head without CPUs holds no worker
    assert auto_cpus(4, [2]) == 1  # does not fit at all: 1 each, and Ray queues as for any request


def test_a_run_resolves_auto_and_keeps_an_explicit_number() -> None:
    cfg = load_config(None, [])
    assert cfg.engine.cpus_per_worker == "auto"
    assert with_worker_cpus(cfg, [2]).engine.cpus_per_worker == 2
    assert with_worker_cpus(load_config(None, ["engine.workers=2"]), [2]).engine.cpus_per_worker == 1
    assert with_worker_cpus(cfg, [16], workers_at_once=4).engine.cpus_per_worker == 4  # run-many: 4 jobs
    explicit = load_config(None, ["engine.cpus_per_worker=1"])
    assert with_worker_cpus(explicit, [16]) is explicit


@pytest.mark.parametrize("value", ["0", "-1", "many", "true"])
def test_bad_cpus_per_worker_is_a_config_error(value: str) -> None:
    from protpeft.errors import ConfigError

    with pytest.raises(ConfigError, match="cpus_per_worker: must be a number of CPUs > 0 or auto"):
        load_config(None, [f"engine.cpus_per_worker={value}"])


def test_tune_trials_share_the_cluster_by_max_concurrent() -> None:
    base = {"config": {"task": "ppi", "mode": "lora", "name": "t", "optim": {"max_steps": 20}}}
    raw = base | {"search": {"max_concurrent": 2}, "space": {"lora.r": {"grid": [4, 8]}}}
    search = search_from_dict(raw, "inline.yaml")
    assert trial_capacity(search, {"CPU": 2}) == 2  # 2 trials x 1 CPU, as with the former default
    assert trial_capacity(search, {"CPU": 8}, [8]) == 2
    with_trial_cpus(search, [8])
    assert search.trial_config({"lora.r": 4}).engine.cpus_per_worker == 4  # every trial reads the resolved value
    single = search_from_dict(yaml.safe_load(yaml.safe_dump(raw)) | {"search": {"max_concurrent": 1}}, "one.yaml")
    with_trial_cpus(single, [2])
    assert single.trial_config({"lora.r": 4}).engine.cpus_per_worker == 2
    assert trial_capacity(single, {"CPU": 2}) == 1


@pytest.mark.parametrize(
    ("mode", "strategy", "world_size", "expected"),
    [
        ("full", "auto", 1, "local"),  # a 1-worker Ray run: plain PyTorch, not DeepSpeed ZeRO-2
        ("full", "auto", 2, "deepspeed"),
        ("lora", "auto", 1, "local"),
        ("lora", "auto", 2, "ddp"),
        ("frozen", "auto", 2, "ddp"),
        ("full", "deepspeed", 1, "deepspeed"),  # asked for explicitly
        ("lora", "local", 2, "local"),
    ],
)
def test_auto_strategy(mode: str, strategy: str, world_size: int, expected: str) -> None:
    cfg = load_config(None, [f"mode={mode}", f"engine.strategy={strategy}"])
    assert resolve_strategy(cfg, WorkerContext(rank=0, world_size=world_size)) == expected


def test_every_run_polls_its_train_controller_every_half_second_unless_the_user_says_otherwise(monkeypatch) -> None:
    """Ray's 2 s default paced short steps on a joined cluster (each checkpoint and live report waited for a poll);
    the value is set where the trainer is built, so a Tune trial's actor and a joined cluster's driver get it too."""
    from protpeft.trainer.ray_cluster import train_env

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert train_env() == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    assert train_env() == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "3"}


def test_free_ports_come_from_below_the_ephemeral_range_where_the_kernel_hands_none_out() -> None:
    """A dashboard or test server binds its port seconds after it was picked; a port from ``bind(0)`` could meanwhile
    go to any Ray worker starting on the machine (each binds its gRPC port that way)."""
    import socket

    from protpeft.trainer.ray_cluster import QUIET_PORTS, _ephemeral_low, free_port

    ports = [free_port() for _ in range(20)]
    assert all(port in QUIET_PORTS and port < _ephemeral_low() for port in ports), ports
    assert len(set(ports)) > 1  # picked at random, not the same port for every caller
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # free when returned


def test_free_ports_do_not_follow_the_training_seed() -> None:
    """Training seeds Python's ``random`` (``seed_everything``): two processes that trained with the same seed must
    not then pick the same ports (two test workers did, and one killed the other's processes as its server's)."""
    import random

    from protpeft.trainer.ray_cluster import free_port

    picks = []
    for _ in range(2):
        random.seed(0)
        picks.append([free_port() for _ in range(8)])
    assert picks[0] != picks[1]
