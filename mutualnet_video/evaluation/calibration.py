"""Post-statistics BatchNorm: running statistics recomputed for every configuration.

After mutual training the shared BN running buffers hold a mix of every sub-network's
statistics, which fits none of them. For each configuration, :func:`calibrate_bn` resets
the statistics and takes a cumulative average (``momentum=None``) over a few training
batches, in train mode with no gradient, then stores the result in each
:class:`~mutualnet_video.core.SlimBatchNorm` (``store_stats``). In eval mode a configuration
with stored statistics uses them (see ``SlimBatchNorm.forward``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..core import SlimBatchNorm, SubnetConfig, clip_for_config, current_config, get_space, set_config

__all__ = [
    "NotCalibratedError",
    "calibrate_bn",
    "batch_video",
    "default_input_fn",
    "missing_calibration",
    "check_calibrated",
    "CALIBRATE_HINT",
]

ModelInput = torch.Tensor | list[torch.Tensor]
InputFn = Callable[[Any, SubnetConfig], ModelInput]

CALIBRATE_HINT = (
    "calibrate it first: `python tools/test_net.py --config CONFIG --checkpoint CKPT --calibrate`, "
    "or `mutualnet_video.evaluation.calibrate_bn(model, train_batches, configs)`"
)


class NotCalibratedError(RuntimeError):
    """A configuration is evaluated without per-configuration BN statistics."""


def batch_video(batch: Any) -> torch.Tensor:
    """The decoded clip of a batch: a tensor itself, ``batch["video"]`` or ``batch[0]``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        if "video" not in batch:
            raise KeyError(f"batch dict has no 'video' key (keys: {sorted(batch)})")
        return batch["video"]
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"cannot find the clip in a batch of type {type(batch).__name__}: pass a tensor, a dict with "
        "'video', a (video, label) tuple, or an input_fn"
    )


def default_input_fn(model: nn.Module, device: torch.device | str | None) -> InputFn:
    """``(batch, cfg) -> input``: the batch's clip on ``device`` (default: the model's), cut
    for ``cfg`` by the model's space (``space.model_input``; ``clip_for_config`` without one)."""
    space = get_space(model)
    if device is None:
        param = next(model.parameters(), None)
        device = None if param is None else param.device

    def input_fn(batch: Any, cfg: SubnetConfig) -> ModelInput:
        video = batch_video(batch)
        if device is not None:
            video = video.to(device, non_blocking=True)
        return clip_for_config(video, cfg) if space is None else space.model_input(video, cfg)

    return input_fn


def _slim_bns(model: nn.Module) -> list[tuple[str, SlimBatchNorm]]:
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, SlimBatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


