"""Process-group helpers for ``torchrun`` (env:// init; gloo on the CPU, nccl on CUDA)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from ..core import SlimmableModule, convert_slim_sync_batchnorm

__all__ = [
    "init_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "resolve_device",
    "convert_sync_bn",
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


def convert_sync_bn(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """``train.sync_bn``: convert ``model``'s BatchNorm layers to synchronize their statistics
    over the processes; returns the model (see
    :func:`~mutualnet_video.core.sync_bn.convert_slim_sync_batchnorm`).

    Slimmable BatchNorm layers become :class:`~mutualnet_video.core.sync_bn.SlimSyncBatchNorm`
    (per-width slicing and per-config statistics kept; works with gloo and nccl). Plain
    ``nn.BatchNorm`` layers become ``nn.SyncBatchNorm``, which PyTorch runs on CUDA only:
    on another device (``device`` not CUDA) they are refused with a ``ValueError`` naming one.
    """
    plain = [name for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SlimmableModule)]
    if plain and device is not None and device.type != "cuda":
        raise ValueError(
            f"train.sync_bn: {len(plain)} plain BatchNorm layers (e.g. {plain[0]}) would become nn.SyncBatchNorm, "
            f"which PyTorch supports on CUDA only (device {device}); set train.sync_bn=false"
        )
    return convert_slim_sync_batchnorm(model)


