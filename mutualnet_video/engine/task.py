"""What a task adds to the sandwich-rule iteration; :class:`ClassificationTask` is the default.

The loop (:class:`~mutualnet_video.engine.trainer.TrainerBase`) and the iteration
(:func:`~mutualnet_video.engine.mutual.mutual_step`) are the same for every task; a task
says only what is task-specific:

* :meth:`~ClassificationTask.split`: a collated batch -> ``(inputs, targets)`` on the device;
* :meth:`~ClassificationTask.inputs`: one configuration's input from the batch's inputs
  (default ``space.model_input``: frames subsampled and the crop resized from one clip);
* :meth:`~ClassificationTask.train_view`: the module ``mutual_step`` runs (default the model);
* :meth:`~ClassificationTask.criterion` (the full configuration, on the targets),
  :meth:`~ClassificationTask.distill` (every other configuration, from the teacher) and
  :meth:`~ClassificationTask.teacher` (the full configuration's output, detached);
* for calibration and scoring after training: :meth:`~ClassificationTask.calibration_view`,
  ``calibration_input`` and :meth:`~ClassificationTask.score`.

Tasks record their named loss terms (``record``); the trainer reads them after each step
(``trainer.step_terms``). Detection and segmentation live in :mod:`mutualnet_video.tasks`;
a config selects one with its ``task`` node (``_target_: mutualnet_video.tasks.DetectionTask``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import ConfigSpace, SubnetConfig, distillation_loss
from .mutual import detach_output, full_clip_input
from .stream import split_batch, to_device

__all__ = ["ClassificationTask"]


class ClassificationTask:
    """Video or image classification: cross-entropy on the labels for the full
    configuration, KL(teacher || student) of the logits for the others (the paper's loss)."""

    name = "classification"
    #: the model returns ``(N, classes)`` logits, which ``evaluate_configs`` scores (periodic
    #: validation runs for such tasks only; the others are scored by :meth:`score`)
    logits = True
    #: the task's step runs under DistributedDataParallel
    supports_ddp = True
    #: ``(batch inputs, subnet) -> model input`` for BN calibration; ``None``: ``calibrate_bn``'s
    #: default (``space.model_input`` of the batch's clip)
    calibration_input: Callable[[Any, SubnetConfig], Any] | None = None

    def __init__(self) -> None:
        self.terms: list[dict[str, float]] = []

    # -- the iteration ---------------------------------------------------------------------
    def split(self, batch: Any, device: torch.device) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a collated batch, on ``device``."""
        video, labels = split_batch(batch)
        return to_device(video, device), labels.to(device, non_blocking=True)

    def inputs(self, space: ConfigSpace, inputs: Any, subnet: SubnetConfig) -> Any:
        """The input of configuration ``subnet``, cut from the batch's full-configuration
        clips (checked: :func:`~mutualnet_video.engine.mutual.full_clip_input`)."""
        return full_clip_input(space, inputs, subnet)

    def train_view(self, model: nn.Module) -> nn.Module:
        """The module ``mutual_step`` runs (switching it switches ``model``)."""
        return model

    def criterion(self, output: Any, targets: Any) -> torch.Tensor:
        loss = F.cross_entropy(output, targets)
        return self.record({"loss_ce": loss}, loss)

    def distill(self, output: Any, teacher: Any, targets: Any, *, temperature: float = 1.0) -> torch.Tensor:
        loss = distillation_loss(output, teacher, temperature=temperature)
        return self.record({"loss_distill": loss}, loss)

    def teacher(self, output: Any) -> Any:
        return detach_output(output)

    def record(self, losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        """Keep the named terms of one configuration's loss (and ``total``); returns ``total``."""
        self.terms.append({k: float(v.detach()) for k, v in losses.items()} | {"total": float(total.detach())})
        return total

    # -- after training -----------------------------------------------------------------------
    def calibration_view(self, model: nn.Module) -> nn.Module:
        """The module BN calibration runs (e.g. a detector's backbone)."""
        return model

    def score(self, model: nn.Module, subnet: SubnetConfig, inputs: Any, targets: Any) -> tuple[Any, str]:
        """``(value, text)`` of the model at ``subnet`` (already switched, eval mode, no grad)
        on the validation inputs: how a task whose model does not return logits is scored
        after training (classification is scored by ``evaluate_configs``)."""
        raise NotImplementedError(f"{type(self).__name__} returns logits: evaluate it with evaluate_configs")
