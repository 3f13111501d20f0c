"""Tiny slimmable networks built from core layers only.

Fixtures for tests and for the budget/latency benchmark when no real model is
available. They exercise every slicing rule of the core layers:

* :func:`toy_x3d`: a 3D net with a dense stem, a depthwise conv, a squeeze-excitation
  block (two biased 1x1x1 convs), a residual addition and a classifier that keeps its
  classes -- the pattern of an X3D block.
* :func:`toy_slowfast`: a two-pathway net: the Slow pathway is slimmed, the Fast pathway
  keeps its width; a time-strided lateral conv is concatenated to the Slow features, so
  the next conv and the classifier take ``in_splits`` -- the pattern of SlowFast.

Both carry their :class:`ConfigSpace` (``attach_space``) and take the inputs of
:func:`mutualnet_video.core.clip_for_config`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core import (
    ConfigSpace,
    SlimBatchNorm3d,
    SlimConv3d,
    SlimLinear,
    attach_space,
)

__all__ = ["toy_x3d", "toy_slowfast"]


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
