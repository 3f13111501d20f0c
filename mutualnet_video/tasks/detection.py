"""MutualNet detection training: torchvision's Faster R-CNN losses and ROI distillation.

The sandwich rule (the engine's ``mutual_step``) runs on a :class:`DetectorTrainView`: the
full configuration trains on the labels (torchvision's four losses). Each sub-network
trains on the labels too (``task_weight``) plus, as in-place distillation
(``distill_weight``), the KL divergence between its box-classifier logits and the full
network's on the *full network's sampled proposals*: those boxes are rescaled to the
sub-network's image size, pooled from the sub-network's features and classified by the
shared box head. The RPN objectness and box regression are not distilled.
:class:`DetectionTask` is that, for the Trainer (``task: {_target_:
mutualnet_video.tasks.DetectionTask}``); :class:`DetectorBackboneView` is what BN
calibration runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import fastrcnn_loss

from ..core import ConfigSpace, SubnetConfig, attach_space, distillation_loss, get_space
from ..engine.stream import to_device
from ..engine.task import ClassificationTask

__all__ = [
    "RoiTeacher",
    "DetectorBackboneView",
    "DetectorTrainOutput",
    "DetectorTrainView",
    "DetectionTask",
    "detection_losses",
    "roi_distillation_loss",
]


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



class DetectionTask(ClassificationTask):
    """Detection with a slimmable torchvision Faster R-CNN (see the module doc).

    Batches are ``(images, targets)``: ``(3, H_i, W_i)`` images in [0, 1], the same for every
    configuration (the detector's transform resizes them to the configuration's
    ``min_size``), and per image ``{"boxes", "labels"}``. The full configuration trains on
    the task losses; every later one on ``task_weight * task + distill_weight * loss_distill``.
    """

    name = "detection"
    logits = False
    supports_ddp = False

    def __init__(self, *, task_weight: float = 1.0, distill_weight: float = 1.0) -> None:
        super().__init__()
        self.task_weight, self.distill_weight = task_weight, distill_weight

    def split(self, batch: Any, device: torch.device) -> tuple[Any, Any]:
        """``((images, targets), targets)``: the train view takes both."""
        images, targets = batch
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        return (to_device(list(images), device), targets), targets

    def inputs(self, space: ConfigSpace, inputs: Any, subnet: SubnetConfig) -> Any:
        return inputs  # the same images: the transform resizes per configuration

    def train_view(self, model: nn.Module) -> nn.Module:
        self._detector = model  # roi_distillation_loss runs the shared box head of this detector
        return DetectorTrainView(model)

    def criterion(self, output: Any, targets: Any) -> torch.Tensor:
        return self.record(output.losses, sum(output.losses.values()))

    def distill(self, output: Any, teacher: Any, targets: Any, *, temperature: float = 1.0) -> torch.Tensor:
        kl = roi_distillation_loss(self._detector, output.features, output.image_sizes, teacher,
                                   temperature=temperature)
        total = self.task_weight * sum(output.losses.values()) + self.distill_weight * kl
        return self.record({**output.losses, "loss_distill": kl}, total)

    def teacher(self, output: Any) -> Any:
        return output.teacher

    def calibration_view(self, model: nn.Module) -> nn.Module:
        return DetectorBackboneView(model)

    def calibration_input(self, batch: Any, subnet: SubnetConfig) -> Any:
        return list(batch[0])  # the images; the detector's transform resizes per configuration

    @torch.no_grad()
    def score(self, model: nn.Module, subnet: SubnetConfig, inputs: Any, targets: Any) -> tuple[Any, str]:
        detections = [len(o["boxes"]) for o in model(list(inputs[0])[:2])]
        return detections, f"min_size={model.transform.min_size[0]} detections per image={detections}"
