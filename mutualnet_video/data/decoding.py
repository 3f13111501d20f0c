"""Decoders that convert only the frames a clip keeps.

PyTorchVideo's ``EncodedVideo.get_clip`` turns EVERY frame of the clip into a float32
RGB tensor (a 2 s 720p clip at 25 fps is 50 frames, about 550 MB), and the transform
then keeps ``T`` of them (``uniform_temporal_subsample``). These subclasses decode the
same packets but convert only the ``T`` frames that the subsample keeps (the same
indices, ``linspace(0, n - 1, T)``), so ``get_clip`` returns exactly
``uniform_temporal_subsample(stock_get_clip(start, end), T)`` at a fraction of the cost.
Decoding errors raise (PyTorchVideo's pyav decoder logs them at debug level and returns
``None``), so the dataset can count and name them: :func:`open_video` raises
:class:`VideoReadError` with a ``reason`` out of :data:`FAILURE_REASONS` for a file that is
missing, empty, not a readable container or without a video stream; ``get_clip`` lets the
decoder's error through (a frame that fails mid-file).

What odd videos get (pyav): frames of any pixel format (grayscale, 10-bit, 4:4:4, full or
limited range as the stream flags it) are converted to 8-bit RGB, so a clip always has 3
channels. A video whose stream header has no duration (Matroska/WebM) takes the
container's duration and is decoded selectively like an mp4 (PyTorchVideo decodes all
of it at open and drops its last frame). Frames are picked by index among those whose
timestamps fall in the clip window, so a variable frame rate keeps its frames' order.
AVI stores no presentation timestamps (frame k is at k / fps): PyAV 18.1's demuxer (FFmpeg
8) gives frame k the pts k + 1 on H.264 and MPEG-4 with B-frames, so a window holds the
frames one period early and the whole video's clip misses the last frame (known; xfail
tests in tests/test_data_odd.py).

torchcodec (``SubsampledTorchCodec``): the same frames as pyav's path, by construction.
PyAV reads the container's header at open (so the same files fail at open, with the same
reasons) and, at the first ``get_clip``, demuxes the stream's packets once (no decoding) into
the frame index: the presentation timestamps in order. The clip's frames are those whose
timestamps fall in the window (PyTorchVideo's ``secs_to_pts`` rule, as pyav's path), the
kept ones ``keep_indices`` of them; torchcodec is handed that index
(``custom_frame_mappings``: it does not scan the file again) and decodes and converts only the
kept frames (``get_frames_at``), whose timestamps are checked against the index. AVI files
are decoded by ``SubsampledPyAV`` instead (logged once): AVI stores no presentation
timestamps, and torchcodec does not decode the frames the index names there (MPEG-4 with
B-frames fails, H.264 comes out one frame late). torchcodec
needs FFmpeg's shared libraries on the system: :func:`torchcodec_problem` says in one line
what is missing (``kinetics.resolve_decoder`` raises it when the decoder is selected).

Fork safety: a decoder alive in the main process when DataLoader workers fork, and freed
in a worker, hangs that worker if it runs threads (FFmpeg joins threads the fork does not
have). ``SubsampledPyAV`` and ``SubsampledTorchCodec`` decode on one thread, so they have
none; decord always runs a decoding thread (a decord reader freed in a forked worker crashes
or hangs it): close and drop decord readers before a DataLoader starts its workers (the
datasets do, after each video).
"""

from __future__ import annotations

import bisect
import ctypes.util
import functools
import io
import json
import logging
import math
import os
import pathlib
import re
from fractions import Fraction

import av
import numpy as np
import torch
from iopath.common.file_io import g_pathmgr
from pytorchvideo.data.encoded_video_pyav import EncodedVideoPyAV, _pyav_decode_stream
from pytorchvideo.data.utils import secs_to_pts
from pytorchvideo.data.video import Video, VideoPathHandler

from ..core import subsample_frames

logger = logging.getLogger(__name__)

__all__ = ["FAILURE_REASONS", "VideoReadError", "SubsampledPyAV", "SubsampledTorchCodec", "subsampled_decord_class",
           "open_video", "keep_indices", "torchcodec_problem"]

