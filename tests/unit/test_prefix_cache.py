"""The LoRA prefix cache is exact: training on cached states of the frozen layers gives the same losses and the
same trained adapter and head as computing them every step (fp32, within 1e-5), for both tasks, one process and
two; the cache is filled once across jobs and its budget falls back to computing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parity import train_losses

from protpeft.trainer.ray_cluster import free_port
from protpeft.trainer.run import run_training

pytestmark = pytest.mark.unit

STEPS = ["optim.max_steps=6", "engine.log_every=1", "lora.last_layers=2", "optim.lr=1e-3", "optim.batch_size=8"]
"""lr 1e-3: trained weights are compared in absolute terms, and AdamW normalises each element's gradient, so an element
whose gradient nearly cancels moves by up to lr x its gradient's relative float noise. At lr 5e-3 one element of 512 in
a lora_A ended 1.1e-5 apart while every loss agreed to 3e-8; at 1e-3 the largest difference is 3.7e-7."""


def _trained(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")}


def assert_same_training(on, off) -> None:
    assert on.state.step == off.state.step == 6
    assert train_losses(on.run_dir) == pytest.approx(train_losses(off.run_dir), abs=1e-5)
    a, b = _trained(on.model), _trained(off.model)
    assert a.keys() == b.keys() and any("lora_" in n for n in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
    assert on.metrics["test_loss"] == pytest.approx(off.metrics["test_loss"], abs=1e-5)


@pytest.mark.parametrize("task", ["ppi", "symmetry"])
def test_cache_on_trains_exactly_as_off(make_config, tmp_path: Path, task: str) -> None:
    common = [*STEPS, f"data.cache_dir={tmp_path / 'cache'}"]
    off = run_training(make_config(task, "lora", *common, "data.prefix_cache=off", name="off", small=True))
    on = run_training(make_config(task, "lora", *common, name="on", small=True))
    assert off.embedded_sequences == 0 and on.embedded_sequences > 0
    # layer 0 computed each sequence once (filling) with the cache; every row of every step and evaluation without
    assert on.prefix_forwards == on.embedded_sequences and off.prefix_forwards >= 6 * 8
    assert any(
        n.startswith("prefix cache on: layers 0..1 of 4")
        for n in json.loads((on.run_dir / "protpeft.json").read_text())["data_notes"]
    )
    assert_same_training(on, off)  # the states were written, then read back memory-mapped


def test_cache_says_why_it_is_off(make_config, tmp_path: Path) -> None:
    cfg = make_config("ppi", "lora", *STEPS, "lora.layers=[0,3]", f"data.cache_dir={tmp_path}", small=True)
    result = run_training(cfg)
    notes = json.loads((result.run_dir / "protpeft.json").read_text())["data_notes"]
    assert "prefix cache off: layer 0 holds trainable parameters (no frozen layers to cache)" in notes
    assert result.embedded_sequences == 0 and not list(tmp_path.glob("prefix-*"))


def test_two_ranks_train_exactly_as_off_and_fill_disjoint_shares(make_config, tmp_path: Path) -> None:
    """Two processes in one gloo group (the process group Ray Train gives its workers, without Ray): DDP with the
    cache matches DDP without it, the ranks split the filling, and ranks that do not share a disk each fill their
    node's copy (the prefix cache, and frozen mode's embedding cache alike)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = [*STEPS, f"data.cache_dir={tmp_path / 'cache'}", "engine.strategy=ddp"]
    configs = [
        make_config("ppi", "lora", *common, "data.prefix_cache=off", name="off", small=True),
        make_config("ppi", "lora", *common, name="on", small=True),
        make_config(
            "ppi",
            "lora",
            *STEPS,
            f"data.cache_dir={tmp_path / 'local'}",
            "engine.strategy=ddp",
            name="nodes",
            small=True,
        ),
        make_config(
            "ppi",
            "frozen",
            *STEPS,
            f"data.cache_dir={tmp_path / 'local'}",
            "engine.strategy=ddp",
            name="nodes-frozen",
            small=True,
        ),  # fmt: skip
    ]
    script = Path(__file__).with_name("prefix_ranks.py")
    port, out = str(free_port()), str(tmp_path / "out")
    raw = [json.dumps(c.to_dict()) for c in configs]
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", port, out, *raw]) for r in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    summaries = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]
    off, on, nodes, _ = summaries[0]
    assert on["steps"] == off["steps"] == nodes["steps"] == 6
    assert on["losses"] == pytest.approx(off["losses"], abs=1e-5)
    assert nodes["losses"] == pytest.approx(off["losses"], abs=1e-5)
    computed = [s[1]["computed"] for s in summaries]
    shards = list((tmp_path / "cache").glob("prefix-*/shard-*.safetensors"))
    stored = [name for shard in shards for name in load_file(shard)]
    assert min(computed) > 0 and sum(computed) == len(stored) == len(set(stored))  # each its share, none twice
    # without a shared disk each node fills its own copy: its rank's share, then the rest
    for r in range(2):
        node = [
            n for shard in (tmp_path / "local").glob(f"node{r}/prefix-*/shard-*.safetensors") for n in load_file(shard)
        ]
        assert summaries[r][2]["computed"] == len(node) == len(set(node)) == len(stored)
        embedded = [n for shard in (tmp_path / "local").glob(f"node{r}/*/shard-*.safetensors")
                    if not shard.parent.name.startswith("prefix-") for n in load_file(shard)]  # fmt: skip
        assert summaries[r][3]["steps"] == 6 and summaries[r][3]["computed"] == len(embedded) == len(stored)
    for r in range(2):
        tensors = load_file(f"{out}.rank{r}.safetensors")
        names = [n.split("/", 1)[1] for n in tensors if n.startswith("0/")]
        assert any("lora_" in n for n in names)
        for name in names:
            for run in ("1", "2"):
                torch.testing.assert_close(tensors[f"{run}/{name}"], tensors[f"0/{name}"], atol=1e-5, rtol=0)


