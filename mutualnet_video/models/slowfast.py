"""Slimmable SlowFast (Feichtenhofer et al., "SlowFast Networks for Video
Recognition", ICCV 2019) trained as a MutualNet (Yang et al., ECCV 2020).

As in the MutualNet paper, the Slow pathway is slimmed (width, frames, crop); the
Fast pathway keeps its full width (``slim_fast=True`` slims it too) and sees
``alpha x frames`` frames at the same crop; the lateral fast->slow convs follow the
slow width and every layer fed by a concatenation slices each part on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytorchvideo.models.slowfast import FuseFastToSlow, create_slowfast
from torch import nn

from ..core import SlimBatchNorm3d
from ._builder import builder_default, default_input, finish_entrypoint, forwards_kwargs, make_space
from .convert import slimmable
from .registry import KINETICS_MEAN, KINETICS_STD, DefaultCfg, register_model

__all__ = ["create_slimmable_slowfast", "mutual_slowfast_r50"]


def _nominal_input(kwargs: dict) -> tuple[int, int] | None:
    """(slow frames, crop) the fixed head pools of ``create_slowfast(**kwargs)`` are sized for."""
    if builder_default(create_slowfast, kwargs, "head_pool") is not nn.AvgPool3d:
        return None
    kernel = builder_default(create_slowfast, kwargs, "head_pool_kernel_sizes")[0]
    stem_stride = builder_default(create_slowfast, kwargs, "stem_conv_strides")[0]
    stem_pool = builder_default(create_slowfast, kwargs, "stem_pool")
    stem_pool = stem_pool[0] if isinstance(stem_pool, (tuple, list)) else stem_pool
    pool_stride = builder_default(create_slowfast, kwargs, "stem_pool_strides")[0] if stem_pool else (1, 1, 1)
    t_stride = stem_stride[0] * pool_stride[0] * math.prod(
        builder_default(create_slowfast, kwargs, "stage_temporal_strides")[0])
    s_stride = stem_stride[1] * pool_stride[1] * math.prod(
        builder_default(create_slowfast, kwargs, "stage_spatial_strides")[0])
    return kernel[0] * t_stride, kernel[1] * s_stride


def _fusion_alpha(model: nn.Module, kwargs: dict) -> int:
    for module in model.modules():
        if isinstance(module, FuseFastToSlow):
            return int(module.conv_fast_to_slow.stride[0])
    return int(builder_default(create_slowfast, kwargs, "slowfast_fusion_conv_stride")[0])


@forwards_kwargs(create_slowfast)
def create_slimmable_slowfast(
    *,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int | None = None,
    crops: Sequence[int] | int | None = None,
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    slim_fast: bool = False,
    **create_slowfast_kwargs,
) -> nn.Module:
    """A slimmable SlowFast over the space ``width_range x frames x crops``.

    Args:
        width_range: ``(w_min, w_max)`` of the Slow pathway's width multiplier.
        frames: Slow-pathway frame counts (the Fast pathway gets ``alpha`` times as
            many, ``alpha`` = the fusion conv's temporal stride); default: the input
            the head pools are sized for (8 for the builder's defaults).
        crops: crop sizes (both pathways); default: the head pools' (224).
        num_subnets, widths: see :class:`~mutualnet_video.core.ConfigSpace`.
        slim_fast: slim the Fast pathway too.
        **create_slowfast_kwargs: any keyword of ``create_slowfast``.

    Returns:
        The SlowFast ``Net`` (input ``[slow (N, 3, T, S, S), fast (N, 3, alpha*T, S, S)]``,
        output ``(N, model_num_class)``) with its ``ConfigSpace`` attached.
    """
    kwargs = dict(create_slowfast_kwargs)
    kwargs.setdefault("norm", SlimBatchNorm3d)
    frames, crops = default_input(frames, crops, lambda: _nominal_input(kwargs))
    model = create_slowfast(**kwargs)
    space = make_space(
        width_range=width_range, frames=frames, crops=crops, num_subnets=num_subnets, widths=widths,
        slowfast_alpha=_fusion_alpha(model, kwargs),
    )
    return slimmable(model, space=space, slim_fast=slim_fast)


_SLOWFAST_R50 = DefaultCfg(frames=8, crop=224, mean=KINETICS_MEAN, std=KINETICS_STD, slowfast_alpha=4)


@forwards_kwargs(create_slimmable_slowfast)
@register_model(default_cfg=_SLOWFAST_R50)
def mutual_slowfast_r50(
    *,
    model_num_class: int = 400,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int = (8, 6, 4),
    crops: Sequence[int] | int = (224, 192, 160, 128),
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    **create_slowfast_kwargs,
) -> nn.Module:
    """SlowFast R50 8x8 (alpha 4, beta 1/8; PyTorchVideo's ``slowfast_r50``); slow space:
    width [0.5, 1], frames {8, 6, 4}, crops {224, 192, 160, 128}; the Fast pathway keeps its width.

    ``weights``: a checkpoint path or URL (e.g. the ``slowfast_r50`` zoo file), loaded strictly
    (width 1.0 is the stock network); ``create_slowfast_kwargs``: any other keyword of
    ``create_slimmable_slowfast`` / ``create_slowfast`` (e.g. ``slim_fast``).
    """
    nominal = _SLOWFAST_R50
    pool = (nominal.crop // 32, nominal.crop // 32)
    kwargs = dict(
        model_depth=50,
        slowfast_fusion_conv_stride=(nominal.slowfast_alpha, 1, 1),
        head_pool_kernel_sizes=((nominal.frames, *pool), (nominal.slowfast_alpha * nominal.frames, *pool)),
    )
    kwargs.update(create_slowfast_kwargs)
    model = create_slimmable_slowfast(model_num_class=model_num_class, width_range=width_range, frames=frames,
                                      crops=crops, num_subnets=num_subnets, widths=widths, **kwargs)
    return finish_entrypoint(model, default_cfg=nominal, weights=weights)
