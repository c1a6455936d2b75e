"""A user's DeepSpeed JSON (``engine.deepspeed_config``) is read and checked on the driver — a bad file is one
``file:line:column`` error before Ray starts — and travels to the workers as its content, so it need not exist on
their nodes. (ZeRO-3 across two nodes that see none of the driver's files: tests/cluster/test_cluster_zero3.py.)"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from protpeft.errors import ConfigError
from protpeft.trainer.deepspeed_engine import deepspeed_config
from protpeft.trainer.ray_launch import for_workers

pytestmark = pytest.mark.unit

USER = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}, "bf16": {"enabled": False}}


def test_a_json_only_the_driver_has_reaches_the_workers_as_content(make_config, tmp_path: Path) -> None:
    user_file = tmp_path / "driver-only" / "ds.json"
    user_file.parent.mkdir()
    user_file.write_text(json.dumps(USER))
    cfg = make_config("ppi", "full", "engine.strategy=deepspeed", f"engine.deepspeed_config={user_file}",
                      "optim.batch_size=4", "optim.grad_accum=2", small=True)  # fmt: skip
    shipped = pickle.loads(pickle.dumps(for_workers(cfg)))  # what the worker function receives
    user_file.unlink()  # a worker node has no such file

    assert shipped.engine.deepspeed_config == USER
    ds = deepspeed_config(shipped, world_size=2, dtype=torch.float32)
    assert ds["zero_optimization"] == USER["zero_optimization"]  # the user's settings ...
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (4, 4 * 2 * 2)  # ... our batch sizes
    assert shipped.engine.deepspeed_config == USER  # the run's config is not changed by building DeepSpeed's
    assert shipped.to_dict()["engine"]["deepspeed_config"] == USER  # recorded in the run's resolved config


def test_a_bad_json_is_one_file_line_error_before_ray_starts(tiny_model: Path, small_ppi: dict, tmp_path: Path):
    user_file = tmp_path / "ds.json"
    user_file.write_text('{\n  "zero_optimization": {\n    "stage": 3,\n  }\n}\n')  # trailing comma, line 4
    out = subprocess.run(
        [sys.executable, "-m", "protpeft", "train", "/dev/null", "--set", "mode=full", "--set",
         "engine.strategy=deepspeed", "--set", f"engine.deepspeed_config={user_file}",
         "--set", f"model.base={tiny_model}", "--set", f"data.pairs={small_ppi['pairs']}",
         "--set", f"data.sequences={small_ppi['sequences']}", "--set", "tracking.mlflow=false",
         "--set", f"output_dir={tmp_path / 'runs'}", "--address", "127.0.0.1:1"],  # no cluster there: never reached
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert f"{user_file}:4:3: invalid JSON in the DeepSpeed config" in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr  # one line, no Ray output


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1, 2]", "must be a JSON object"), ('{"scheduler": {"type": "WarmupLR"}}', "remove the 'scheduler' section")],
)
def test_unusable_content_is_refused_with_its_file(make_config, tmp_path: Path, content: str, message: str) -> None:
    user_file = tmp_path / "ds.json"
    user_file.write_text(content)
    cfg = make_config("ppi", "full", f"engine.deepspeed_config={user_file}", small=True)
    with pytest.raises(ConfigError, match=rf"{user_file}: .*{message}"):
        for_workers(cfg)


def test_inline_content_is_checked_where_the_yaml_says_it(tmp_path: Path) -> None:
    from protpeft.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("mode: full\nengine:\n  deepspeed_config:\n    scheduler: {type: WarmupLR}\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: engine.deepspeed_config: remove the 'scheduler' section"):
        load_config(path)
    path.write_text("mode: full\nengine:\n  deepspeed_config:\n    zero_optimization: {stage: 2}\n")
    assert load_config(path).engine.deepspeed_config == {"zero_optimization": {"stage": 2}}


def test_the_environments_ninja_and_extension_cache_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another ninja on PATH would discard the build log of the op `make install` compiled, and another environment's
    build in the shared extension cache would be rebuilt: either compiles the op again."""
    from protpeft.trainer.deepspeed_ops import use_environment_toolchain

    scripts = os.path.dirname(sys.executable)
    if not os.path.isfile(os.path.join(scripts, "ninja")) or sys.prefix == sys.base_prefix:
        pytest.skip(f"not in a virtual environment with its own ninja ({scripts})")
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin", scripts]))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    use_environment_toolchain()
    assert os.environ["PATH"].split(os.pathsep) == [scripts, "/usr/bin", "/bin"]  # moved, not repeated
    assert shutil.which("ninja") == os.path.join(scripts, "ninja")
    assert os.environ["TORCH_EXTENSIONS_DIR"] == os.path.join(sys.prefix, "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/elsewhere")
    use_environment_toolchain()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/elsewhere"  # the user's choice stands