FILL = """
import sys, torch
from protpeft.config import LoraConfig
from protpeft.data.tokens import TokenEncoder
from protpeft.models.backbone import load_backbone, load_tokenizer
from protpeft.models.modes import inject_lora
from protpeft.models.prefix import PrefixEncoder
from protpeft.prefix_cache import PrefixCache

model, root, seqs = sys.argv[1], sys.argv[2], sys.argv[3:]
backbone = inject_lora(load_backbone(model), LoraConfig(last_layers=2))
tokens = TokenEncoder(load_tokenizer(model))
prefix = PrefixEncoder(backbone, 2, "mean", tokens.special_ids, None).prefix
cache = PrefixCache(root, "fp", 2, 1024, torch.float32, max_gb=1.0)
print(cache.fill(seqs, tokens, prefix, 4, torch.device("cpu")))
"""


def _sequences(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    return ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(5, 60))) for _ in range(n)]


def test_concurrent_jobs_fill_each_sequence_once(tiny_model: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    seqs = _sequences(24)
    cmd = [sys.executable, "-c", FILL, str(tiny_model), str(tmp_path), *seqs]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    counts = sorted(int(p.communicate(timeout=300)[0].split()[-1]) for p in procs)
    assert counts == [0, 24]  # the second job waited on the lock and found everything


def test_budget_and_misses_fall_back_to_the_exact_prefix(tiny_model: Path, tmp_path: Path) -> None:
    from protpeft.config import LoraConfig
    from protpeft.data.tokens import TokenEncoder
    from protpeft.models.backbone import load_backbone, load_tokenizer
    from protpeft.models.modes import inject_lora
    from protpeft.models.prefix import PrefixEncoder, prefix_forward
    from protpeft.prefix_cache import PrefixCache

    backbone = inject_lora(load_backbone(str(tiny_model)), LoraConfig(last_layers=2))
    tokens = TokenEncoder(load_tokenizer(str(tiny_model)))
    seqs = _sequences(10)
    prefix = PrefixEncoder(backbone, 2, "mean", tokens.special_ids, None).prefix
    fits = sum(tokens.length(s) for s in seqs[:4]) * 64 * 4  # bytes of the first four (fp32, hidden 64)
    cache = PrefixCache(tmp_path, "fp", 2, 1024, torch.float32, max_gb=(fits + 100) / 2**30)
    assert cache.fill(seqs, tokens, prefix, 3, torch.device("cpu")) == 4
    batch = tokens.batch(seqs)
    keys = [torch.from_numpy(tokens.encode(s)).to(torch.int16).numpy().tobytes() for s in seqs]
    assert [k in cache for k in keys] == [True] * 4 + [False] * 6

    def compute(rows: list[int]) -> list[torch.Tensor]:
        return prefix_forward(prefix, batch["input_ids"][rows], batch["attention_mask"][rows])

    states = cache.lookup(keys, compute)
    assert (cache.read, cache.computed) == (4, 6)
    for state, expected in zip(states, compute(list(range(10))), strict=True):
        torch.testing.assert_close(state, expected, atol=1e-5, rtol=0)
    again = cache.lookup(keys[:4], compute)  # read again: views of the memory map, no copy held
    assert (cache.read, cache.computed) == (8, 6)
    assert [a.data_ptr() for a in again] == [s.data_ptr() for s in states[:4]]


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def test_frozen_prefix_weights_live_in_one_shared_file_mapping(tiny_model: Path, tmp_path: Path) -> None:
    from protpeft.config import LoraConfig
    from protpeft.data.tokens import TokenEncoder
    from protpeft.models.backbone import load_backbone, load_tokenizer
    from protpeft.models.modes import inject_lora
    from protpeft.models.prefix import PrefixEncoder, prefix_forward
    from protpeft.prefix_cache import PrefixCache

    tokens = TokenEncoder(load_tokenizer(str(tiny_model)))
    batch = tokens.batch(_sequences(5))

    def encoder() -> PrefixEncoder:
        backbone = inject_lora(load_backbone(str(tiny_model)), LoraConfig(last_layers=2))
        cache = PrefixCache(tmp_path, "fp", 2, 1024, torch.float32, max_gb=1.0)
        return PrefixEncoder(backbone, 2, "mean", tokens.special_ids, cache.lookup, cache.map_frozen)

    first = encoder()
    params = first.prefix_parameters()
    assert {n.split(".")[0] for n in params} == {"embeddings", "encoder"}
    assert {n.split(".")[2] for n in params if n.startswith("encoder.")} == {"0", "1"}  # layers below k only
    want = prefix_forward(first.prefix, batch["input_ids"], batch["attention_mask"])
    assert first.map_prefix() == sum(p.nbytes for p in params.values()) > 0
    (file,) = tmp_path.glob("prefix-*/frozen-*.safetensors")
    ranges = _mapped_ranges(file)
    assert all(any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in params.values())
    got = prefix_forward(first.prefix, batch["input_ids"], batch["attention_mask"])
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)  # the same weights, read through the mapping
    written = file.stat().st_mtime_ns
    assert encoder().map_prefix() > 0 and file.stat().st_mtime_ns == written  # a later job maps the same file
    other = encoder()
    with torch.no_grad():
        next(iter(other.prefix_parameters().values())).add_(1.0)
    with pytest.raises(RuntimeError, match="other values"):
        other.map_prefix()


