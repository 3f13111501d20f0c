"""Slimmable ResNet-3D (Slow, C2D, I3D; Feichtenhofer et al., "SlowFast Networks for
Video Recognition", ICCV 2019) trained as a MutualNet (Yang et al., ECCV 2020).

``create_slimmable_resnet`` takes every keyword of
``pytorchvideo.models.resnet.create_resnet`` (``norm`` defaults to
``SlimBatchNorm3d``); the fixed-kernel head pool becomes adaptive, so every frames /
crop of the space runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytorchvideo.models.resnet import create_resnet
from torch import nn

from ..core import SlimBatchNorm3d
from ._builder import build_slimmable, builder_default, default_input, finish_entrypoint, forwards_kwargs, make_space
from .registry import KINETICS_MEAN, KINETICS_STD, DefaultCfg, register_model

__all__ = ["create_slimmable_resnet", "mutual_slow_r50"]


def _nominal_input(kwargs: dict) -> tuple[int, int] | None:
    """(frames, crop) the fixed head pool of ``create_resnet(**kwargs)`` is sized for."""
    head_pool = builder_default(create_resnet, kwargs, "head_pool")
    if head_pool is not nn.AvgPool3d:
        return None
    kernel = builder_default(create_resnet, kwargs, "head_pool_kernel_size")
    stem_stride = builder_default(create_resnet, kwargs, "stem_conv_stride")
    stem_pool = builder_default(create_resnet, kwargs, "stem_pool")
    stem_pool_stride = builder_default(create_resnet, kwargs, "stem_pool_stride") if stem_pool else (1, 1, 1)
    stage1_pool = builder_default(create_resnet, kwargs, "stage1_pool")
    stage1_kernel = builder_default(create_resnet, kwargs, "stage1_pool_kernel_size") if stage1_pool else (1, 1, 1)
    t_stride = stem_stride[0] * stem_pool_stride[0] * stage1_kernel[0] * math.prod(
        builder_default(create_resnet, kwargs, "stage_temporal_stride"))
    s_stride = stem_stride[1] * stem_pool_stride[1] * stage1_kernel[1] * math.prod(
        builder_default(create_resnet, kwargs, "stage_spatial_h_stride"))
    return kernel[0] * t_stride, kernel[1] * s_stride


@forwards_kwargs(create_resnet)
def create_slimmable_resnet(
    *,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int | None = None,
    crops: Sequence[int] | int | None = None,
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    **create_resnet_kwargs,
) -> nn.Module:
    """A slimmable ResNet-3D over the space ``width_range x frames x crops``.

    Args:
        width_range: ``(w_min, w_max)`` of the width multiplier.
        frames, crops: input frame counts and crop sizes; default: the input the
            head pool kernel is sized for (``head_pool_kernel_size`` times the
            network's strides, e.g. 4x224 for the builder's defaults). Required when
            the head pool is not a fixed ``AvgPool3d``.
        num_subnets, widths: see :class:`~mutualnet_video.core.ConfigSpace`.
        **create_resnet_kwargs: any keyword of ``create_resnet``.

    Returns:
        The ResNet ``Net`` (input ``(N, 3, T, S, S)``, output ``(N, model_num_class)``)
        with its ``ConfigSpace`` attached.
    """
    kwargs = dict(create_resnet_kwargs)
    kwargs.setdefault("norm", SlimBatchNorm3d)
    frames, crops = default_input(frames, crops, lambda: _nominal_input(kwargs))
    space = make_space(width_range=width_range, frames=frames, crops=crops, num_subnets=num_subnets, widths=widths)
    return build_slimmable(create_resnet, kwargs, space)


_SLOW_R50 = DefaultCfg(frames=8, crop=224, mean=KINETICS_MEAN, std=KINETICS_STD)


@forwards_kwargs(create_slimmable_resnet)
@register_model(default_cfg=_SLOW_R50)
def mutual_slow_r50(
    *,
    model_num_class: int = 400,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int = (8, 6, 4),
    crops: Sequence[int] | int = (224, 192, 160, 128),
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    **create_resnet_kwargs,
) -> nn.Module:
    """Slow R50 8x8 (PyTorchVideo's ``slow_r50``: stem 1x7x7, temporal conv_a in res4/res5,
    head pool 8x7x7); space: width [0.5, 1], frames {8, 6, 4}, crops {224, 192, 160, 128}.

    ``weights``: a checkpoint path or URL (e.g. the ``slow_r50`` zoo file), loaded strictly
    (width 1.0 is the stock network); ``create_resnet_kwargs``: any other keyword of
    ``create_resnet`` (they override the architecture above).
    """
    nominal = _SLOW_R50
    kwargs = dict(
        model_depth=50,
        stem_conv_kernel_size=(1, 7, 7),
        stage_conv_a_kernel_size=((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)),
        head_pool_kernel_size=(nominal.frames, nominal.crop // 32, nominal.crop // 32),
    )
    kwargs.update(create_resnet_kwargs)
    model = create_slimmable_resnet(model_num_class=model_num_class, width_range=width_range, frames=frames,
                                    crops=crops, num_subnets=num_subnets, widths=widths, **kwargs)
    return finish_entrypoint(model, default_cfg=nominal, weights=weights)
