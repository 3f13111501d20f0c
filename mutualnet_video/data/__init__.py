"""Video data for mutual learning: Kinetics-format datasets on PyTorchVideo, one decode
per clip feeding every sandwich configuration, and a synthetic action dataset.

Importing this package imports PyTorchVideo (after ``mutualnet_video``'s compat alias).
"""

from .kinetics import (
    DECODERS,
    VideoClipTransform,
    VideoDataset,
    VideoLoader,
    build_loader,
    kinetics_dataset,
    read_video_list,
    resolve_decoder,
)
from .mutual_sampler import MutualClipSampler
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
    "SYNTHETIC_CLASSES",
    "ConstantClipsPerVideoSampler",
    "FullVideoClipSampler",
    "MutualClipSampler",
    "ShardedVideoSampler",
    "VideoClipTransform",
    "VideoDataset",
    "VideoLoader",
    "build_loader",
    "kinetics_dataset",
    "make_synthetic_kinetics",
    "read_video_list",
    "render_clip",
    "resolve_decoder",
    "shard_indices",
    "worker_split",
]