#: Why a video was skipped (the keys of ``VideoDataset.stats["failed_by_reason"]``):
#: ``missing`` (no such file), ``empty_file`` (zero bytes), ``unreadable`` (not a container
#: the decoder can open: a text file, a truncated header), ``no_video_stream`` (e.g. audio
#: only), ``decode_error`` (the decoder failed on frames of the clip: corrupt data
#: mid-file), ``no_frames`` (the clip window holds no decodable frame).
FAILURE_REASONS: tuple[str, ...] = ("missing", "empty_file", "unreadable", "no_video_stream", "decode_error",
                                    "no_frames")


class VideoReadError(RuntimeError):
    """A video that cannot be read; ``reason`` is one of :data:`FAILURE_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; choose one of {FAILURE_REASONS}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # picklable with its reason (DataLoader workers)
        return type(self), (self.reason, str(self))


def keep_indices(total: int, num_frames: int) -> list[int]:
    """The frames ``uniform_temporal_subsample`` keeps out of ``total``."""
    index = torch.linspace(0, total - 1, num_frames).clamp(0, total - 1).long()
    return index.tolist()


def _to_cthw_float(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    video = torch.as_tensor(frames)  # (T, H, W, C) uint8
    return video.permute(3, 0, 1, 2).to(torch.float32)


def _open_container(file, video_name: str | None) -> tuple[av.container.InputContainer, int, Fraction | None]:
    """PyAV's container of ``file``, its first video stream's start pts and its duration in
    seconds: the stream header's, else the container's, else ``None`` (none anywhere).

    Raises :class:`VideoReadError` ``unreadable`` (not a container PyAV opens) or
    ``no_video_stream`` (the container is closed then).
    """
    try:
        container = av.open(file)
    except Exception as e:
        raise VideoReadError("unreadable", f"cannot open {video_name} as a video container: {e}") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoReadError("no_video_stream", f"{video_name} has no video stream ({', '.join(kinds)})")
    stream = container.streams.video[0]
    start_pts = stream.start_time or 0
    if stream.duration is not None:
        duration = (stream.duration - start_pts) * stream.time_base
    elif container.duration is not None:
        duration = Fraction(container.duration, av.time_base)
    else:
        duration = None
    return container, start_pts, duration


class SubsampledPyAV(EncodedVideoPyAV):
    """``EncodedVideoPyAV`` whose ``get_clip`` returns ``num_frames`` uniformly picked frames
    (every frame of the window for ``None``)."""

    def __init__(self, file, video_name: str | None = None, *, num_frames: int | None) -> None:
        # EncodedVideoPyAV.__init__, with errors that say why, and the container's duration
        # when the stream header has none (instead of decoding every frame at open).
        self._video_name, self._decode_audio, self._has_audio = video_name, False, None
        self._video = self._audio = None
        self.num_frames = num_frames
        self._container, self._video_start_pts, self._duration = _open_container(file, video_name)
        stream = self._container.streams.video[0]
        # One decoding thread: FFmpeg's default slice threads gain nothing on single-slice
        # H.264, and a codec context with threads made in the main process hangs a forked
        # DataLoader worker that frees its inherited copy (it joins threads the fork lacks).
        stream.codec_context.thread_count = 1
        self._video_time_base = stream.time_base
        self._selective_decoding = self._duration is not None
        if self._duration is None:  # no duration anywhere: PyTorchVideo's path (decode everything now)
            self._video, _ = self._pyav_decode_video()
            if self._video is None:
                self._container.close()
                raise VideoReadError("decode_error", f"no frame of {video_name} could be decoded")
            self._duration = (self._video[-1][1] - self._video_start_pts) * self._video_time_base

    def get_clip(self, start_sec: float, end_sec: float) -> dict[str, torch.Tensor | None]:
        if not self._selective_decoding:  # no duration in the header: decoded whole at open
            clip = super().get_clip(start_sec, end_sec)
            if clip["video"] is not None and self.num_frames is not None:
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
        picks = range(len(frames)) if self.num_frames is None else keep_indices(len(frames), self.num_frames)
        for i in picks:
            if i not in converted:
                converted[i] = frames[i].to_rgb().to_ndarray()
            arrays.append(converted[i])
        return {"video": _to_cthw_float(np.stack(arrays)), "audio": None}


#: How to install the FFmpeg shared libraries torchcodec loads (Debian/Ubuntu, as root).
TORCHCODEC_INSTALL = "apt-get install -y --no-install-recommends ffmpeg"


@functools.cache
def torchcodec_problem() -> str | None:
    """``None`` if torchcodec decodes here, else one line saying why not and what to do
    (torchcodec importable but no FFmpeg shared libraries it can load, or a torchcodec
    that cannot load them). Raises ImportError if torchcodec is not installed."""
    import torchcodec

    if getattr(torchcodec, "ffmpeg_major_version", None) is not None:
        return None
    version = getattr(torchcodec, "__version__", "?").split("+")[0]
    folder = pathlib.Path(torchcodec.__file__).parent
    majors = sorted(int(m.group(1)) for f in folder.glob("libtorchcodec_core*.so*")
                    if (m := re.match(r"libtorchcodec_core(\d+)\.", f.name)))
    supported = f"{majors[0]}-{majors[-1]}" if majors else "4-9"
    found = ctypes.util.find_library("avcodec")
    if found is None:
        return (f"torchcodec {version} needs the FFmpeg {supported} shared libraries (libavcodec, libavformat, "
                f"...), none found: install them (`{TORCHCODEC_INSTALL}`) or set decoder: pyav")
    return (f"torchcodec {version} cannot load its FFmpeg libraries although {found} is installed (it supports "
            f"FFmpeg {supported}, built for torch versions its compatibility table lists; torch is "
            f"{torch.__version__}): install a matching FFmpeg or torchcodec, or set decoder: pyav")


class SubsampledTorchCodec(Video):
    """torchcodec's ``VideoDecoder`` over pyav's frame index: ``get_clip`` returns
    ``num_frames`` uniformly picked frames of the window (all its frames for ``None``),
    the frames ``SubsampledPyAV.get_clip`` returns (see the module docstring).

    ``data``: the file's bytes. Raises :class:`VideoReadError` (``unreadable``,
    ``no_video_stream``) at open, as ``SubsampledPyAV`` does; ``get_clip`` lets errors of
    the demuxer or decoder through (counted as ``decode_error``).

    An AVI file (container format ``avi``) is decoded by a ``SubsampledPyAV`` on the same
    bytes instead (logged once per process): torchcodec does not give the frames of the
    index there (AVI stores no presentation timestamps; MPEG-4 with B-frames fails, H.264
    comes out one frame late while echoing the index's timestamps).
    """

    def __init__(self, data: bytes, video_name: str | None = None, *, num_frames: int | None) -> None:
        self._name, self._data, self.num_frames = video_name, data, num_frames
        self._decoder = None
        self._pyav: SubsampledPyAV | None = None  # AVI: pyav's path decodes
        self._pts: list[int] | None = None  # presentation timestamps, sorted (the frame index)
        self._container, self._start_pts, self._duration = _open_container(io.BytesIO(data), video_name)
        try:
            if self._container.format.name == "avi":
                self.close()
                _log_avi_fallback()
                self._pyav = SubsampledPyAV(io.BytesIO(data), video_name, num_frames=num_frames)
                self._duration = self._pyav.duration
                return
            self._time_base = self._container.streams.video[0].time_base
            if self._duration is None:  # no duration anywhere: pyav's path decodes it all, takes its last frame's time
                self._index()
                if not self._pts:
                    raise VideoReadError("decode_error", f"no frame of {video_name} could be decoded")
                self._duration = (self._pts[-1] - self._start_pts) * self._time_base
        except BaseException:
            self.close()
            raise

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def duration(self) -> Fraction:
        return self._duration

    def _index(self) -> None:
        """Demux the packets (PyAV, no decoding): the frame index and torchcodec's decoder."""
        if self._pts is not None:
            return
        stream = self._container.streams.video[0]
        packets = []
        for packet in self._container.demux(stream):
            if packet.size == 0:  # the demuxer's final flush packet
                continue
            if packet.pts is None:
                raise RuntimeError(f"{self._name} has video packets without timestamps (use decoder pyav)")
            packets.append((packet.pts, packet.duration or 0, bool(packet.is_keyframe)))
        self._container.close()
        self._container = None
        packets.sort()
        self._pts = [p[0] for p in packets]
        if not packets:
            return
        steps = [b - a for a, b in zip(self._pts, self._pts[1:])]
        fill = steps[-1] if steps else 1
        frames = [{"pts": pts, "duration": duration or (steps[i] if i < len(steps) else fill) or 1,
                   "key_frame": int(key)} for i, (pts, duration, key) in enumerate(packets)]
        from torchcodec.decoders import VideoDecoder

        # One FFmpeg thread: no decoder thread for a forked DataLoader worker to join.
        self._decoder = VideoDecoder(self._data, dimension_order="NHWC", num_ffmpeg_threads=1,
                                     custom_frame_mappings=json.dumps({"frames": frames}))

    def get_clip(self, start_sec: float, end_sec: float) -> dict[str, torch.Tensor | None]:
        if self._pyav is not None:
            return self._pyav.get_clip(start_sec, end_sec)
        self._index()
        start_pts = secs_to_pts(start_sec, self._time_base, self._start_pts, round_mode="ceil")
        end_pts = secs_to_pts(end_sec, self._time_base, self._start_pts, round_mode="ceil")
        first, stop = bisect.bisect_left(self._pts, start_pts), bisect.bisect_left(self._pts, end_pts)
        if stop <= first:
            return {"video": None, "audio": None}
        picks = list(range(first, stop)) if self.num_frames is None else [
            first + i for i in keep_indices(stop - first, self.num_frames)]
        unique = sorted(set(picks))
        batch = self._decoder.get_frames_at(unique)
        expected = torch.tensor([self._pts[i] for i in unique], dtype=torch.float64) * float(self._time_base)
        if not torch.allclose(batch.pts_seconds.to(torch.float64), expected, rtol=0, atol=1e-6):
            raise RuntimeError(f"torchcodec returned the frames at {batch.pts_seconds.tolist()} s of {self._name}, "
                               f"expected {expected.tolist()}")
        frames = batch.data
        if len(unique) != len(picks):
            frames = frames[torch.tensor([unique.index(i) for i in picks])]
        return {"video": _to_cthw_float(frames), "audio": None}

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._pyav is not None:
            self._pyav.close()
        self._decoder = None


@functools.cache
def _log_avi_fallback() -> None:
    logger.info("decoder torchcodec: AVI files are decoded with pyav (torchcodec does not give the frames of "
                "their index: AVI stores no presentation timestamps)")


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

    ``decoder="torchcodec"`` reads files with :class:`SubsampledTorchCodec` (every frame of
    the clip for ``num_frames=None``) and frame folders as pyav does.

    Raises :class:`VideoReadError` (``missing``, ``empty_file``, ``unreadable``,
    ``no_video_stream``) for a video that cannot be opened; ValueError for an unknown decoder.
    """
    if decoder not in ("pyav", "decord", "torchcodec"):
        raise ValueError(f"unknown video decoder {decoder!r}")
    if not os.path.exists(path):
        raise VideoReadError("missing", f"{path} does not exist")
    if decoder == "torchcodec" and os.path.isdir(path):
        decoder = "pyav"  # PyTorchVideo's FrameVideo: no decoder involved
    if (num_frames is None and decoder != "torchcodec") or os.path.isdir(path):
        try:
            video = VideoPathHandler().video_from_path(path, decode_audio=False, decoder=decoder)
        except Exception as e:
            raise VideoReadError(_open_failure(path), f"cannot open {path}: {e}") from e
        if num_frames is not None:
            return _SubsampleWrapper(video, num_frames)
        return video
    try:
        with g_pathmgr.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as e:  # deleted since the check above
        raise VideoReadError("missing", f"{path} does not exist") from e
    except OSError as e:
        raise VideoReadError("unreadable", f"cannot read {path}: {e}") from e
    if not data:
        raise VideoReadError("empty_file", f"{path} is empty (0 bytes)")
    name = pathlib.Path(path).name
    if decoder == "pyav":
        return SubsampledPyAV(io.BytesIO(data), name, num_frames=num_frames)
    if decoder == "torchcodec":
        return SubsampledTorchCodec(data, name, num_frames=num_frames)
    try:
        return subsampled_decord_class()(io.BytesIO(data), name, num_frames=num_frames)
    except Exception as e:
        raise VideoReadError(_open_failure(data), f"decord cannot open {path}: {e}") from e


def _open_failure(source: str | bytes) -> str:
    """``no_video_stream`` if PyAV opens ``source`` (a path or the file's bytes) and finds no
    video stream in it, ``empty_file`` for zero bytes, else ``unreadable``."""
    if isinstance(source, str) and os.path.isfile(source) and os.path.getsize(source) == 0:
        return "empty_file"
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else source) as container:
            return "no_video_stream" if not container.streams.video else "unreadable"
    except Exception:
        return "unreadable"


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
