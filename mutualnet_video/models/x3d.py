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
from ._builder import build_slimmable, builder_default, default_input, make_space, merge_defaults
from .registry import register_model

__all__ = [
    "create_slimmable_x3d",
    "mutual_x3d_xs",
    "mutual_x3d_s",
    "mutual_x3d_m",
    "mutual_x3d_l",
]


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


def _create_x3d(defaults: dict, overrides: dict) -> nn.Module:
    return create_slimmable_x3d(**merge_defaults(defaults, overrides))


@register_model
def mutual_x3d_xs(**kwargs) -> nn.Module:
    """X3D-XS, nominal 4x160; space: width [0.5, 1], frames {4, 3, 2}, crops {160, 128, 96}."""
    return _create_x3d(
        dict(input_clip_length=4, input_crop_size=160, frames=(4, 3, 2), crops=(160, 128, 96)), kwargs
    )


@register_model
def mutual_x3d_s(**kwargs) -> nn.Module:
    """X3D-S, nominal 13x160; space: width [0.5, 1], frames {13, 10, 7}, crops {160, 128, 96}."""
    return _create_x3d(
        dict(input_clip_length=13, input_crop_size=160, frames=(13, 10, 7), crops=(160, 128, 96)), kwargs
    )


@register_model
def mutual_x3d_m(**kwargs) -> nn.Module:
    """X3D-M, nominal 16x224; space: width [0.5, 1], frames {16, 12, 8}, crops {224, 192, 160, 128}."""
    return _create_x3d(
        dict(input_clip_length=16, input_crop_size=224, frames=(16, 12, 8), crops=(224, 192, 160, 128)), kwargs
    )


@register_model
def mutual_x3d_l(**kwargs) -> nn.Module:
    """X3D-L (depth factor 5), nominal 16x312; space: width [0.5, 1], frames {16, 12, 8},
    crops {312, 256, 224, 192}."""
    return _create_x3d(
        dict(
            input_clip_length=16, input_crop_size=312, depth_factor=5.0,
            frames=(16, 12, 8), crops=(312, 256, 224, 192),
        ),
        kwargs,
    )
