"""The sandwich rule for the 2D tasks: :func:`mutual_step` with task-specific losses.

The iteration (zero_grad; full configuration on the labels, its output detached as the
teacher; every other configuration distilled from it, ``backward()`` after each; one
optimizer step) is :func:`mutualnet_video.engine.mutual_step` for every task. What differs
is only what is fed, what the loss is and what is distilled:

* classification: the images resized to each crop (``clip_for_config``); cross-entropy;
  KL(teacher || student) of the class logits;
* segmentation: the images resized to each crop; per-pixel cross-entropy; per-pixel KL
  to the teacher's logits resized bilinearly to the student's
  (:func:`~mutualnet_video.models.segmentation.pixel_losses`), plus optionally the
  cross-entropy on the masks (``task_weight``);
* detection: the same images for every configuration (the detector's transform resizes
  them); torchvision's four losses; each sub-network also keeps the task losses
  (``task_weight``) and distills the box-classifier logits on the full network's sampled
  proposals (:func:`~mutualnet_video.models.detection.roi_distillation_loss`).

Each step returns ``[(cfg, {loss name: value, ..., "total": value}), ...]`` in execution
order (the full configuration first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core import SubnetConfig, clip_for_config, distillation_loss, resize_crop
from ..models.detection import DetectorTrainOutput, DetectorTrainView, RoiTeacher, roi_distillation_loss
from ..models.segmentation import pixel_losses
from .mutual import mutual_step

__all__ = ["classification_mutual_step", "segmentation_mutual_step", "detection_mutual_step"]

Report = list[tuple[SubnetConfig, dict[str, float]]]


class _LossLog:
    """Collects the loss terms of each configuration while ``mutual_step`` runs."""

    def __init__(self) -> None:
        self.parts: list[dict[str, float]] = []

    def __call__(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        self.parts.append({k: float(v.detach()) for k, v in losses.items()} | {"total": float(total.detach())})
        return total

    def report(self, configs: Sequence[SubnetConfig]) -> Report:
        return list(zip(configs, self.parts))


def _check(configs: Sequence[SubnetConfig]) -> None:
    if not configs:
        raise ValueError("configs must hold at least the full configuration")


def classification_mutual_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    configs: Sequence[SubnetConfig],
    optimizer: torch.optim.Optimizer,
) -> Report:
    """One sandwich-rule iteration of a slimmable classifier on ``(N, 3, S, S)`` images."""
    _check(configs)
    log = _LossLog()

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets)
        return log({"loss_ce": loss}, loss)

    def distill(logits: torch.Tensor, teacher: torch.Tensor, *, temperature: float) -> torch.Tensor:
        loss = distillation_loss(logits, teacher, temperature=temperature)
        return log({"loss_distill": loss}, loss)

    model.train()
    mutual_step(model, [(cfg, clip_for_config(images, cfg)) for cfg in configs], labels,
                criterion=criterion, distill=distill, optimizer=optimizer)
    return log.report(configs)


def segmentation_mutual_step(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    configs: Sequence[SubnetConfig],
    optimizer: torch.optim.Optimizer,
    task_weight: float = 0.0,
    distill_weight: float = 1.0,
    ignore_index: int = 255,
) -> Report:
    """One sandwich-rule iteration of a slimmable segmenter (``model(x)["out"]`` logits).

    ``images``: ``(N, 3, S, S)`` at the full crop; sub-networks get them resized to their
    crop (bilinear, :func:`resize_crop`); ``masks``: ``(N, S, S)`` int64.
    """
    _check(configs)
    log = _LossLog()

    def criterion(output: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        losses = pixel_losses(output["out"], targets, None, ignore_index=ignore_index)
        return log(losses, losses["loss_ce"])

    def distill(output: dict[str, torch.Tensor], teacher: torch.Tensor, *, temperature: float) -> torch.Tensor:
        losses = pixel_losses(output["out"], masks if task_weight else None, teacher,
                              ignore_index=ignore_index, temperature=temperature)
        total = distill_weight * losses["loss_distill"]
        if task_weight:
            total = total + task_weight * losses["loss_ce"]
        return log(losses, total)

    model.train()
    mutual_step(model, [(cfg, resize_crop(images, cfg.crop)) for cfg in configs], masks,
                criterion=criterion, distill=distill, optimizer=optimizer,
                teacher_fn=lambda output: output["out"].detach())
    return log.report(configs)


def detection_mutual_step(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    targets: Sequence[dict[str, torch.Tensor]],
    *,
    configs: Sequence[SubnetConfig],
    optimizer: torch.optim.Optimizer,
    task_weight: float = 1.0,
    distill_weight: float = 1.0,
) -> Report:
    """One sandwich-rule iteration of a slimmable torchvision Faster R-CNN.

    ``images``: ``(3, H_i, W_i)`` in [0, 1], the same for every configuration (the
    transform resizes them); ``targets``: per image ``{"boxes", "labels"}``. The full
    configuration trains on the task losses; every later one on ``task_weight * task +
    distill_weight * loss_distill``.
    """
    _check(configs)
    log = _LossLog()
    view = DetectorTrainView(model)

    def criterion(output: DetectorTrainOutput, _targets: object) -> torch.Tensor:
        return log(output.losses, sum(output.losses.values()))

    def distill(output: DetectorTrainOutput, teacher: RoiTeacher, *, temperature: float) -> torch.Tensor:
        kl = roi_distillation_loss(model, output.features, output.image_sizes, teacher, temperature=temperature)
        total = task_weight * sum(output.losses.values()) + distill_weight * kl
        return log({**output.losses, "loss_distill": kl}, total)

    model.train()
    batch = (list(images), list(targets))
    mutual_step(view, [(cfg, batch) for cfg in configs], targets, criterion=criterion, distill=distill,
                optimizer=optimizer, teacher_fn=lambda output: output.teacher)
    return log.report(configs)
