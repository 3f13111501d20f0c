"""Process-group helpers for ``torchrun`` (env:// init; gloo on the CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..core import SlimmableModule

__all__ = [
    "init_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "resolve_device",
    "check_sync_bn",
]


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def resolve_device(name: str) -> torch.device:
    """``auto``: ``cuda:<LOCAL_RANK>`` if CUDA is available, else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device: {name} requested but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def init_distributed(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE > 1``).

    Returns True if this call created the group (the caller destroys it at the end).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over the ranks (identity when not distributed)."""
    if get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def check_sync_bn(model: nn.Module) -> Any:
    """``train.sync_bn``: convert to ``SyncBatchNorm``, refusing slimmable BatchNorm.

    ``nn.SyncBatchNorm.convert_sync_batchnorm`` replaces each BatchNorm by a fresh
    ``nn.SyncBatchNorm``: a ``SlimBatchNorm`` would lose its slicing (it would fail at any
    width below 1) and its per-configuration statistics. Slimmable models therefore train
    with per-process batch statistics (the paper's setting); the statistics used at test
    time are recomputed per configuration by BN calibration after training anyway.
    """
    slim = [name for name, m in model.named_modules() if isinstance(m, SlimmableModule)
            and isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if slim:
        raise ValueError(
            f"train.sync_bn: not supported for slimmable models ({len(slim)} SlimBatchNorm layers, e.g. {slim[0]}): "
            "SyncBatchNorm would drop the per-width slicing and per-config statistics. Set train.sync_bn=false; "
            "per-config statistics are recalibrated after training (calibrate_bn)"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
