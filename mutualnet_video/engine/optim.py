"""Optimizer, weight-decay groups and the per-iteration LR schedule.

The schedule is a multiplier of the base LR built from fvcore's param schedulers:
linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` iterations, then a
cosine from 1 to ``min_lr_factor`` over the remaining iterations. It is a pure function
of the iteration, so resuming only needs the iteration count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)
from torch import nn

__all__ = ["param_groups", "build_optimizer", "lr_multiplier", "IterLRScheduler", "build_lr_scheduler"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def param_groups(
    model: nn.Module, *, weight_decay: float, exclude_bn_bias: bool = True, exclude_depthwise: bool = False
) -> list[dict[str, Any]]:
    """Two groups: ``{"params": decayed, "weight_decay": wd}`` and the rest with 0.

    Excluded from decay: parameters of normalization layers and every bias (if
    ``exclude_bn_bias``), depthwise conv weights (if ``exclude_depthwise``). Each group
    also lists its parameter ``names`` (for logging and tests).
    """
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            skip = (exclude_bn_bias and (isinstance(module, _NORM_TYPES) or name == "bias")) or (
                exclude_depthwise and _is_depthwise(module) and name == "weight"
            )
            (no_decay if skip else decay).append(param)
            (no_decay_names if skip else decay_names).append(full)
    groups = [{"params": decay, "weight_decay": weight_decay, "names": decay_names}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    return groups


def build_optimizer(model: nn.Module, optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW from the ``optim`` config section."""
    groups = param_groups(
        model,
        weight_decay=optim["weight_decay"],
        exclude_bn_bias=optim.get("wd_exclude_bn_bias", True),
        exclude_depthwise=optim.get("wd_exclude_depthwise", False),
    )
    for group in groups:
        group.pop("names")
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["nesterov"])
    if optim["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]))
    raise ValueError(f"optim.name: unknown optimizer {optim['name']!r} (sgd, adamw)")


def lr_multiplier(*, max_iters: int, warmup_iters: int = 0, warmup_factor: float = 0.1,
                  min_lr_factor: float = 0.0) -> ParamScheduler:
    """fvcore scheduler of the LR multiplier over ``where = iteration / max_iters``."""
    if max_iters < 1 or not 0 <= warmup_iters < max_iters:
        raise ValueError(f"need 0 <= warmup_iters < max_iters, got warmup_iters={warmup_iters}, max_iters={max_iters}")
    cosine = CosineParamScheduler(start_value=1.0, end_value=min_lr_factor)
    if warmup_iters == 0:
        return cosine
    fraction = warmup_iters / max_iters
    return CompositeParamScheduler(
        [LinearParamScheduler(start_value=warmup_factor, end_value=1.0), cosine],
        lengths=[fraction, 1.0 - fraction],
        interval_scaling=["rescaled", "rescaled"],
    )


class IterLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base_lr * multiplier(iteration / max_iters)``, stepped once per iteration.

    ``state_dict`` holds only numbers (``weights_only``-loadable).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iters: int,
                 last_epoch: int = -1) -> None:
        self._multiplier = multiplier
        self._max_iters = max_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        where = min(self.last_epoch / self._max_iters, 1.0)
        factor = self._multiplier(where)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch, "max_iters": self._max_iters}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("max_iters", self._max_iters) != self._max_iters:
            raise ValueError(
                f"LR schedule of the checkpoint runs {state_dict['max_iters']} iterations, this run "
                f"{self._max_iters}: resume with the same optim.max_iters/epochs"
            )
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim: Mapping[str, Any], max_iters: int) -> IterLRScheduler:
    mult = lr_multiplier(
        max_iters=max_iters, warmup_iters=optim["warmup_iters"], warmup_factor=optim["warmup_factor"],
        min_lr_factor=optim["min_lr_factor"],
    )
    return IterLRScheduler(optimizer, mult, max_iters)
