"""The DeepSpeed engine: ZeRO stages 0–3, optional CPU optimizer offload, bf16 on GPUs — behind the same Engine
interface as the plain and DDP engines, so the one loop does not know which it drives.

The DeepSpeed config is generated from ``optim`` + ``engine`` (or taken from the user's JSON — its content, read on
the driver before the run config travels to the workers — with batch sizes and clipping still from ``optim``). The
optimizer is our own AdamW over the trainable parameter groups (a client optimizer, so DeepSpeed builds no fused/CPU
Adam kernels) and the warm-up + decay schedule is ours too, handed to DeepSpeed so it steps at accumulation
boundaries. With CPU offload, DeepSpeed's CPU Adam is used instead (it is
what offload is for; its kernel is compiled on first use).

Inside Ray Train the engine reuses Ray's torch.distributed group; in one process it creates a 1-rank gloo group.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from protpeft.config import RunConfig, read_deepspeed_json
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.deepspeed_ops import use_environment_toolchain
from protpeft.trainer.engines import resolve_precision
from protpeft.trainer.optim import build_optimizer, build_scheduler, param_groups

__all__ = ["DeepSpeedEngine", "deepspeed_config"]

TAG = "deepspeed"
"""Sub-directory of a checkpoint that holds DeepSpeed's files (every rank writes its own shard there)."""


def deepspeed_config(cfg: RunConfig, world_size: int, dtype: torch.dtype) -> dict[str, Any]:
    """DeepSpeed's JSON config for this run: generated, or the user's (its content as the driver read it, or the
    file in a run of one process) with our batch sizes and clipping. The run config is left as it is.

    Raises:
        ConfigError: the user's file is unreadable, not JSON, or defines a scheduler (the schedule comes from
        ``optim``).
    """
    optim, engine = cfg.optim, cfg.engine
    user = engine.deepspeed_config
    if isinstance(user, dict):
        ds: dict[str, Any] = copy.deepcopy(user)
    elif user is not None:
        ds = read_deepspeed_json(user)
    else:
        zero: dict[str, Any] = {"stage": engine.zero_stage}
        if engine.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        ds = {"zero_optimization": zero, "bf16": {"enabled": dtype == torch.bfloat16}}
    ds.update(
        train_micro_batch_size_per_gpu=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        train_batch_size=optim.batch_size * optim.grad_accum * world_size,
        gradient_clipping=optim.grad_clip or 0.0,
    )
    ds.setdefault("steps_per_print", 2**31 - 1)  # our loop logs; keep DeepSpeed's own step log quiet
    ds.setdefault("zero_allow_untested_optimizer", True)
    return ds


def _ensure_process_group(ctx: WorkerContext) -> None:
    """DeepSpeed needs torch.distributed and the launcher's rank variables; outside Ray (one process) start a
    1-rank group on loopback: NCCL on a GPU (what DeepSpeed's CUDA collectives are written for; gloo lacks several
    of them for CUDA tensors), else gloo. Ray Train sets the variables itself; these defaults only fill gaps."""
    for key, value in (("LOCAL_RANK", ctx.local_rank), ("RANK", ctx.rank), ("WORLD_SIZE", ctx.world_size)):
        os.environ.setdefault(key, str(value))
    if dist.is_initialized():
        return
    if ctx.distributed:
        raise RuntimeError("DeepSpeedEngine with several workers needs an initialised torch.distributed group")
    from protpeft.trainer.ray_cluster import free_port

    backend = "nccl" if ctx.device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


def _meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are on the meta device (no memory) and whose buffers are real: the
    frame that ``consolidated`` fills with gathered full-precision weights after training."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


