"""2D heads and feature bodies for slimmable networks (torch only).

* :class:`ClassificationHead`: global average pool + dropout + :class:`SlimLinear`; the
  linear layer reads the (slimmed) channels of its input and keeps its class count.
* :class:`IntermediateFeatures`: runs the children of a backbone in order and returns the
  outputs of the chosen ones as an ``OrderedDict`` (the contract of torchvision's
  detection / segmentation bodies), for backbones whose stages are children of one
  ``nn.Sequential`` (MobileNet) or of the model (ResNet).
* :class:`BackboneWithFPN`: a body plus a feature pyramid; exposes ``out_channels`` as
  torchvision's detectors expect. The pyramid is built by the caller (so this file needs
  no torchvision); its lateral 1x1 convs must be ``SlimConv2d(..., slim_out=False)`` so
  that they read the slimmed backbone features and give full-width outputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from .layers import SlimLinear

__all__ = ["ClassificationHead", "IntermediateFeatures", "BackboneWithFPN"]


class ClassificationHead(nn.Module):
    """Pool ``(N, C_active, H, W)`` to ``(N, C_active)`` and classify to ``(N, num_classes)``.

    Args:
        in_features: channels of the input at full width (``fc`` reads the leading
            ``C_active`` of them at a narrower width).
        num_classes: output classes (never slimmed).
        dropout: dropout probability before the linear layer.
    """

    def __init__(self, *, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = SlimLinear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class IntermediateFeatures(nn.ModuleDict):
    """The stages of a backbone up to the last returned one, returning chosen outputs.

    Like torchvision's ``IntermediateLayerGetter`` (same state-dict names: the stages are
    direct children), without torchvision.

    Args:
        stages: named stages run in order (e.g. the children of ``mobilenet.features``, or
            the stem and ``layer1..4`` of a ResNet); those after the last returned one are
            dropped.
        return_layers: ``{stage name: output key}``; the output is an ``OrderedDict`` in
            stage order, e.g. ``{"13": "0", "18": "1"}``.

    Raises ``ValueError`` naming a stage that does not exist.
    """

    def __init__(self, *, stages: Mapping[str, nn.Module], return_layers: Mapping[str, str]) -> None:
        names = list(stages)
        missing = [name for name in return_layers if name not in names]
        if missing or not return_layers:
            raise ValueError(f"return_layers {dict(return_layers)}: stages {missing} not in {names}")
        last = max(names.index(name) for name in return_layers)
        super().__init__([(name, stages[name]) for name in names[: last + 1]])
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, stage in self.items():
            x = stage(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class BackboneWithFPN(nn.Module):
    """``fpn(body(x))``: an ``OrderedDict`` of pyramid levels with ``out_channels`` channels each.

    Args:
        body: returns an ``OrderedDict`` of (slimmed) feature maps.
        fpn: maps that dict to the pyramid (e.g. torchvision's ``FeaturePyramidNetwork``
            with slimmable lateral convs).
        out_channels: channels of every pyramid level (full width).
    """

    def __init__(self, *, body: nn.Module, fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))
