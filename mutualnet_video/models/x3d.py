"""Slimmable X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video
Recognition", CVPR 2020) trained as a MutualNet (Yang et al., ECCV 2020).

``create_slimmable_x3d`` takes every keyword of ``pytorchvideo.models.x3d.create_x3d``,
so a PyTorchVideo config switches by changing its ``_target_`` alone. Two defaults
differ from ``create_x3d``: ``head_activation=None`` (``create_x3d`` puts a Softmax on
the logits, even for training) and ``norm=SlimBatchNorm3d``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytorchvideo.models.x3d import create_x3d
from torch import nn

from ..core import SlimBatchNorm3d
from ._builder import build_slimmable, builder_default, default_input, finish_entrypoint, forwards_kwargs, make_space
from .registry import KINETICS_MEAN, KINETICS_STD, DefaultCfg, register_model

__all__ = [
    "create_slimmable_x3d",
    "mutual_x3d_xs",
    "mutual_x3d_s",
    "mutual_x3d_m",
    "mutual_x3d_l",
]


@forwards_kwargs(create_x3d)
def create_slimmable_x3d(
    *,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int | None = None,
    crops: Sequence[int] | int | None = None,
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    **create_x3d_kwargs,
) -> nn.Module:
    """A slimmable X3D over the space ``width_range x frames x crops``.

    Args:
        width_range: ``(w_min, w_max)`` of the width multiplier.
        frames: input frame counts (default: ``input_clip_length``).
        crops: input crop sizes (default: ``input_crop_size``).
        num_subnets: sub-networks per training iteration (sandwich rule).
        widths: widths evaluated/calibrated after training (default: quarter steps).
        **create_x3d_kwargs: any keyword of ``create_x3d``.

    Returns:
        The X3D ``Net`` (input ``(N, 3, T, S, S)``, output ``(N, model_num_class)``
        logits) with its ``ConfigSpace`` attached; at full width it computes the stock
        model.
    """
    kwargs = dict(create_x3d_kwargs)
    kwargs.setdefault("head_activation", None)
    kwargs.setdefault("norm", SlimBatchNorm3d)
    frames, crops = default_input(frames, crops, lambda: (builder_default(create_x3d, kwargs, "input_clip_length"),
                                                          builder_default(create_x3d, kwargs, "input_crop_size")))
    space = make_space(width_range=width_range, frames=frames, crops=crops, num_subnets=num_subnets, widths=widths)
    return build_slimmable(create_x3d, kwargs, space)


def _create_x3d(default_cfg: DefaultCfg, *, weights: str | None, **kwargs) -> nn.Module:
    """``create_slimmable_x3d`` with the nominal input of ``default_cfg`` (``input_clip_length``,
    ``input_crop_size``, unless given), ``default_cfg`` attached and ``weights`` loaded."""
    kwargs.setdefault("input_clip_length", default_cfg.frames)
    kwargs.setdefault("input_crop_size", default_cfg.crop)
    return finish_entrypoint(create_slimmable_x3d(**kwargs), default_cfg=default_cfg, weights=weights)


_X3D_XS = DefaultCfg(frames=4, crop=160, mean=KINETICS_MEAN, std=KINETICS_STD)
_X3D_S = DefaultCfg(frames=13, crop=160, mean=KINETICS_MEAN, std=KINETICS_STD)
_X3D_M = DefaultCfg(frames=16, crop=224, mean=KINETICS_MEAN, std=KINETICS_STD)
_X3D_L = DefaultCfg(frames=16, crop=312, mean=KINETICS_MEAN, std=KINETICS_STD)


@forwards_kwargs(create_slimmable_x3d)
@register_model(default_cfg=_X3D_XS)
def mutual_x3d_xs(
    *,
    model_num_class: int = 400,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int = (4, 3, 2),
    crops: Sequence[int] | int = (160, 128, 96),
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    **create_x3d_kwargs,
) -> nn.Module:
    """X3D-XS, nominal 4x160; space: width [0.5, 1], frames {4, 3, 2}, crops {160, 128, 96}.

    ``weights``: a checkpoint path or URL (e.g. PyTorchVideo's ``x3d_xs`` zoo file), loaded
    strictly into the network (width 1.0 is the stock network); ``create_x3d_kwargs``: any
    other keyword of ``create_x3d``.
    """
    return _create_x3d(_X3D_XS, weights=weights, model_num_class=model_num_class, width_range=width_range,
                       frames=frames, crops=crops, num_subnets=num_subnets, widths=widths, **create_x3d_kwargs)


@forwards_kwargs(create_slimmable_x3d)
@register_model(default_cfg=_X3D_S)
def mutual_x3d_s(
    *,
    model_num_class: int = 400,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int = (13, 10, 7),
    crops: Sequence[int] | int = (160, 128, 96),
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    **create_x3d_kwargs,
) -> nn.Module:
    """X3D-S, nominal 13x160; space: width [0.5, 1], frames {13, 10, 7}, crops {160, 128, 96}
    (keywords as :func:`mutual_x3d_xs`)."""
    return _create_x3d(_X3D_S, weights=weights, model_num_class=model_num_class, width_range=width_range,
                       frames=frames, crops=crops, num_subnets=num_subnets, widths=widths, **create_x3d_kwargs)


@forwards_kwargs(create_slimmable_x3d)
@register_model(default_cfg=_X3D_M)
def mutual_x3d_m(
    *,
    model_num_class: int = 400,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int = (16, 12, 8),
    crops: Sequence[int] | int = (224, 192, 160, 128),
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    **create_x3d_kwargs,
) -> nn.Module:
    """X3D-M, nominal 16x224; space: width [0.5, 1], frames {16, 12, 8}, crops {224, 192, 160, 128}
    (keywords as :func:`mutual_x3d_xs`)."""
    return _create_x3d(_X3D_M, weights=weights, model_num_class=model_num_class, width_range=width_range,
                       frames=frames, crops=crops, num_subnets=num_subnets, widths=widths, **create_x3d_kwargs)


@forwards_kwargs(create_slimmable_x3d)
@register_model(default_cfg=_X3D_L)
def mutual_x3d_l(
    *,
    model_num_class: int = 400,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] | int = (16, 12, 8),
    crops: Sequence[int] | int = (312, 256, 224, 192),
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    **create_x3d_kwargs,
) -> nn.Module:
    """X3D-L (``depth_factor=5.0`` unless given), nominal 16x312; space: width [0.5, 1], frames
    {16, 12, 8}, crops {312, 256, 224, 192} (keywords as :func:`mutual_x3d_xs`)."""
    create_x3d_kwargs.setdefault("depth_factor", 5.0)
    return _create_x3d(_X3D_L, weights=weights, model_num_class=model_num_class, width_range=width_range,
                       frames=frames, crops=crops, num_subnets=num_subnets, widths=widths, **create_x3d_kwargs)