def test_cache_cli_lists_sizes_and_clears_both_kinds(tmp_path: Path) -> None:
    import subprocess
    import sys

    from safetensors.torch import save_file

    for name, tensors in {
        "prefix-abc-k2-crop1024-float32": {"s1": torch.zeros(3, 4), "s2": torch.zeros(5, 4)},
        "abc-mean-crop1024": {"s1": torch.zeros(4)},
    }.items():
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "shard-0.safetensors")

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "protpeft.cli", "cache", *args, "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    rows = {r["kind"]: r for r in json.loads(cli("ls", "--json"))}
    assert (rows["prefix"]["key"], rows["prefix"]["entries"]) == ("abc-k2-crop1024-float32", 2)
    assert (rows["embedding"]["key"], rows["embedding"]["entries"]) == ("abc-mean-crop1024", 1)
    sizes = json.loads(cli("du", "--json"))
    assert (
        sizes["total"] == sizes["prefix"] + sizes["embedding"] == rows["prefix"]["bytes"] + rows["embedding"]["bytes"]
    )
    assert "deleted 1 cache(s)" in cli("clear", "--kind", "prefix", "--yes")
    assert [p.name for p in tmp_path.iterdir()] == ["abc-mean-crop1024"]


def test_yaml_off_switches_the_cache_off(tmp_path: Path) -> None:
    from protpeft.config import load_config

    (tmp_path / "c.yaml").write_text("data:\n  prefix_cache: off\n")  # YAML 1.1 reads a bare off as false
    assert load_config(tmp_path / "c.yaml").data.prefix_cache == "off"
    assert load_config(None).data.prefix_cache == "auto"
