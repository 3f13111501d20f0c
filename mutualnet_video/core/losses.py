"""Losses of mutual learning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DistillationLoss", "distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, averaged over the batch.

    The teacher is detached: gradients reach the student only. Logits are
    ``(N, classes)``; extra trailing dims (per-pixel logits ``(N, C, H, W)``) are
    flattened into the batch with the class dim at 1.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if student_logits.dim() > 2:
        classes = student_logits.shape[1]
        student_logits = student_logits.movedim(1, -1).reshape(-1, classes)
        teacher_logits = teacher_logits.movedim(1, -1).reshape(-1, classes)
    teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean") * temperature**2


class DistillationLoss(nn.Module):
    """Module form of :func:`distillation_loss`."""

    def __init__(self, *, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return distillation_loss(student_logits, teacher_logits, temperature=self.temperature)
