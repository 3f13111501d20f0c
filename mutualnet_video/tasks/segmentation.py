"""MutualNet segmentation training: per-pixel losses and distillation.

The sandwich rule (the engine's ``mutual_step``): the full configuration trains with
per-pixel cross-entropy on the masks; every sub-network with the per-pixel KL divergence
KL(teacher || student) to the full network's logits, bilinearly resized to the
sub-network's output size (``distill_weight``), plus optionally the cross-entropy on
nearest-resized masks (``task_weight``, 0 by default as in MutualNet).
:class:`SegmentationTask` is that, for the Trainer (``task: {_target_:
mutualnet_video.tasks.SegmentationTask}``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import SubnetConfig, distillation_loss
from ..engine.task import ClassificationTask

__all__ = ["SegmentationTask", "pixel_losses", "segmentation_losses"]


def pixel_losses(
    logits: torch.Tensor,
    masks: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    *,
    ignore_index: int = 255,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-pixel losses of ``logits`` ``(N, K, H, W)``: what segmentation trains and distills.

    ``loss_ce``: cross-entropy on ``masks`` (``(N, H', W')`` int64, resized nearest to the
    logits if needed; skipped when ``masks`` is None). ``loss_distill`` (when
    ``teacher_logits`` is given): KL(teacher || student) per pixel, the teacher's logits
    resized bilinearly to the student's size, averaged over pixels.
    """
    losses: dict[str, torch.Tensor] = {}
    if masks is not None:
        if masks.shape[-2:] != logits.shape[-2:]:
            masks = F.interpolate(masks[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        losses["loss_ce"] = F.cross_entropy(logits, masks, ignore_index=ignore_index)
    if teacher_logits is not None:
        if teacher_logits.shape[-2:] != logits.shape[-2:]:
            teacher_logits = F.interpolate(teacher_logits, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        losses["loss_distill"] = distillation_loss(logits, teacher_logits, temperature=temperature)
    return losses


def segmentation_losses(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor | None,
    *,
    teacher_logits: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`pixel_losses` of ``model(images)["out"]`` at the active configuration, and those logits."""
    logits = model(images)["out"]
    return pixel_losses(logits, masks, teacher_logits, ignore_index=ignore_index), logits



class SegmentationTask(ClassificationTask):
    """Segmentation with a slimmable torchvision DeepLabV3 / FCN (``model(x)["out"]`` logits).

    Batches are ``(images, masks)``: ``(N, 3, S, S)`` images at the full crop (each
    sub-network gets them resized to its crop, bilinear) and ``(N, S, S)`` int64 masks.
    """

    name = "segmentation"
    logits = False

    def __init__(self, *, task_weight: float = 0.0, distill_weight: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.task_weight, self.distill_weight, self.ignore_index = task_weight, distill_weight, ignore_index

    def criterion(self, output: Any, targets: Any) -> torch.Tensor:
        losses = pixel_losses(output["out"], targets, None, ignore_index=self.ignore_index)
        return self.record(losses, losses["loss_ce"])

    def distill(self, output: Any, teacher: Any, targets: Any, *, temperature: float = 1.0) -> torch.Tensor:
        losses = pixel_losses(output["out"], targets if self.task_weight else None, teacher,
                              ignore_index=self.ignore_index, temperature=temperature)
        total = self.distill_weight * losses["loss_distill"]
        if self.task_weight:
            total = total + self.task_weight * losses["loss_ce"]
        return self.record(losses, total)

    def teacher(self, output: Any) -> Any:
        return output["out"].detach()

    @torch.no_grad()
    def score(self, model: nn.Module, subnet: SubnetConfig, inputs: Any, targets: Any) -> tuple[float, str]:
        from ..core import resize_crop

        logits = model(resize_crop(inputs, subnet.crop))["out"]
        pred = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
        accuracy = float((pred == targets).float().mean())
        return accuracy, f"pixel accuracy={accuracy:.3f}"
