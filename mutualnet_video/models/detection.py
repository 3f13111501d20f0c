"""MutualNet object detection: torchvision's Faster R-CNN on a slimmable backbone + FPN.

MutualNet (TPAMI 2021) transfers an adaptive backbone to detection: ONE detector runs at
several (width, input resolution) configurations. Here:

* the backbone (MobileNetV2 or ResNet-50, :mod:`.mobilenet` / :mod:`.resnet2d` rules) is
  slimmed; its BatchNorm layers are :class:`SlimBatchNorm2d` (trainable, statistics per
  configuration after calibration), not ``FrozenBatchNorm2d``;
* the FPN lateral 1x1 convs are ``SlimConv2d(slim_out=False)``: they read the slimmed
  backbone features and give full-width (``out_channels``) pyramid levels; the rest of the
  FPN, the RPN and the box head stay full;
* the input resolution of a configuration is the detector's resize: the transform is a
  :class:`SlimRCNNTransform`, switched by ``set_config`` / ``use_config`` like the layers:
  at configuration ``cfg`` images are resized so their shorter side is ``cfg.crop``
  (``min_size``) and their longer side at most ``ceil(cfg.crop * max_size_ratio)``
  (``max_size``; torchvision's 800/1333 by default).

Training it (the losses, the distillation on the full network's proposals, the views BN
calibration and the sandwich step run) is :mod:`mutualnet_video.tasks.detection`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..core import ConfigSpace, SlimmableModule, SubnetConfig, attach_space
from ..core.heads import BackboneWithFPN, IntermediateFeatures
from ._builder import finish_entrypoint, forwards_kwargs
from ._slim2d import slim_conv_like, space_2d
from .mobilenet import create_slimmable_mobilenet_v2
from .registry import IMAGENET_MEAN, IMAGENET_STD, DefaultCfg, register_model
from .resnet2d import create_slimmable_resnet50

__all__ = [
    "SlimRCNNTransform",
    "slim_fpn",
    "mobilenet_v2_fpn_backbone",
    "resnet50_fpn_backbone",
    "create_slimmable_faster_rcnn",
    "mutual_fasterrcnn_mobilenet_v2_fpn",
    "mutual_fasterrcnn_resnet50_fpn",
]

DEFAULT_MAX_SIZE_RATIO = 1333 / 800
# Default min sizes: torchvision's 800 and three lower steps (this project's choice, not the paper's).
DETECTION_CROPS = (800, 672, 544, 416)


class SlimRCNNTransform(SlimmableModule, GeneralizedRCNNTransform):
    """torchvision's detection transform whose resize follows the active configuration.

    At ``subnet``: ``min_size = (subnet.crop,)``, ``max_size = ceil(subnet.crop * max_size_ratio)``;
    with no configuration set, ``full_size`` is used.
    """

    def __init__(self, *, full_size: int, max_size_ratio: float = DEFAULT_MAX_SIZE_RATIO,
                 image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, size_divisible: int = 32) -> None:
        if max_size_ratio < 1:
            raise ValueError(f"max_size_ratio must be >= 1, got {max_size_ratio}")
        self.full_size = int(full_size)
        self.max_size_ratio = float(max_size_ratio)
        GeneralizedRCNNTransform.__init__(
            self, self.full_size, math.ceil(self.full_size * self.max_size_ratio),
            list(image_mean), list(image_std), size_divisible=size_divisible,
        )

    def set_subnet(self, subnet: SubnetConfig | None) -> None:
        super().set_subnet(subnet)
        size = self.full_size if subnet is None else subnet.crop
        self.min_size = (size,)
        self.max_size = math.ceil(size * self.max_size_ratio)


def slim_fpn(*, in_channels_list: Sequence[int], out_channels: int) -> FeaturePyramidNetwork:
    """torchvision's FPN (+ max-pool level) whose lateral 1x1 convs read slimmed features."""
    fpn = FeaturePyramidNetwork(list(in_channels_list), out_channels, extra_blocks=LastLevelMaxPool())
    for block in fpn.inner_blocks:
        block[0] = slim_conv_like(block[0], slim_out=False)
    return fpn


def mobilenet_v2_fpn_backbone(*, out_channels: int = 256, returned_stages: Sequence[int] = (6, 13, 18)) -> BackboneWithFPN:
    """Slimmable MobileNetV2 ``features`` (strides 8/16/32 by default) + FPN.

    Pyramid keys ``"0".."k-1"`` for the returned stages, then ``"pool"``. Stage 18 (the 1x1
    conv to 1280) gives full-width features, the others slimmed ones.
    """
    features = create_slimmable_mobilenet_v2(num_classes=1000).features
    stages = OrderedDict((str(i), m) for i, m in enumerate(features))
    returned = [str(i) for i in returned_stages]
    channels = [_stage_out_channels(stages[name]) for name in returned]
    body = IntermediateFeatures(stages=stages, return_layers={name: str(i) for i, name in enumerate(returned)})
    return BackboneWithFPN(body=body, fpn=slim_fpn(in_channels_list=channels, out_channels=out_channels),
                           out_channels=out_channels)


