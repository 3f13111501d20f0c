"""Synchronized BatchNorm for slimmable layers (``train.sync_bn: true``).

``nn.SyncBatchNorm.convert_sync_batchnorm`` would replace each :class:`SlimBatchNorm` by a
fresh ``nn.SyncBatchNorm`` that knows nothing of widths or per-configuration statistics.
Here the class of each slimmable BN is switched in place to a subclass whose training
forward computes the batch statistics of the *active* channels over all processes
(a differentiable ``all_reduce`` of per-channel count, sum and sum of squares, so it works
with gloo on the CPU and nccl on CUDA). Parameters, buffers, per-config statistics and
state-dict keys are unchanged; in eval mode, or without a process group, it is the plain
:class:`SlimBatchNorm`.

Every process must run the same configuration at the same time (the trainer seeds the
sandwich sampler identically on all ranks), since the collective's shape is the number of
active channels.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..core import SlimBatchNorm, SlimBatchNorm2d, SlimBatchNorm3d

__all__ = ["SlimSyncBatchNorm", "SlimSyncBatchNorm2d", "SlimSyncBatchNorm3d", "convert_slim_sync_batchnorm"]


class SlimSyncBatchNorm(SlimBatchNorm):
    """Mixin: batch statistics of the active channels reduced over the default process group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)  # type: ignore[attr-defined]
        channels = x.shape[1]
        if channels > self.num_features:
            raise RuntimeError(
                f"{type(self).__name__}: input has {channels} channels, more than the {self.num_features} "
                "the layer was built for"
            )
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.full((1,), x.numel() // channels, dtype=torch.float32, device=x.device)
        packed = all_reduce(torch.cat([count, xf.sum(dims), (xf * xf).sum(dims)]))
        total = packed[0]
        mean = packed[1 : 1 + channels] / total
        var = (packed[1 + channels :] / total - mean * mean).clamp_min(0.0)  # biased, for normalization

        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp_min(1.0))
                self.running_mean[:channels].mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var[:channels].mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

        shape = (1, channels) + (1,) * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight[:channels].view(shape) + self.bias[:channels].view(shape)
        return out.to(x.dtype)


class SlimSyncBatchNorm2d(SlimSyncBatchNorm, SlimBatchNorm2d):
    """:class:`SlimBatchNorm2d` with statistics synchronized over the processes in training."""


class SlimSyncBatchNorm3d(SlimSyncBatchNorm, SlimBatchNorm3d):
    """:class:`SlimBatchNorm3d` with statistics synchronized over the processes in training."""


_SYNC_CLASS = {SlimBatchNorm2d: SlimSyncBatchNorm2d, SlimBatchNorm3d: SlimSyncBatchNorm3d}


def convert_slim_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Switch every ``SlimBatchNorm2d/3d`` of ``model`` to its synchronized subclass, in place.

    Plain ``nn.BatchNorm*`` layers become ``nn.SyncBatchNorm`` (PyTorch's, CUDA only).
    Returns the (possibly new top-level) model; state-dict keys are unchanged.
    """
    for module in model.modules():
        sync = _SYNC_CLASS.get(type(module))
        if sync is not None:
            module.__class__ = sync
    plain = [n for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SlimBatchNorm)
             and not isinstance(m, nn.SyncBatchNorm)]
    if plain:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
