"""MutualNet semantic segmentation: torchvision's DeepLabV3 / FCN on a slimmable backbone.

One segmenter runs at several (width, input resolution) configurations:

* the backbone (MobileNetV2 ``features`` or a dilated ResNet-50, output stride 32 / 8) is
  slimmed with the classification rules; its BatchNorm layers are :class:`SlimBatchNorm2d`;
* the head (torchvision's ``DeepLabHead`` or ``FCNHead``) keeps its width: its convs are
  ``SlimConv2d(slim_out=False)`` (those fed by the backbone read the slimmed features) and
  its BatchNorm layers :class:`SlimBatchNorm2d`, so calibration stores statistics per
  configuration for the head too;
* the input resolution is the image size the caller feeds (``clip_for_config`` /
  ``resize_crop`` to ``cfg.crop``); the logits come back at the input size.

Training it (per-pixel losses and distillation, the sandwich step) is
:mod:`mutualnet_video.tasks.segmentation`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn
from torchvision.models.segmentation import FCN, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from ..core import ConfigSpace, attach_space
from ..core.heads import IntermediateFeatures
from ._builder import finish_entrypoint
from ._slim2d import convert_2d, space_2d
from .mobilenet import create_slimmable_mobilenet_v2
from .registry import IMAGENET_MEAN, IMAGENET_STD, DefaultCfg, register_model
from .resnet2d import create_slimmable_resnet50

__all__ = [
    "mobilenet_v2_seg_backbone",
    "resnet50_seg_backbone",
    "slim_deeplab_head",
    "slim_fcn_head",
    "create_slimmable_segmenter",
    "mutual_deeplabv3_mobilenet_v2",
    "mutual_deeplabv3_resnet50",
    "mutual_fcn_resnet50",
]

SEGMENTATION_CROPS = (512, 448, 384, 320)


def mobilenet_v2_seg_backbone() -> tuple[IntermediateFeatures, int]:
    """Slimmable MobileNetV2 ``features`` returning ``{"out": (N, 1280, H/32, W/32)}``; and 1280."""
    features = create_slimmable_mobilenet_v2(num_classes=1000).features
    stages = OrderedDict((str(i), m) for i, m in enumerate(features))
    return IntermediateFeatures(stages=stages, return_layers={"18": "out"}), features[18][0].out_channels


def resnet50_seg_backbone() -> tuple[IntermediateFeatures, int]:
    """Slimmable ResNet-50 dilated to output stride 8: ``{"out": (N, 2048*w, H/8, W/8)}``; and 2048."""
    resnet = create_slimmable_resnet50(num_classes=1000, replace_stride_with_dilation=[False, True, True])
    stages = OrderedDict((name, m) for name, m in resnet.named_children() if name not in ("avgpool", "fc"))
    return IntermediateFeatures(stages=stages, return_layers={"layer4": "out"}), 2048


def slim_deeplab_head(*, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)) -> nn.Module:
    """torchvision's ``DeepLabHead`` (ASPP) reading slimmed features; full-width outputs."""
    return convert_2d(DeepLabHead(in_channels, num_classes, atrous_rates), keep_out=lambda name: True)


def slim_fcn_head(*, in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ``FCNHead`` reading slimmed features; full-width outputs."""
    return convert_2d(FCNHead(in_channels, num_classes), keep_out=lambda name: True)


def create_slimmable_segmenter(*, backbone: IntermediateFeatures, head: nn.Module, space: ConfigSpace,
                          model_class: type[DeepLabV3] | type[FCN] = DeepLabV3) -> nn.Module:
    """``model_class(backbone, head)`` with ``space`` attached; ``model(x)["out"]`` is ``(N, K, H, W)``."""
    if space.is_video:
        raise ValueError(f"a segmenter needs a 2D space (frames=(None,)), got frames={space.frames}")
    if "out" not in backbone.return_layers.values():
        raise ValueError(f"backbone must return an 'out' feature map, returns {backbone.return_layers}")
    return attach_space(model_class(backbone, head, None), space)


_SEGMENTER = DefaultCfg(crop=SEGMENTATION_CROPS[0], mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _create_segmenter(*, backbone: IntermediateFeatures, head: nn.Module, space: ConfigSpace, weights: str | None,
                      model_class: type[DeepLabV3] | type[FCN] = DeepLabV3) -> nn.Module:
    model = create_slimmable_segmenter(backbone=backbone, head=head, space=space, model_class=model_class)
    return finish_entrypoint(model, default_cfg=_SEGMENTER, weights=weights)


@register_model(default_cfg=_SEGMENTER)
def mutual_deeplabv3_mobilenet_v2(*, num_classes: int = 21, width_range: Sequence[float] = (0.7, 1.0),
                                  crops: Sequence[int] = SEGMENTATION_CROPS, num_subnets: int = 4,
                                  widths: Sequence[float] = (), weights: str | None = None) -> nn.Module:
    """DeepLabV3 (ASPP head) on a slimmable MobileNetV2 (output stride 32); ``weights``: a
    checkpoint path or URL, loaded strictly."""
    backbone, channels = mobilenet_v2_seg_backbone()
    head = slim_deeplab_head(in_channels=channels, num_classes=num_classes)
    space = space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths)
    return _create_segmenter(backbone=backbone, head=head, space=space, weights=weights)


@register_model(default_cfg=_SEGMENTER)
def mutual_deeplabv3_resnet50(*, num_classes: int = 21, width_range: Sequence[float] = (0.9, 1.0),
                              crops: Sequence[int] = SEGMENTATION_CROPS, num_subnets: int = 4,
                              widths: Sequence[float] = (), weights: str | None = None) -> nn.Module:
    """DeepLabV3 (ASPP head) on a slimmable, dilated ResNet-50 (output stride 8); ``weights``
    as :func:`mutual_deeplabv3_mobilenet_v2`."""
    backbone, channels = resnet50_seg_backbone()
    head = slim_deeplab_head(in_channels=channels, num_classes=num_classes)
    space = space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths)
    return _create_segmenter(backbone=backbone, head=head, space=space, weights=weights)


@register_model(default_cfg=_SEGMENTER)
def mutual_fcn_resnet50(*, num_classes: int = 21, width_range: Sequence[float] = (0.9, 1.0),
                        crops: Sequence[int] = SEGMENTATION_CROPS, num_subnets: int = 4,
                        widths: Sequence[float] = (), weights: str | None = None) -> nn.Module:
    """FCN on a slimmable, dilated ResNet-50 (output stride 8); ``weights`` as
    :func:`mutual_deeplabv3_mobilenet_v2`."""
    backbone, channels = resnet50_seg_backbone()
    head = slim_fcn_head(in_channels=channels, num_classes=num_classes)
    space = space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths)
    return _create_segmenter(backbone=backbone, head=head, space=space, weights=weights, model_class=FCN)
