"""Decoders that convert only the frames a clip keeps.

PyTorchVideo's ``EncodedVideo.get_clip`` turns EVERY frame of the clip into a float32
RGB tensor (a 2 s 720p clip at 25 fps is 50 frames, about 550 MB), and the transform
then keeps ``T`` of them (``uniform_temporal_subsample``). These subclasses decode the
same packets but convert only the ``T`` frames that the subsample keeps (the same
indices, ``linspace(0, n - 1, T)``), so ``get_clip`` returns exactly
``uniform_temporal_subsample(stock_get_clip(start, end), T)`` at a fraction of the cost.
Decoding errors raise (PyTorchVideo's pyav decoder logs them at debug level and returns
``None``), so the dataset can count and name them.
"""

from __future__ import annotations

import functools
import io
import math
import os
import pathlib

import numpy as np
import torch
from iopath.common.file_io import g_pathmgr
from pytorchvideo.data.encoded_video_pyav import EncodedVideoPyAV, _pyav_decode_stream
from pytorchvideo.data.utils import secs_to_pts
from pytorchvideo.data.video import Video, VideoPathHandler

from ..core import subsample_frames

__all__ = ["SubsampledPyAV", "subsampled_decord_class", "open_video", "keep_indices"]


def keep_indices(total: int, num_frames: int) -> list[int]:
    """The frames ``uniform_temporal_subsample`` keeps out of ``total``."""
    index = torch.linspace(0, total - 1, num_frames).clamp(0, total - 1).long()
    return index.tolist()


def _to_cthw_float(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    video = torch.as_tensor(frames)  # (T, H, W, C) uint8
    return video.permute(3, 0, 1, 2).to(torch.float32)


class SubsampledPyAV(EncodedVideoPyAV):
    """``EncodedVideoPyAV`` whose ``get_clip`` returns ``num_frames`` uniformly picked frames."""

    def __init__(self, file, video_name: str | None = None, *, num_frames: int) -> None:
        super().__init__(file, video_name, decode_audio=False)
        self.num_frames = num_frames

    def get_clip(self, start_sec: float, end_sec: float) -> dict[str, torch.Tensor | None]:
        if not self._selective_decoding:  # no duration in the header: decoded whole at open
            clip = super().get_clip(start_sec, end_sec)
            if clip["video"] is not None:
                clip["video"] = subsample_frames(clip["video"], self.num_frames)
            return clip
        start_pts = secs_to_pts(start_sec, self._video_time_base, self._video_start_pts, round_mode="ceil")
        end_pts = secs_to_pts(end_sec, self._video_time_base, self._video_start_pts, round_mode="ceil")
        frames, _ = _pyav_decode_stream(self._container, start_pts, end_pts, self._container.streams.video[0],
                                        {"video": 0})
        frames = [f for f in frames if start_pts <= f.pts < end_pts]
        if not frames:
            return {"video": None, "audio": None}
        converted: dict[int, np.ndarray] = {}
        arrays = []
        for i in keep_indices(len(frames), self.num_frames):
            if i not in converted:
                converted[i] = frames[i].to_rgb().to_ndarray()
            arrays.append(converted[i])
        return {"video": _to_cthw_float(np.stack(arrays)), "audio": None}


@functools.cache
def subsampled_decord_class() -> type:
    """``SubsampledDecord`` (built on first use: decord is optional)."""
    from pytorchvideo.data.encoded_video_decord import EncodedVideoDecord

    class SubsampledDecord(EncodedVideoDecord):
        """``EncodedVideoDecord`` whose ``get_clip`` fetches only ``num_frames`` uniformly picked frames."""

        def __init__(self, file, video_name: str | None = None, *, num_frames: int) -> None:
            super().__init__(file, video_name, decode_audio=False)
            self.num_frames = num_frames

        def get_clip(self, start_sec: float, end_sec: float) -> dict[str, torch.Tensor | None]:
            if start_sec > end_sec or start_sec > self._duration:
                raise RuntimeError(f"bad time window [{start_sec}, {end_sec}) for video {self._video_name} "
                                   f"of {self._duration} s")
            start_idx = math.ceil(self._fps * start_sec)
            end_idx = min(math.ceil(self._fps * end_sec), len(self._av_reader))
            if end_idx <= start_idx:
                return {"video": None, "audio": None}
            index = [start_idx + i for i in keep_indices(end_idx - start_idx, self.num_frames)]
            batch = self._av_reader.get_batch(index)
            if not isinstance(batch, torch.Tensor):
                batch = batch.asnumpy()
            return {"video": _to_cthw_float(batch), "audio": None}

    return SubsampledDecord


def open_video(path: str, *, decoder: str = "pyav", num_frames: int | None = None) -> Video:
    """Open ``path`` (a video file, or a folder of frames) for ``get_clip``.

    With ``num_frames``, an encoded video's ``get_clip`` returns that many frames picked
    uniformly over the clip (see the module docstring); otherwise PyTorchVideo's classes.
    """
    if num_frames is None or os.path.isdir(path):
        video = VideoPathHandler().video_from_path(path, decode_audio=False, decoder=decoder)
        if num_frames is not None:
            return _SubsampleWrapper(video, num_frames)
        return video
    with g_pathmgr.open(path, "rb") as fh:
        data = io.BytesIO(fh.read())
    name = pathlib.Path(path).name
    if decoder == "pyav":
        return SubsampledPyAV(data, name, num_frames=num_frames)
    if decoder == "decord":
        return subsampled_decord_class()(data, name, num_frames=num_frames)
    raise ValueError(f"unknown video decoder {decoder!r}")


class _SubsampleWrapper(Video):
    """Frame folders: subsample after PyTorchVideo's ``FrameVideo.get_clip``."""

    def __init__(self, video: Video, num_frames: int) -> None:
        self._video, self.num_frames = video, num_frames

    @property
    def name(self):
        return self._video.name

    @property
    def duration(self):
        return self._video.duration

    def get_clip(self, start_sec, end_sec):
        clip = self._video.get_clip(start_sec, end_sec)
        if clip is not None and clip.get("video") is not None:
            clip["video"] = subsample_frames(clip["video"], self.num_frames)
        return clip

    def close(self) -> None:
        self._video.close()
