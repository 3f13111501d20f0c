"""The per-iteration inputs of mutual learning, all built from one decoded batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core import ConfigSpace, SubnetConfig, clip_for_config
from ..core.inputs import ModelInput

__all__ = ["MutualClipSampler"]


class MutualClipSampler:
    """Sandwich-rule configurations and their inputs for one training iteration.

    ``sampler(video)`` with the decoded batch ``video`` of shape ``(B, C, T_full, S, S)``
    (the full configuration's clip, as ``kinetics_dataset`` yields it, already on the
    training device) returns ``[(cfg, model_input), ...]`` following
    ``space.sandwich(generator)``: the full configuration first, then the smallest
    width, then ``num_subnets - 2`` random widths, each with random frames and crop.
    Every input is derived from the same tensor by ``clip_for_config`` (frames
    subsampled over the same span, bilinear resize); SlowFast spaces give
    ``[slow, fast]``. Nothing is decoded again: ``num_clips_seen`` counts the clips
    received (``B`` per call) so a test can compare it with the decoder's count.
    """

    def __init__(self, space: ConfigSpace, *, generator: torch.Generator | None = None) -> None:
        if not isinstance(space, ConfigSpace) or not space.is_video:
            raise ValueError(f"MutualClipSampler needs a video ConfigSpace, got {space!r}")
        self.space = space
        self.generator = generator
        self.num_clips_seen = 0
        self.num_calls = 0
        full = space.full()
        self.expected_frames = full.frames * (space.slowfast_alpha or 1)
        self.expected_crop = full.crop

    def configs(self) -> list[SubnetConfig]:
        """The configurations of the next iteration (advances the generator)."""
        return self.space.sandwich(self.generator)

    def inputs_for(self, video: torch.Tensor, configs: Sequence[SubnetConfig]) -> list[tuple[SubnetConfig, ModelInput]]:
        """``[(cfg, clip_for_config(video, cfg))]`` for given configurations (e.g. an eval grid).

        Does not count as a received clip.
        """
        self._check(video)
        return [(cfg, clip_for_config(video, cfg, slowfast_alpha=self.space.slowfast_alpha)) for cfg in configs]

    def __call__(self, video: torch.Tensor) -> list[tuple[SubnetConfig, ModelInput]]:
        pairs = self.inputs_for(video, self.configs())
        self.num_clips_seen += video.shape[0]
        self.num_calls += 1
        return pairs

    def _check(self, video: torch.Tensor) -> None:
        if not isinstance(video, torch.Tensor) or video.dim() != 5:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"expected a decoded batch (B, C, T, H, W), got {shape}")
        frames, crop = video.shape[2], video.shape[-1]
        if frames != self.expected_frames or crop != self.expected_crop or video.shape[-2] != crop:
            raise ValueError(
                f"the batch must be the full configuration's clip: T={self.expected_frames}, "
                f"{self.expected_crop}x{self.expected_crop}; got T={frames}, {video.shape[-2]}x{crop}"
            )
