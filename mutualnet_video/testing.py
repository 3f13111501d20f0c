"""Test fixtures: tiny slimmable networks and in-memory clip datasets (core layers only).

One home for the fixtures of the tests and benchmarks (``numpy.testing`` / ``torch.testing``
style); none of it is a model of the paper.

* :func:`create_toy_slimnet` / :class:`ToySlimNet`: conv-bn-relu x3 (the middle one
  depthwise) + linear, no dropout; takes the builder keys of the YAML configs
  (``_target_: mutualnet_video.testing.create_toy_slimnet``) and learns
  :func:`toy_clip_dataset` in a few steps: the engine's tests and instant runs.
* :func:`toy_x3d`: a 3D net with a dense stem, a depthwise conv, a squeeze-excitation
  block (two biased 1x1x1 convs), a residual addition and a classifier that keeps its
  classes -- the pattern of an X3D block; ``conv``/``norm``/``linear`` callables build the
  stock network of the same shape.
* :func:`toy_slowfast`: a two-pathway net: the Slow pathway is slimmed, the Fast pathway
  keeps its width; a time-strided lateral conv is concatenated to the Slow features, so
  the next conv and the classifier take ``in_splits`` -- the pattern of SlowFast.
* :func:`toy_clip_dataset` / :class:`TensorClipDataset`: random-noise clips whose mean
  brightness encodes the label, as ``{"video", "label", "video_index"}`` dicts.

Every model carries its :class:`ConfigSpace` (``attach_space``) and takes the inputs of
:func:`mutualnet_video.core.clip_for_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .core import ConfigSpace, SlimBatchNorm3d, SlimConv3d, SlimLinear, attach_space

__all__ = [
    "ToySlimNet",
    "create_toy_slimnet",
    "TensorClipDataset",
    "toy_clip_dataset",
    "ToyX3D",
    "ToySlowFast",
    "toy_x3d",
    "toy_slowfast",
]


# -- the engine's learnable toy ------------------------------------------------------------
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


# -- the slicing-rule toys (X3D / SlowFast patterns) ------------------------------------
class _SE(nn.Module):
    def __init__(self, channels: int, reduced: int, *, conv: Callable = SlimConv3d) -> None:
        super().__init__()
        self.fc1 = conv(channels, reduced, kernel_size=1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = conv(reduced, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class _X3DBlock(nn.Module):
    def __init__(self, channels: int, inner: int, *, se: int = 8, conv: Callable = SlimConv3d,
                 norm: Callable = SlimBatchNorm3d) -> None:
        super().__init__()
        self.conv_a = conv(channels, inner, kernel_size=1, bias=False)
        self.norm_a = norm(inner)
        self.act_a = nn.ReLU()
        self.conv_b = conv(inner, inner, kernel_size=3, padding=1, groups=inner, bias=False)
        self.norm_b = norm(inner)
        self.se = _SE(inner, se, conv=conv)
        self.act_b = nn.SiLU()
        self.conv_c = conv(inner, channels, kernel_size=1, bias=False)
        self.norm_c = norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act_a(self.norm_a(self.conv_a(x)))
        y = self.act_b(self.se(self.norm_b(self.conv_b(y))))
        return torch.relu(x + self.norm_c(self.conv_c(y)))


class ToyX3D(nn.Module):
    """Stem -> X3D-like blocks -> adaptive pool -> dropout -> linear. Input ``(N, 3, T, S, S)``.

    ``conv``/``norm``/``linear`` are the layer callables (``nn.Conv3d``, ``nn.BatchNorm3d``,
    ``nn.Linear`` build the stock network of the same shape). One block is named
    ``block``; more are ``block``, ``block1``, ``block2``...
    """

    def __init__(self, *, num_classes: int = 7, channels: int = 16, inner: int = 32, se: int = 8, blocks: int = 1,
                 conv: Callable = SlimConv3d, norm: Callable = SlimBatchNorm3d,
                 linear: Callable = SlimLinear) -> None:
        super().__init__()
        self.stem_conv = conv(3, channels, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.stem_norm = norm(channels)
        self.stem_act = nn.ReLU()
        self.block = _X3DBlock(channels, inner, se=se, conv=conv, norm=norm)
        for i in range(1, blocks):
            self.add_module(f"block{i}", _X3DBlock(channels, inner, se=se, conv=conv, norm=norm))
        self.blocks = blocks
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(0.5)
        self.proj = linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem_act(self.stem_norm(self.stem_conv(x))))
        for i in range(1, self.blocks):
            x = getattr(self, f"block{i}")(x)
        return self.proj(self.dropout(self.pool(x).flatten(1)))


class ToySlowFast(nn.Module):
    """Two pathways fused by a lateral conv; input ``[slow (N,3,T,S,S), fast (N,3,alpha*T,S,S)]``."""

    def __init__(self, *, num_classes: int = 7, slow: int = 16, fast: int = 8, alpha: int = 2) -> None:
        super().__init__()
        self.slow_conv = SlimConv3d(3, slow, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.slow_norm = SlimBatchNorm3d(slow)
        self.fast_conv = SlimConv3d(3, fast, kernel_size=(3, 3, 3), stride=(1, 2, 2), padding=1, bias=False,
                                    slim_out=False)
        self.fast_norm = SlimBatchNorm3d(fast)
        # lateral: Fast -> Slow time resolution, full width (the Fast pathway is not slimmed)
        self.lateral = SlimConv3d(fast, 2 * fast, kernel_size=(5, 1, 1), stride=(alpha, 1, 1), padding=(2, 0, 0),
                                  bias=False, slim_out=False)
        self.fuse_conv = SlimConv3d(slow + 2 * fast, 2 * slow, kernel_size=(1, 3, 3), padding=(0, 1, 1), bias=False,
                                    in_splits=((slow, True), (2 * fast, False)))
        self.fuse_norm = SlimBatchNorm3d(2 * slow)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.proj = SlimLinear(2 * slow + fast, num_classes, in_splits=((2 * slow, True), (fast, False)))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        # Overwrites the input list, like PyTorchVideo's MultiPathWayWithFuse(inplace=True): callers
        # must not feed the same list twice.
        x[0] = torch.relu(self.slow_norm(self.slow_conv(x[0])))
        x[1] = torch.relu(self.fast_norm(self.fast_conv(x[1])))
        slow, fast = x
        slow = torch.cat([slow, self.lateral(fast)], dim=1)
        slow = torch.relu(self.fuse_norm(self.fuse_conv(slow)))
        feats = torch.cat([self.pool(slow).flatten(1), self.pool(fast).flatten(1)], dim=1)
        return self.proj(feats)


def toy_x3d(*, num_classes: int = 7, width_range: tuple[float, float] = (0.5, 1.0),
            frames: tuple[int, ...] = (4, 2), crops: tuple[int, ...] = (32, 24), channels: int = 16,
            inner: int = 32, se: int = 8, blocks: int = 1, seed: int | None = 0) -> ToyX3D:
    """A tiny X3D-like slimmable net with its space attached (random BN statistics if ``seed``)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = ToyX3D(num_classes=num_classes, channels=channels, inner=inner, se=se, blocks=blocks)
    _randomize_bn(model)
    return attach_space(model, ConfigSpace(width_range, frames=frames, crops=crops))


def toy_slowfast(*, num_classes: int = 7, width_range: tuple[float, float] = (0.5, 1.0),
                 frames: tuple[int, ...] = (4, 2), crops: tuple[int, ...] = (32, 24), alpha: int = 2,
                 seed: int | None = 0) -> ToySlowFast:
    """A tiny SlowFast-like slimmable net with its space (``slowfast_alpha=alpha``) attached."""
    if seed is not None:
        torch.manual_seed(seed)
    model = ToySlowFast(num_classes=num_classes, alpha=alpha)
    _randomize_bn(model)
    return attach_space(model, ConfigSpace(width_range, frames=frames, crops=crops, slowfast_alpha=alpha))


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so tests can tell BN apart from identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
