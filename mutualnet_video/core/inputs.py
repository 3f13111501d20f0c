"""Inputs of a sub-network, built from one decoded clip.

Every configuration of an iteration sees the same clip: frames are subsampled
uniformly over the same time span and the spatial crop is resized (bilinear), so
nothing is decoded twice. Clips are ``(..., C, T, H, W)`` (video) or
``(..., C, H, W)`` (images, ``frames=None``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ConfigSpace, SubnetConfig

__all__ = ["subsample_frames", "resize_crop", "clip_for_config", "dummy_input", "KINETICS_MEAN", "KINETICS_STD",
           "IMAGENET_MEAN", "IMAGENET_STD"]

# The normalization of the inputs: PyTorchVideo's Kinetics one (its model zoo recipes; the
# default of ``data.kinetics_dataset`` and of the video entrypoints' ``DefaultCfg``) and
# torchvision's ImageNet one (the 2D entrypoints').
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ModelInput = torch.Tensor | list[torch.Tensor]


def subsample_frames(clip: torch.Tensor, num_frames: int, *, temporal_dim: int = -3) -> torch.Tensor:
    """``num_frames`` frames picked uniformly over the whole span of ``clip``.

    The same indices as ``pytorchvideo.transforms.functional.uniform_temporal_subsample``
    (``linspace(0, T - 1, num_frames)`` rounded down), first and last frame included.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    total = clip.shape[temporal_dim]
    if total == num_frames:
        return clip
    index = torch.linspace(0, total - 1, num_frames, device=clip.device).clamp(0, total - 1).long()
    return clip.index_select(temporal_dim, index)


def resize_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the last two (spatial) dims of ``clip`` to ``size x size``, bilinear."""
    height, width = clip.shape[-2:]
    if height == size and width == size:
        return clip
    lead = clip.shape[:-2]
    flat = clip.reshape(1, -1, height, width)
    if not flat.is_floating_point():
        flat = flat.float()
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=size < height)
    return out.reshape(*lead, size, size).to(clip.dtype)


def clip_for_config(clip: torch.Tensor, cfg: SubnetConfig, *, slowfast_alpha: int | None = None) -> ModelInput:
    """The input of the sub-network ``cfg``, built from ``clip`` (``(..., C, T, H, W)``).

    Single pathway: ``cfg.frames`` frames at ``cfg.crop``. SlowFast (``slowfast_alpha``
    given): ``[slow, fast]`` with ``cfg.frames`` and ``alpha * cfg.frames`` frames over
    the same span (slow frames picked from the fast ones, like PyTorchVideo's
    ``PackPathway``). Images (``cfg.frames is None``): resized to ``cfg.crop``.
    """
    if cfg.frames is None:
        return resize_crop(clip, cfg.crop)
    if clip.dim() < 4:
        raise ValueError(f"a video clip must be (..., C, T, H, W), got shape {tuple(clip.shape)}")
    if slowfast_alpha is None:
        return resize_crop(subsample_frames(clip, cfg.frames), cfg.crop)
    fast = resize_crop(subsample_frames(clip, cfg.frames * slowfast_alpha), cfg.crop)
    slow = subsample_frames(fast, cfg.frames)
    return [slow, fast]


def dummy_input(space: ConfigSpace, cfg: SubnetConfig, *, batch: int = 1, channels: int = 3,
                device: torch.device | str | None = None) -> ModelInput:
    """A zero input of the right shape for ``cfg`` (for FLOP counting, tracing, export)."""
    if cfg.frames is None:
        return torch.zeros(batch, channels, cfg.crop, cfg.crop, device=device)
    frames = cfg.frames * (space.slowfast_alpha or 1)
    clip = torch.zeros(batch, channels, frames, cfg.crop, cfg.crop, device=device)
    return space.model_input(clip, cfg)
