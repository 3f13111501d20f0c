"""Slimmable ResNet-50 (He et al., 2016) for MutualNet's "boost a single network" mode.

torchvision's ``resnet50`` converted layer by layer: same parameter names, so torchvision
state dicts load strict and give the same output at width 1.0. Width rules of the
MutualNet code: the stem and every bottleneck's middle convs keep
``make_divisible(c * w, 8)`` channels; a bottleneck's output conv (``conv3``) and its
shortcut projection (``downsample.0``) keep 4 times the slimmed middle width
(:class:`RatioSlimConv2d`, ratio = the block expansion), so the residual sums agree and
the bottleneck keeps its 1/4 ratio; ``fc`` reads the slimmed features and keeps its classes.

Paper setting: widths [0.9, 1.0], resolutions {224, 192, 160, 128}; a wider range
(e.g. ``width_range=(0.25, 1.0)``) is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models import resnet50
from torchvision.models.resnet import Bottleneck

from ..core import attach_space
from ._builder import finish_entrypoint, forwards_kwargs
from ._slim2d import convert_2d, space_2d
from .mobilenet import PAPER_CROPS
from .registry import IMAGENET_MEAN, IMAGENET_STD, DefaultCfg, register_model

__all__ = ["convert_slim_resnet", "create_slimmable_resnet50", "mutual_resnet50"]


def convert_slim_resnet(model: nn.Module) -> nn.Module:
    """Make a torchvision ``ResNet`` (Bottleneck blocks) slimmable in place; returns it."""
    ratios: dict[str, int] = {}
    for name, block in model.named_modules():
        if isinstance(block, Bottleneck):
            ratios[f"{name}.conv3"] = block.expansion
            if block.downsample is not None:
                ratios[f"{name}.downsample.0"] = block.expansion
    if not ratios:
        raise ValueError(f"{type(model).__name__} has no torchvision Bottleneck block to slim")
    return convert_2d(model, channel_ratio=lambda name: ratios.get(name, 1))


@forwards_kwargs(resnet50)
def create_slimmable_resnet50(*, num_classes: int = 1000, **kwargs) -> nn.Module:
    """torchvision's ``resnet50`` (random init, ``kwargs`` passed on) with slimmable layers."""
    return convert_slim_resnet(resnet50(weights=None, num_classes=num_classes, **kwargs))


_RESNET50 = DefaultCfg(crop=PAPER_CROPS[0], mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model(default_cfg=_RESNET50)
def mutual_resnet50(
    *,
    num_classes: int = 1000,
    width_range: Sequence[float] = (0.9, 1.0),
    crops: Sequence[int] = PAPER_CROPS,
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """MutualNet ResNet-50 (torchvision names): widths [0.9, 1.0] ("boost" mode) by default.

    ``weights``: a checkpoint path or URL, loaded strictly (torchvision's ``resnet50`` state
    dicts load: width 1.0 is torchvision's network).
    """
    model = create_slimmable_resnet50(num_classes=num_classes, zero_init_residual=zero_init_residual)
    attach_space(model, space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths))
    return finish_entrypoint(model, default_cfg=_RESNET50, weights=weights)
