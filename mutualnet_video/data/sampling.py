"""Clip and video samplers: fixed multi-view clip spacing, rank x worker sharding."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sized
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from pytorchvideo.data.clip_sampling import ClipInfo, ClipSampler
from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler as _StockConstantClipsPerVideoSampler

__all__ = [
    "ConstantClipsPerVideoSampler",
    "FullVideoClipSampler",
    "ShardedVideoSampler",
    "shard_indices",
    "worker_split",
]

logger = logging.getLogger(__name__)


class ConstantClipsPerVideoSampler(_StockConstantClipsPerVideoSampler):
    """``clips_per_video`` clips spread over the WHOLE video, ``augs_per_clip`` views each.

    PyTorchVideo 0.1.5 spaces the starts by ``max_start / N``, so the last clip never
    reaches the end of the video. Here start ``i`` is ``max_start * i / (N - 1)``: the
    first clip starts at 0 and the last one ends at the end of the video. With one clip
    per video the clip is centred. A video shorter than a clip gives ``N`` clips from 0.
    """

    def __init__(self, clip_duration: float | Fraction, clips_per_video: int, augs_per_clip: int = 1) -> None:
        if clips_per_video < 1 or augs_per_clip < 1:
            raise ValueError(f"clips_per_video and augs_per_clip must be >= 1, got {clips_per_video}, {augs_per_clip}")
        super().__init__(clip_duration, clips_per_video, augs_per_clip)

    def clip_starts(self, video_duration: float | Fraction) -> list[Fraction]:
        """The start times (s) of the clips of a video of this duration."""
        max_start = Fraction(max(Fraction(video_duration) - self._clip_duration, 0))
        n = self._clips_per_video
        if n == 1:
            return [max_start / 2]
        return [max_start * i / (n - 1) for i in range(n)]

    def __call__(self, last_clip_time: float, video_duration: float, annotation: dict[str, Any]) -> ClipInfo:
        clip_index, aug_index = self._current_clip_index, self._current_aug_index
        start = self.clip_starts(video_duration)[clip_index]
        self._current_aug_index += 1
        if self._current_aug_index >= self._augs_per_clip:
            self._current_aug_index = 0
            self._current_clip_index += 1
        is_last_clip = self._current_clip_index >= self._clips_per_video
        if is_last_clip:
            self.reset()
        return ClipInfo(start, start + self._clip_duration, clip_index, aug_index, is_last_clip)


class FullVideoClipSampler(ClipSampler):
    """One clip per video spanning the whole video (``clip_duration=None`` in the datasets),
    ``augs_per_clip`` views of it."""

    def __init__(self, augs_per_clip: int = 1) -> None:
        if augs_per_clip < 1:
            raise ValueError(f"augs_per_clip must be >= 1, got {augs_per_clip}")
        super().__init__(0)
        self._augs_per_clip = augs_per_clip

    def __call__(self, last_clip_time: float, video_duration: float, annotation: dict[str, Any]) -> ClipInfo:
        aug_index = self._current_aug_index
        self._current_aug_index += 1
        is_last_clip = self._current_aug_index >= self._augs_per_clip
        if is_last_clip:
            self.reset()
        return ClipInfo(Fraction(0), Fraction(video_duration), 0, aug_index, is_last_clip)

    def reset(self) -> None:
        self._current_aug_index = 0


def shard_indices(num_videos: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = False,
                  seed: int = 0, epoch: int = 0) -> list[int]:
    """The video indices of ``rank``: a (seeded, per-epoch) permutation, strided by rank.

    No padding: the shards of all ranks are disjoint and their union is every video
    (ranks may differ by one video).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(num_videos, generator=gen).tolist()
    else:
        order = list(range(num_videos))
    return order[rank::world_size]


def worker_split(indices: list[int], *, worker_id: int, num_workers: int) -> list[int]:
    """The contiguous part of ``indices`` that DataLoader worker ``worker_id`` reads.

    The same split as PyTorchVideo's ``MultiProcessSampler`` (``np.array_split``).
    """
    if num_workers <= 1:
        return list(indices)
    parts = np.array_split(np.arange(len(indices)), num_workers)[worker_id]
    return [indices[i] for i in parts]


class ShardedVideoSampler(torch.utils.data.Sampler):
    """A video sampler for ``LabeledVideoDataset`` that shards videos over ranks.

    Iterates over ``shard_indices(len(data_source), rank=..., world_size=..., ...)``;
    PyTorchVideo's ``MultiProcessSampler`` then splits this shard over DataLoader
    workers, so (rank, worker) pairs never share a video. The epoch lives in a
    shared-memory tensor: ``set_epoch`` reaches running (persistent) workers too.
    """

    def __init__(self, data_source: Sized, *, rank: int = 0, world_size: int = 1, shuffle: bool = False,
                 seed: int = 0) -> None:
        shard_indices(0, rank=rank, world_size=world_size)  # validates rank / world_size
        self._num_videos = len(data_source)
        self.rank, self.world_size, self.shuffle, self.seed = rank, world_size, shuffle, seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(shard_indices(self._num_videos, rank=self.rank, world_size=self.world_size,
                                  shuffle=self.shuffle, seed=self.seed, epoch=self.epoch))

    def __len__(self) -> int:
        return len(range(self.rank, self._num_videos, self.world_size))