def resnet50_fpn_backbone(*, out_channels: int = 256, returned_layers: Sequence[int] = (1, 2, 3, 4)) -> BackboneWithFPN:
    """Slimmable ResNet-50 (``conv1`` .. ``layer4``, trainable SlimBatchNorm2d) + FPN."""
    resnet = create_slimmable_resnet50(num_classes=1000)
    stages = OrderedDict((name, m) for name, m in resnet.named_children() if name not in ("avgpool", "fc"))
    returned = [f"layer{i}" for i in returned_layers]
    channels = [_stage_out_channels(stages[name]) for name in returned]
    body = IntermediateFeatures(stages=stages, return_layers={name: str(i) for i, name in enumerate(returned)})
    return BackboneWithFPN(body=body, fpn=slim_fpn(in_channels_list=channels, out_channels=out_channels),
                           out_channels=out_channels)


def _stage_out_channels(stage: nn.Module) -> int:
    """Full-width output channels of a MobileNetV2 stage or a ResNet layer (its last conv)."""
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"stage {type(stage).__name__} has no conv")
    return convs[-1].out_channels


@forwards_kwargs(FasterRCNN)
def create_slimmable_faster_rcnn(
    *,
    backbone: BackboneWithFPN,
    num_classes: int,
    space: ConfigSpace,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    max_size_ratio: float = DEFAULT_MAX_SIZE_RATIO,
    **faster_rcnn_kwargs,
) -> FasterRCNN:
    """A torchvision ``FasterRCNN`` on ``backbone`` that runs at every configuration of ``space``.

    Args:
        backbone: a slimmable body + FPN (:func:`mobilenet_v2_fpn_backbone`, ...).
        num_classes: classes including the background.
        space: 2D space (``frames=(None,)``); ``crops`` are the detector's ``min_size`` values.
        anchor_sizes: one anchor size per pyramid level (levels = returned stages + pool).
        max_size_ratio: ``max_size / min_size`` of the resize.
        faster_rcnn_kwargs: passed to ``FasterRCNN`` (RPN / box-head settings).
    """
    if space.is_video:
        raise ValueError(f"a detector needs a 2D space (frames=(None,)), got frames={space.frames}")
    num_levels = len(backbone.body.return_layers) + 1
    if len(anchor_sizes) != num_levels:
        raise ValueError(f"anchor_sizes {tuple(anchor_sizes)}: need one size per pyramid level ({num_levels})")
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * num_levels)
    roi_pool = MultiScaleRoIAlign(featmap_names=[str(i) for i in range(num_levels - 1)], output_size=7, sampling_ratio=2)
    full = space.full().crop
    model = FasterRCNN(backbone, num_classes=num_classes, min_size=full, max_size=math.ceil(full * max_size_ratio),
                       rpn_anchor_generator=anchors, box_roi_pool=roi_pool, **faster_rcnn_kwargs)
    model.transform = SlimRCNNTransform(full_size=full, max_size_ratio=max_size_ratio,
                                        image_mean=model.transform.image_mean, image_std=model.transform.image_std)
    return attach_space(model, space)


# The detector normalises [0, 1] images itself (its transform) with torchvision's ImageNet mean/std.
_FASTERRCNN = DefaultCfg(crop=DETECTION_CROPS[0], mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _create_faster_rcnn(*, backbone: BackboneWithFPN, num_classes: int, space: ConfigSpace, weights: str | None,
                        **faster_rcnn_kwargs) -> FasterRCNN:
    faster_rcnn_kwargs.setdefault("image_mean", list(_FASTERRCNN.mean))
    faster_rcnn_kwargs.setdefault("image_std", list(_FASTERRCNN.std))
    model = create_slimmable_faster_rcnn(backbone=backbone, num_classes=num_classes, space=space, **faster_rcnn_kwargs)
    return finish_entrypoint(model, default_cfg=_FASTERRCNN, weights=weights)


@forwards_kwargs(create_slimmable_faster_rcnn)
@register_model(default_cfg=_FASTERRCNN)
def mutual_fasterrcnn_mobilenet_v2_fpn(
    *,
    num_classes: int = 91,
    width_range: Sequence[float] = (0.7, 1.0),
    crops: Sequence[int] = DETECTION_CROPS,
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256),
    **faster_rcnn_kwargs,
) -> FasterRCNN:
    """Faster R-CNN + FPN on a slimmable MobileNetV2 (widths [0.7, 1.0]); crops are min sizes.

    ``weights``: a checkpoint path or URL, loaded strictly; ``faster_rcnn_kwargs``: any
    other keyword of :func:`create_slimmable_faster_rcnn` / ``FasterRCNN``.
    """
    space = space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths)
    return _create_faster_rcnn(backbone=mobilenet_v2_fpn_backbone(), num_classes=num_classes, space=space,
                               weights=weights, anchor_sizes=anchor_sizes, **faster_rcnn_kwargs)


@forwards_kwargs(create_slimmable_faster_rcnn)
@register_model(default_cfg=_FASTERRCNN)
def mutual_fasterrcnn_resnet50_fpn(
    *,
    num_classes: int = 91,
    width_range: Sequence[float] = (0.9, 1.0),
    crops: Sequence[int] = DETECTION_CROPS,
    num_subnets: int = 4,
    widths: Sequence[float] = (),
    weights: str | None = None,
    **faster_rcnn_kwargs,
) -> FasterRCNN:
    """Faster R-CNN + FPN on a slimmable ResNet-50 (widths [0.9, 1.0]); crops are min sizes
    (keywords as :func:`mutual_fasterrcnn_mobilenet_v2_fpn`)."""
    space = space_2d(width_range=width_range, crops=crops, num_subnets=num_subnets, widths=widths)
    return _create_faster_rcnn(backbone=resnet50_fpn_backbone(), num_classes=num_classes, space=space,
                               weights=weights, **faster_rcnn_kwargs)
