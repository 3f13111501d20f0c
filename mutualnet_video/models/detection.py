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

Training (:func:`mutualnet_video.engine.tasks2d.detection_mutual_step`: ``engine.mutual_step`` on a
:class:`DetectorTrainView`, the sandwich rule): the full configuration
trains on the labels (torchvision's four losses). Each sub-network trains on the labels
too (``task_weight``) plus, as in-place distillation (``distill_weight``), the KL
divergence between its box-classifier logits and the full network's on the *full
network's sampled proposals*: those boxes are rescaled to the sub-network's image size,
pooled from the sub-network's features and classified by the shared box head. The RPN
objectness and box regression are not distilled.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..core import ConfigSpace, SlimmableModule, SubnetConfig, attach_space, distillation_loss, get_space
from ..core.heads import BackboneWithFPN, IntermediateFeatures
from ._builder import finish_entrypoint
from ._slim2d import slim_conv_like, space_2d
from .mobilenet import create_slimmable_mobilenet_v2
from .registry import IMAGENET_MEAN, IMAGENET_STD, DefaultCfg, register_model
from .resnet2d import create_slimmable_resnet50

__all__ = [
    "SlimRCNNTransform",
    "RoiTeacher",
    "slim_fpn",
    "mobilenet_v2_fpn_backbone",
    "resnet50_fpn_backbone",
    "create_slimmable_faster_rcnn",
    "DetectorBackboneView",
    "DetectorTrainOutput",
    "DetectorTrainView",
    "detection_losses",
    "roi_distillation_loss",
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


class _DetectorView(nn.Module):
    """Shares ``detector``'s modules and :class:`ConfigSpace`: switching the view switches it."""

    def __init__(self, detector: FasterRCNN) -> None:
        super().__init__()
        self.detector = detector
        space = get_space(detector)
        if space is not None:
            attach_space(self, space)


class DetectorBackboneView(_DetectorView):
    """The detector's resize + backbone (+ FPN) as a plain ``images -> features`` model.

    Every BatchNorm layer of these detectors lives in the backbone, and a torchvision
    detector in train mode refuses to run without targets; this view (sharing the
    detector's modules and its :class:`ConfigSpace`) is what BN calibration and FLOPs
    counting of the backbone take: ``calibrate_bn(DetectorBackboneView(detector), ...)``.
    Input: ``(N, 3, H, W)`` images in [0, 1] (or a list of ``(3, H_i, W_i)``); output: the
    ``OrderedDict`` of pyramid levels at the active configuration's resize.
    """


    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        image_list, _ = self.detector.transform(list(images))
        return self.detector.backbone(image_list.tensors)


# -- training ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RoiTeacher:
    """What a sub-network distills from the full network in one iteration.

    ``proposals[i]``: ``(P_i, 4)`` boxes sampled by the full network's ROI head for image
    ``i``, in its resized-image coordinates (``image_sizes[i]``); ``class_logits``:
    ``(sum P_i, num_classes)``, detached.
    """

    proposals: list[torch.Tensor]
    image_sizes: list[tuple[int, int]]
    class_logits: torch.Tensor


def _train_forward(model: FasterRCNN, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]):
    """Train-mode forward: torchvision's four losses, the features, image sizes and the ROI sample."""
    if not model.training:
        raise RuntimeError("detection_losses needs the model in train mode")
    if model.roi_heads.has_mask() or model.roi_heads.has_keypoint():
        raise NotImplementedError("detection_losses supports box-only Faster R-CNN")
    image_list, targets = model.transform(list(images), [dict(t) for t in targets])
    features = model.backbone(image_list.tensors)
    proposals, losses = model.rpn(image_list, features, targets)
    roi = model.roi_heads
    proposals, _, labels, regression_targets = roi.select_training_samples(proposals, targets)
    box_features = roi.box_head(roi.box_roi_pool(features, proposals, image_list.image_sizes))
    class_logits, box_regression = roi.box_predictor(box_features)
    loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
    losses = {**losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
    teacher = RoiTeacher([p.detach() for p in proposals], list(image_list.image_sizes), class_logits.detach())
    return losses, features, list(image_list.image_sizes), teacher


def roi_distillation_loss(
    model: FasterRCNN,
    features: OrderedDict[str, torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    teacher: RoiTeacher,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher || student) of the box-classifier logits on the teacher's proposals.

    The teacher's boxes are rescaled from its image sizes to ``image_sizes`` (this
    configuration's resize), pooled from ``features`` (this configuration's pyramid) and
    classified by the shared box head.
    """
    if len(teacher.proposals) != len(image_sizes):
        raise ValueError(f"teacher has {len(teacher.proposals)} images, the batch {len(image_sizes)}")
    scaled = []
    for boxes, (th, tw), (sh, sw) in zip(teacher.proposals, teacher.image_sizes, image_sizes):
        scaled.append(boxes * boxes.new_tensor([sw / tw, sh / th, sw / tw, sh / th]))
    roi = model.roi_heads
    student = roi.box_predictor(roi.box_head(roi.box_roi_pool(features, scaled, list(image_sizes))))[0]
    return distillation_loss(student, teacher.class_logits, temperature=temperature)


def detection_losses(
    model: FasterRCNN,
    images: Sequence[torch.Tensor],
    targets: Sequence[dict[str, torch.Tensor]],
    *,
    teacher: RoiTeacher | None = None,
    return_teacher: bool = False,
) -> tuple[dict[str, torch.Tensor], RoiTeacher | None]:
    """Faster R-CNN training losses at the model's active configuration (train mode).

    The same four losses as ``model(images, targets)`` (``loss_objectness``,
    ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``), plus ``loss_distill`` when
    ``teacher`` is given (:func:`roi_distillation_loss`). With ``return_teacher`` the
    function also returns this run's :class:`RoiTeacher`.

    Args:
        images: ``(3, H_i, W_i)`` float images in [0, 1] (any size; the transform resizes).
        targets: per image ``{"boxes": (K, 4) float xyxy, "labels": (K,) int64}``.
    """
    losses, features, image_sizes, record = _train_forward(model, images, targets)
    if teacher is not None:
        losses["loss_distill"] = roi_distillation_loss(model, features, image_sizes, teacher)
    return losses, record if return_teacher else None


@dataclass
class DetectorTrainOutput:
    """What :class:`DetectorTrainView` returns: this configuration's task losses, its
    pyramid ``features`` and resized ``image_sizes`` (for :func:`roi_distillation_loss`),
    and its own :class:`RoiTeacher` (used when it is the full configuration)."""

    losses: dict[str, torch.Tensor]
    features: OrderedDict[str, torch.Tensor]
    image_sizes: list[tuple[int, int]]
    teacher: RoiTeacher


class DetectorTrainView(_DetectorView):
    """A train-mode detector as ``(images, targets) -> DetectorTrainOutput``.

    What ``engine.mutual_step`` runs for detection: it shares the detector's modules and
    :class:`ConfigSpace` (switching the view switches the detector, resize included), so
    the sandwich loop is the engine's and only the losses are detection-specific.
    """


    def forward(self, batch: tuple[Sequence[torch.Tensor], Sequence[dict[str, torch.Tensor]]]) -> DetectorTrainOutput:
        images, targets = batch
        losses, features, image_sizes, teacher = _train_forward(self.detector, images, targets)
        return DetectorTrainOutput(losses, features, image_sizes, teacher)