@torch.no_grad()
def calibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    configs: Sequence[SubnetConfig],
    *,
    num_batches: int = 9,
    input_fn: InputFn | None = None,
    device: torch.device | str | None = None,
) -> int:
    """Recompute and store the BN statistics of every configuration in ``configs``.

    For each of the first ``num_batches`` batches (decoded once), every configuration
    gets its input from that same batch (``clip_for_config`` with the model's
    ``slowfast_alpha``, or ``input_fn(batch, cfg)``) and runs a forward pass with the
    slimmable BN layers in train mode, ``momentum=None`` (cumulative average) over
    freshly reset statistics, and no gradient. Every other module stays in eval mode
    (dropout off, plain ``nn.BatchNorm`` layers use their running statistics), so the
    activations match those seen at evaluation. Afterwards each
    :class:`SlimBatchNorm` stores the average of its active slice for each
    configuration: the mean of the per-batch means and of the per-batch unbiased
    variances, exactly what ``nn.BatchNorm`` accumulates with ``momentum=None``.

    The shared running buffers, ``momentum``, ``num_batches_tracked``, every module's
    ``training`` flag and the model's active configuration are restored afterwards.

    Args:
        model: a slimmable model (with its space attached unless ``input_fn`` is given).
        batches: training batches: clips ``(N, C, T, H, W)`` (the full configuration's
            frames, times ``slowfast_alpha`` for SlowFast), dicts with ``"video"``, or
            ``(video, label)`` tuples.
        configs: the configurations to calibrate (validated against the model's space).
        num_batches: batches to average over (9 in the paper).
        input_fn: ``(batch, cfg) -> model input``; default: ``clip_for_config``.
        device: where batches are moved by the default ``input_fn`` (default: the model's).

    Returns:
        The number of batches used.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be positive, got {num_batches}")
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise ValueError("configs is empty: nothing to calibrate")
    space = get_space(model)
    if space is not None:
        for cfg in configs:
            space.validate(cfg)
    bns = _slim_bns(model)
    if not bns:
        raise TypeError(f"{type(model).__name__} has no SlimBatchNorm layer with running statistics to calibrate")
    plain = [n for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SlimBatchNorm)]
    if plain:
        warnings.warn(
            f"{len(plain)} plain BatchNorm layers (e.g. {plain[0]!r}) cannot keep statistics per "
            "configuration and are left as they are", stacklevel=3,
        )
    if input_fn is None:
        input_fn = default_input_fn(model, device)

    # Everything restored in `finally`.
    training = {m: m.training for m in model.modules()}
    saved = {
        name: (bn.running_mean.clone(), bn.running_var.clone(),
               None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone(), bn.momentum)
        for name, bn in bns
    }
    previous = current_config(model)

    # Per-configuration accumulators, starting from reset statistics.
    def fresh(bn: SlimBatchNorm) -> tuple[torch.Tensor, torch.Tensor, int]:
        return torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var), 0

    state = {cfg: {name: fresh(bn) for name, bn in bns} for cfg in configs}
    channels: dict[SubnetConfig, dict[str, int]] = {cfg: {} for cfg in configs}
    active: list[SubnetConfig] = []

    def record(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            seen = channels[active[0]].setdefault(name, args[0].shape[1])
            if seen != args[0].shape[1]:
                raise RuntimeError(f"{name}: called with {seen} and {args[0].shape[1]} channels in one configuration")
        return hook

    handles = [bn.register_forward_pre_hook(record(name)) for name, bn in bns]
    used = 0
    try:
        model.eval()
        for _, bn in bns:
            bn.train()
            bn.momentum = None
        for batch in batches:
            if used >= num_batches:
                break
            for cfg in configs:
                for name, bn in bns:
                    mean, var, count = state[cfg][name]
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
                    if bn.num_batches_tracked is not None:
                        bn.num_batches_tracked.fill_(count)
                active[:] = [cfg]
                set_config(model, cfg, validate=False)
                model(input_fn(batch, cfg))
                for name, bn in bns:
                    count = int(bn.num_batches_tracked) if bn.num_batches_tracked is not None else used + 1
                    state[cfg][name] = (bn.running_mean.clone(), bn.running_var.clone(), count)
            used += 1
        if used == 0:
            raise ValueError("calibrate_bn: `batches` yielded no batch")
        if used < num_batches:
            warnings.warn(f"calibrate_bn: only {used} of the {num_batches} batches asked for were available",
                          stacklevel=3)
        for cfg in configs:
            for name, bn in bns:
                if name not in channels[cfg]:  # layer unused at this configuration
                    continue
                c = channels[cfg][name]
                mean, var, _ = state[cfg][name]
                bn.store_stats(cfg, mean[:c], var[:c])
    finally:
        for handle in handles:
            handle.remove()
        for name, bn in bns:
            mean, var, count, momentum = saved[name]
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            if count is not None:
                bn.num_batches_tracked.copy_(count)
            bn.momentum = momentum
        for module, flag in training.items():
            module.training = flag
        set_config(model, previous, validate=False)
    return used


def missing_calibration(model: nn.Module, cfg: SubnetConfig) -> list[str]:
    """Names of the slimmable BN layers with no statistics stored for ``cfg``."""
    return [name for name, bn in _slim_bns(model) if not bn.has_stats(cfg)]


def check_calibrated(model: nn.Module, configs: Iterable[SubnetConfig]) -> None:
    """Raise :class:`NotCalibratedError` if any BN layer lacks statistics for a configuration.

    The message names the configuration, a layer, and how to calibrate.
    """
    for cfg in configs:
        missing = missing_calibration(model, cfg)
        if missing:
            raise NotCalibratedError(
                f"no calibrated BN statistics for configuration {cfg} (tag {cfg.tag}) in "
                f"{len(missing)} layers, e.g. {missing[0]!r}; {CALIBRATE_HINT}"
            )
