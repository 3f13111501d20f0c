"""A tiny slimmable video network and in-memory clip datasets built from core layers only.

For the engine's tests, the instant configs' smoke runs and the training benchmark's
fallback when ``mutualnet_video.models`` is not available. Not a model of the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core import ConfigSpace, SlimBatchNorm3d, SlimConv3d, SlimLinear, attach_space

__all__ = ["ToySlimNet", "create_toy_slimnet", "TensorClipDataset", "toy_clip_dataset"]


class ToySlimNet(nn.Module):
    """conv-bn-relu x3 (the middle one depthwise) + adaptive pool + linear.

    Input ``(N, 3, T, H, W)`` at any frames/crop; output ``(N, num_classes)``.
    """

    def __init__(self, *, channels: int = 16, num_classes: int = 5) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            SlimConv3d(3, channels, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            SlimBatchNorm3d(channels),
            nn.ReLU(),
            SlimConv3d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False),
            SlimBatchNorm3d(channels),
            nn.ReLU(),
            SlimConv3d(channels, 2 * channels, kernel_size=1, bias=False),
            SlimBatchNorm3d(2 * channels),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.proj = SlimLinear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.blocks(x)).flatten(1))


def create_toy_slimnet(
    *,
    channels: int = 16,
    model_num_class: int = 5,
    width_range: Sequence[float] = (0.5, 1.0),
    frames: Sequence[int] = (4, 2),
    crops: Sequence[int] = (32, 24),
    num_subnets: int = 3,
    widths: Sequence[float] = (),
) -> ToySlimNet:
    """A :class:`ToySlimNet` with its :class:`ConfigSpace` attached (same keys as our builders)."""
    model = ToySlimNet(channels=channels, num_classes=model_num_class)
    space = ConfigSpace(
        width_range=tuple(width_range), frames=tuple(frames), crops=tuple(crops),
        num_subnets=num_subnets, widths=tuple(widths),
    )
    return attach_space(model, space)


class TensorClipDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``{"video": (C, T, S, S), "label": int}`` dicts held in memory.

    ``rank``/``world_size`` are accepted for the trainer's sharding protocol; sharding of a
    map-style dataset is done by the trainer's sampler, so they are only recorded.
    """

    def __init__(self, videos: torch.Tensor, labels: torch.Tensor, *, rank: int = 0, world_size: int = 1) -> None:
        if videos.dim() != 5 or labels.dim() != 1 or len(videos) != len(labels):
            raise ValueError(
                f"videos must be (N, C, T, S, S) and labels (N,), got {tuple(videos.shape)} and {tuple(labels.shape)}"
            )
        self.videos, self.labels = videos, labels
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        return {"video": self.videos[index], "label": int(self.labels[index]), "video_index": index}


def toy_clip_dataset(
    *,
    num_videos: int = 8,
    num_classes: int = 5,
    frames: int = 4,
    crop: int = 32,
    seed: int = 0,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
) -> TensorClipDataset:
    """Random-noise clips whose mean brightness encodes the label (learnable in a few steps)."""
    gen = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    labels = torch.arange(num_videos) % num_classes
    videos = torch.randn(num_videos, 3, frames, crop, crop, generator=gen) * 0.5
    videos += (labels.float() / max(num_classes - 1, 1) * 2 - 1).view(-1, 1, 1, 1, 1)
    return TensorClipDataset(videos, labels, rank=rank, world_size=world_size)
