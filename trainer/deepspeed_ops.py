"""Build ahead of time the DeepSpeed op that every DeepSpeed run on CPU loads: ``python -m
protpeft.trainer.deepspeed_ops`` (``make install`` runs it).

DeepSpeed is installed without prebuilt ops (``DS_BUILD_OPS=0``); its communication backend JIT-compiles its
shared-memory collectives (``deepspeed_shm_comm``) into torch's extension cache the first time a process group starts
on CPU, which costs the first full fine-tuning run 1-2 minutes of compiling on a small machine. Building it here moves
that cost to installation. On a GPU machine the op is not used and nothing is built.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def use_environment_toolchain() -> None:
    """Build and find the op with this environment's own tools and cache, so that ``make install``'s build is the
    one every later process loads (a rebuild costs 35-100 CPU-seconds):

    - this interpreter's scripts directory first on ``PATH`` where it holds ``ninja``: torch compiles with the first
      ``ninja`` on ``PATH``, and two ninja versions discard each other's build log (a system ninja, a venv not
      activated);
    - in a virtual environment, its own extension cache (``TORCH_EXTENSIONS_DIR``, unless set): torch's default,
      ``~/.cache/torch_extensions``, is shared by all of a user's environments, and an op built against another
      environment's torch headers is rebuilt, which in turn makes that environment rebuild its own (a second
      checkout's environment on the machine made a test-suite run rebuild it mid-suite).
    """
    scripts = str(Path(sys.executable).parent)
    if (Path(scripts) / "ninja").is_file():
        rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != scripts]
        os.environ["PATH"] = os.pathsep.join([scripts, *rest])
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


def build_cpu_comm_op() -> str:
    """Compile (or find already compiled) DeepSpeed's CPU shared-memory collectives; returns what happened."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return f"accelerator {get_accelerator().device_name()}: no CPU op to build"
    from deepspeed.comm.torch import build_shm_op

    use_environment_toolchain()
    started = time.monotonic()
    op = build_shm_op()
    if op is None:
        return "DeepSpeed's shared-memory op is not compatible with this machine: CPU runs use torch's collectives"
    return f"DeepSpeed's CPU collectives ready ({time.monotonic() - started:.0f} s)"


def main() -> int:
    try:
        print(build_cpu_comm_op())
    except Exception as err:  # a missing compiler: DeepSpeed will say the same, later, in the first full run
        print(f"warning: DeepSpeed's CPU op was not built ahead ({type(err).__name__}: {err})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
