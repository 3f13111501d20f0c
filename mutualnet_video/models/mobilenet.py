"""Slimmable MobileNetV1 and MobileNetV2 (MutualNet, ECCV 2020, Sec. 4.1).

* MobileNetV1 (Howard et al., 2017), built from the core layers. Width rules of the
  MutualNet code: every conv keeps ``make_divisible(c * w, 8)`` channels (the stem keeps its
  3 inputs), depthwise convs follow their input, the classifier reads the slimmed
  ``1024 * w`` features and keeps its class count.
* MobileNetV2 (Sandler et al., 2018): torchvision's ``mobilenet_v2`` converted layer by
  layer (same parameter names, so torchvision state dicts load strict and give the same
  output at width 1.0). Block outputs and the stem keep ``make_divisible(c * w, 8)``
  channels; an expansion conv keeps ``t`` times the slimmed block input (``t`` the
  expansion ratio, the MutualNet / US-Nets rule); depthwise convs follow. ``features.18.0``,
  the last 1x1 conv to 1280 channels, reads slimmed inputs and keeps its 1280 outputs; the
  classifier ``classifier.1`` stays full.

Paper setting: MobileNetV1 widths [0.25, 1.0], MobileNetV2 [0.7, 1.0], resolutions
{224, 192, 160, 128}.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.mobilenetv2 import InvertedResidual

from ..core import SlimBatchNorm2d, SlimConv2d, attach_space
from ..core.heads import ClassificationHead
from ._builder import finish_entrypoint
from ._slim2d import convert_2d, space_2d
from .registry import IMAGENET_MEAN, IMAGENET_STD, DefaultCfg, register_model

__all__ = ["MobileNetV1", "create_slimmable_mobilenet_v2", "mutual_mobilenet_v1", "mutual_mobilenet_v2"]

PAPER_CROPS = (224, 192, 160, 128)

# (output channels, stride) of the 13 depthwise-separable blocks of MobileNetV1.
_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn_relu(in_ch: int, out_ch: int, *, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        SlimConv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        SlimBatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """Slimmable MobileNetV1: ``(N, 3, H, W)`` images to ``(N, num_classes)`` logits.

    ``features.0`` is the stem (3x3 conv, stride 2, 32 channels); ``features.1..13`` are
    depthwise-separable blocks (``dw`` 3x3 depthwise, ``pw`` 1x1); ``classifier`` is a
    :class:`ClassificationHead` on the 1024 (x width) features.
    """

    def __init__(self, *, num_classes: int = 1000, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, kernel=3, stride=2)]
        channels = 32
        for out_ch, stride in _V1_BLOCKS:
            layers.append(nn.Sequential(
                _conv_bn_relu(channels, channels, kernel=3, stride=stride, groups=channels),
                _conv_bn_relu(channels, out_ch, kernel=1, stride=1),
            ))
            channels = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = ClassificationHead(in_features=channels, num_classes=num_classes, dropout=dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def create_slimmable_mobilenet_v2(*, num_classes: int = 1000, dropout: float = 0.2) -> nn.Module:
    """torchvision's ``mobilenet_v2`` (random init) with slimmable layers under the same names.

    ``features.18.0`` (the 1x1 conv to 1280) keeps its outputs; ``classifier.1`` keeps its
    classes. At width 1.0 it computes exactly what torchvision's model computes.
    """
    model = mobilenet_v2(weights=None, num_classes=num_classes, dropout=dropout)
    ratios = {}
    for index, block in enumerate(model.features):
        if isinstance(block, InvertedResidual) and len(block.conv) == 4:  # has an expansion conv
            expand = block.conv[0][0]
            ratio = expand.out_channels // expand.in_channels
            ratios[f"features.{index}.conv.0.0"] = ratios[f"features.{index}.conv.1.0"] = ratio  # expand, depthwise
    return convert_2d(model, keep_out=lambda name: name == "features.18.0",
                      channel_ratio=lambda name: ratios.get(name, 1))


_MOBILENET = DefaultCfg(crop=PAPER_CROPS[0], mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model(default_cfg=_MOBILENET)
def mutual_mobilenet_v1(
    *,
    num_classes: int = 1000,
    width_range: Sequence[float] = (0.25, 1.0),
    crops: Sequence[int] = PAPER_CROPS,
    num_subnets: int = 4,
    widths: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
    weights: str | None = None,
    dropout: float = 0.0,
) -> MobileNetV1:
    """MutualNet MobileNetV1: widths [0.25, 1.0], resolutions {224, 192, 160, 128}.

    ``weights``: a checkpoint path or URL, loaded strictly.
    """
    model = MobileNetV1(num_classes=num_classes, dropout=dropout)
    attach_space(model, space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths))
    return finish_entrypoint(model, default_cfg=_MOBILENET, weights=weights)


@register_model(default_cfg=_MOBILENET)
def mutual_mobilenet_v2(
    *,
    num_classes: int = 1000,
    width_range: Sequence[float] = (0.7, 1.0),
    crops: Sequence[int] = PAPER_CROPS,
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    dropout: float = 0.2,
) -> nn.Module:
    """MutualNet MobileNetV2 (torchvision names): widths [0.7, 1.0], resolutions {224, 192, 160, 128}.

    ``weights``: a checkpoint path or URL, loaded strictly (torchvision's ``mobilenet_v2``
    state dicts load: width 1.0 is torchvision's network).
    """
    model = create_slimmable_mobilenet_v2(num_classes=num_classes, dropout=dropout)
    attach_space(model, space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths))
    return finish_entrypoint(model, default_cfg=_MOBILENET, weights=weights)