class DeepSpeedEngine:
    """A ``deepspeed.initialize``-d model behind the Engine interface.

    ``backward`` marks whether this micro-batch ends an accumulation window and lets DeepSpeed scale the loss by
    1/grad_accum itself (the loss is not divided here); ``engine.step()`` runs after every micro-batch as DeepSpeed
    requires, and only the boundary one updates weights, clips, and steps the schedule.
    """

    def __init__(self, model: nn.Module, cfg: RunConfig, total_steps: int, ctx: WorkerContext) -> None:
        import deepspeed

        _ensure_process_group(ctx)
        use_environment_toolchain()  # before DeepSpeed's CPU collectives load (or compile) their op
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)
        self.cfg, self.ctx = cfg, ctx
        self.dtype = resolve_precision(cfg.engine.precision, ctx.device)
        self.config = deepspeed_config(cfg, ctx.world_size, self.dtype)
        self.stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        # Full weights are rebuilt after training when the module does not hold them (ZeRO-3 shards, 16-bit copies).
        half = any(self.config.get(key, {}).get("enabled") for key in ("bf16", "fp16"))
        self._needs_gather = self.stage == 3 or half
        self._skeleton = _meta_skeleton(model) if self._needs_gather else None
        if self.stage == 3 and hasattr(model, "one_call"):
            # ZeRO-3 gathers parameters collectively at every module call: every rank must make the same number of
            # encoder calls per batch, whatever its share of distinct proteins.
            model.one_call = True
        optimizer = self._client_optimizer(model)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            model_parameters=param_groups(model, cfg.optim) if optimizer is None else None,
            lr_scheduler=lambda opt: build_scheduler(opt, cfg.optim, total_steps),
            config=self.config,
            dist_init_required=False,
        )
        self.model = self.engine

    def _client_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        """Our AdamW; DeepSpeed's CPU Adam under optimizer offload; None when the user's JSON names an optimizer."""
        if "optimizer" in self.config:
            return None
        offload = self.config.get("zero_optimization", {}).get("offload_optimizer", {})
        if offload.get("device") == "cpu":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optim = self.cfg.optim
            return DeepSpeedCPUAdam(param_groups(model, optim), lr=optim.lr, betas=optim.betas, adamw_mode=True)
        return build_optimizer(model, self.cfg.optim)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed holds bf16 weights itself when bf16 is on

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss)
        if not boundary:
            self.engine.step()  # a no-op update that keeps DeepSpeed's micro-step bookkeeping in line

    def step(self) -> None:
        self.engine.step()

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def unwrapped(self) -> nn.Module:
        """The trained model with full fp32 weights. Under ZeRO-3 or bf16 this gathers them: every rank must call
        it, and it returns a fresh plain module (not the one DeepSpeed trains)."""
        if not self._needs_gather:
            return self.engine.module
        return self.consolidated(self.engine.module)

    def consolidated_backbone(self, backbone: nn.Module) -> nn.Module:
        """A backbone whose ``save_pretrained`` writes the full fp32 weights (collective under ZeRO-3 / bf16).

        A backbone taken from ``unwrapped()``'s plain copy is already full and comes back as it is."""
        trained = any(m is backbone for m in self.engine.module.modules())
        return self.consolidated(backbone) if self._needs_gather and trained else backbone

    @torch.no_grad()
    def consolidated(self, module: nn.Module) -> nn.Module:
        """A plain copy of ``module`` (the trained model or one of its submodules) with full fp32 weights.

        Trainable parameters come from the optimizer's fp32 master copy; frozen ones are gathered as they are.
        """
        from deepspeed import zero
        from deepspeed.utils import safe_get_full_fp32_param

        root = self.engine.module
        prefix = next((name for name, m in root.named_modules() if m is module), None)
        if prefix is None:
            raise ValueError("consolidated() takes the trained model or one of its submodules")
        frame = self._skeleton if prefix == "" else self._skeleton.get_submodule(prefix)
        state: dict[str, torch.Tensor] = {}
        for name, param in module.named_parameters():
            full = safe_get_full_fp32_param(param) if param.requires_grad else None
            if full is None:
                with zero.GatheredParameters([param], modifier_rank=None, enabled=hasattr(param, "ds_id")):
                    full = param.detach().clone()
            state[name] = full.detach().to("cpu", torch.float32).clone()
        plain = copy.deepcopy(frame)
        plain.load_state_dict(state, strict=False, assign=True)
        leftover = [n for n, p in plain.named_parameters() if p.is_meta]
        if leftover:
            raise RuntimeError(f"could not gather the full weights of {leftover[:5]}")
        return plain.float()

    def save(self, directory: Path, ctx: WorkerContext) -> None:
        """Every rank writes its shard (and rank 0 the module states) under ``directory/deepspeed``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(directory), tag=TAG, save_latest=False, exclude_frozen_parameters=True)

    def load(self, directory: Path) -> None:
        if not (directory / TAG).is_dir():
            raise RuntimeError(f"{directory} holds no DeepSpeed checkpoint (was the run trained with another engine?)")
        path, _ = self.engine.load_checkpoint(str(directory), tag=TAG, load_module_strict=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {directory}")
