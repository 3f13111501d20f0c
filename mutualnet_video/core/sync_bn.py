"""Synchronized BatchNorm for slimmable layers (``train.sync_bn: true``).

``nn.SyncBatchNorm.convert_sync_batchnorm`` would replace each :class:`SlimBatchNorm` by a
fresh ``nn.SyncBatchNorm`` that knows nothing of widths or per-configuration statistics.
:func:`convert_slim_sync_batchnorm` replaces it by a :class:`SlimSyncBatchNorm2d/3d`
(:meth:`SlimSyncBatchNorm.from_slim`) holding the *same* parameter and buffer tensors
and the same per-configuration statistics under the same names, whose training forward
computes the batch statistics of the *active* channels over all processes (a
differentiable ``all_reduce`` of per-channel count, sum and sum of squares, so it works
with gloo on the CPU and nccl on CUDA). In eval mode, or without a process group, it is
the plain :class:`SlimBatchNorm`.

Every process must run the same configuration at the same time (the trainer seeds the
sandwich sampler identically on all ranks), since the collective's shape is the number of
active channels. Imports only torch (and ``torch.distributed``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .layers import SlimBatchNorm, SlimBatchNorm2d, SlimBatchNorm3d

__all__ = ["SlimSyncBatchNorm", "SlimSyncBatchNorm2d", "SlimSyncBatchNorm3d", "convert_slim_sync_batchnorm"]


class SlimSyncBatchNorm(SlimBatchNorm):
    """Mixin: batch statistics of the active channels reduced over the default process group."""

    @classmethod
    def from_slim(cls, bn: SlimBatchNorm) -> SlimSyncBatchNorm:
        """A ``cls`` sharing ``bn``'s parameters, buffers, per-configuration statistics,
        active configuration, train/eval mode, hooks and other attributes (``bn`` is left
        as it is; an optimizer built on its parameters keeps working).

        ``cls`` must be the synchronized twin of ``bn``'s type (``SlimSyncBatchNorm3d``
        for a ``SlimBatchNorm3d``).
        """
        expected = _SYNC_CLASS.get(type(bn))
        if expected is not cls:
            raise TypeError(f"{cls.__name__}.from_slim takes the layer it synchronizes, got {type(bn).__name__}"
                            + (f" (use {expected.__name__}.from_slim)" if expected is not None else ""))
        new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats, device="meta")
        for name, param in bn.named_parameters(recurse=False):
            setattr(new, name, param)
        for name, buffer in bn.named_buffers(recurse=False):
            setattr(new, name, buffer)
        new.config_stats = dict(bn.config_stats)
        fresh = vars(new)
        for key, value in vars(bn).items():
            if key in _CACHES:
                continue
            if key not in fresh:
                fresh[key] = value  # e.g. block_final_bn
            elif "hook" in key and isinstance(value, dict) and isinstance(fresh[key], dict):
                fresh[key].update(value)  # hooks registered on the original layer
        new.set_subnet(bn.subnet)
        return new.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)  # type: ignore[attr-defined]
        channels = x.shape[1]
        self._check_channels(channels)
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


_SYNC_CLASS: dict[type, type[SlimSyncBatchNorm]] = {
    SlimBatchNorm2d: SlimSyncBatchNorm2d,
    SlimBatchNorm3d: SlimSyncBatchNorm3d,
}
_BN = nn.modules.batchnorm._BatchNorm
_CACHES = ("_slim_state", "_eval_cache", "_active_stats", "_train_views")  # rebuilt by the new layer


def _synchronized(module: nn.Module) -> nn.Module | None:
    """The synchronized replacement of one BN layer, or None if it is not one to convert."""
    sync = _SYNC_CLASS.get(type(module))
    if sync is not None:
        return sync.from_slim(module)  # type: ignore[arg-type]
    if isinstance(module, _BN) and not isinstance(module, SlimBatchNorm | nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)  # a leaf: returns its replacement
    return None


def convert_slim_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``SlimBatchNorm2d/3d`` of ``model`` by its synchronized twin
    (:meth:`SlimSyncBatchNorm.from_slim`), and every plain ``nn.BatchNorm*`` by
    ``nn.SyncBatchNorm`` (PyTorch's, which runs on CUDA only).

    Submodules are replaced in their parents, in place (a layer shared by two parents
    stays shared); returns ``model``, or its replacement if ``model`` is itself a BN
    layer. State-dict keys and values are unchanged. Layers already synchronized are kept.
    """
    top = _synchronized(model)
    if top is not None:
        return top
    replaced: dict[int, nn.Module] = {}
    for name, child in list(model.named_modules(remove_duplicate=False)):
        if not name:
            continue
        if id(child) not in replaced:
            new = _synchronized(child)
            if new is None:
                continue
            replaced[id(child)] = new
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, replaced[id(child)])
    return model
