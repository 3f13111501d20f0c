"""Kinetics-style video datasets on PyTorchVideo, with counted failures and sharding.

``kinetics_dataset`` reads a CSV of ``<path> <label>`` lines (or a folder of class
folders) and yields one dict per clip (per view for ``split="test"``)::

    {"video": FloatTensor (C, T_full, S, S) normalized, "label": int, "video_index": int,
     "clip_index": int, "aug_index": int, "video_name": str}

with ``T_full = space.full().frames * (space.slowfast_alpha or 1)`` frames picked
uniformly over the clip and ``S = space.full().crop``: the input of the FULL
configuration; every smaller configuration is built from it on the device by the
training's ``SandwichSampler`` (one decode per clip).

It is PyTorchVideo's ``LabeledVideoDataset`` with three fixes (REFERENCE section 3):
decode failures are counted in ``dataset.stats`` by reason and named once in the log
instead of being logged at debug level and dropped (a pass in which more than
``max_failed_fraction`` of the videos fail, or all of them, raises :class:`DataLoadError`
in one line); the multi-view clip sampler reaches the end of each video; and videos are
sharded over ranks as well as DataLoader workers, without padding or duplicates. A
malformed CSV raises before any decoding, naming file and line.

Videos as they come (pyav decoder, and torchcodec alike; the tests write each kind):

* shorter than the clip (or than ``T_full`` frames): the clip holds the frames there are,
  and the frame subsample repeats them up to ``T_full`` (indices
  ``linspace(0, n - 1, T_full)`` truncated: 3 frames give frames 0, 0, 1, 2 for 4);
* smaller than the crop: upscaled by the short-side resize before the crop (bilinear);
* grayscale (4:0:0 H.264, gray FFV1), 10-bit, 4:4:4: converted to 8-bit RGB, 3 channels;
* variable frame rate: the frames whose timestamps fall in the clip, subsampled by index;
* WebM/VP9, Matroska: decoded as mp4 (duration from the container);
* skipped, counted and named with a reason of :data:`FAILURE_REASONS`: a listed file
  deleted since (``missing``), a zero-byte file (``empty_file``), a file that is not a
  video container (``unreadable``), audio only (``no_video_stream``), frames that fail
  to decode in the clip (``decode_error``: corrupt data mid-file), a clip window without
  frames (``no_frames``). A video is skipped whole at its first failing clip.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from functools import partial
from typing import Any

import torch
from pytorchvideo.data.clip_sampling import ClipSampler, RandomClipSampler
from pytorchvideo.data.labeled_video_dataset import LabeledVideoDataset
from pytorchvideo.data.labeled_video_paths import LabeledVideoPaths
from pytorchvideo.data.utils import MultiProcessSampler
from pytorchvideo.transforms.functional import short_side_scale, uniform_crop, uniform_temporal_subsample

from ..core import ConfigSpace
from ..core.inputs import KINETICS_MEAN, KINETICS_STD
from .decoding import FAILURE_REASONS, VideoReadError, open_video, torchcodec_problem
from .sampling import ConstantClipsPerVideoSampler, FullVideoClipSampler, ShardedVideoSampler

__all__ = [
    "DECODERS",
    "FAILURE_REASONS",
    "DataLoadError",
    "VIDEO_EXTENSIONS",
    "resolve_decoder",
    "available_decoders",
    "read_video_list",
    "VideoClipTransform",
    "VideoDataset",
    "kinetics_dataset",
    "VideoLoader",
    "build_loader",
]

logger = logging.getLogger(__name__)

#: decoder key -> the module it needs. PyTorchVideo's "torchvision" decoder is broken
#: with torchvision >= 0.16 (REFERENCE section 3) and is not offered.
DECODERS: dict[str, str] = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec"}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
SPLITS = ("train", "val", "test")
DEFAULT_MAX_FAILED_FRACTION = 0.1
_REASON_CODE = {reason: code for code, reason in enumerate(FAILURE_REASONS, start=1)}  # 0: no failure
_MAX_WORKERS = 128  # DataLoader workers per rank for which a pass is checked as a whole


class DataLoadError(RuntimeError):
    """Too many videos of a pass failed (or all of them): one line with the counts by reason.

    Raised in a DataLoader worker, the DataLoader re-raises it in the main process with
    the worker's traceback in the message; the message keeps only the original line.
    """

    def __init__(self, message: str = "") -> None:
        if "\nOriginal Traceback" in message:  # torch.utils.data ExceptionWrapper.reraise
            last = message.rstrip().splitlines()[-1]
            _, sep, original = last.partition(f"{type(self).__name__}: ")
            if sep:
                message = original
        super().__init__(message)


def resolve_decoder(decoder: str) -> str:
    """The decoder to use for ``decoder``: itself if importable, else ``"pyav"`` with a warning.

    Raises ValueError naming an unknown decoder, and (in one line starting ``decoder:``, so
    that a config names its key) for torchcodec installed without FFmpeg shared libraries it
    can load: selecting it fails before any training, with the install line
    (:func:`~mutualnet_video.data.decoding.torchcodec_problem`).
    """
    if decoder not in DECODERS:
        hint = " (PyTorchVideo's torchvision decoder is broken with current torchvision)" if decoder == "torchvision" else ""
        raise ValueError(f"unknown video decoder {decoder!r}{hint}; choose one of {sorted(DECODERS)}")
    if (e := _import_error(decoder)) is not None:
        if decoder == "pyav":
            raise ImportError(f"the pyav decoder needs PyAV (`pip install av`): {e}") from e
        warnings.warn(f"video decoder {decoder!r} is not importable ({e}); falling back to 'pyav'",
                      RuntimeWarning, stacklevel=2)
        importlib.import_module(DECODERS["pyav"])
        return "pyav"
    if decoder == "torchcodec" and (problem := torchcodec_problem()) is not None:
        raise ValueError(f"decoder: {problem}")
    return decoder


def available_decoders() -> dict[str, str | None]:
    """Each decoder of :data:`DECODERS` -> ``None`` if it decodes here, else one line saying
    why not (its module is not importable; torchcodec without FFmpeg libraries it can load):
    the checks of :func:`resolve_decoder`, without its fallback or errors."""
    out: dict[str, str | None] = {}
    for name in DECODERS:
        if (error := _import_error(name)) is not None:
            out[name] = f"not importable ({error})"
        else:
            out[name] = torchcodec_problem() if name == "torchcodec" else None
    return out


def _import_error(decoder: str) -> ImportError | None:
    """The ImportError of the module ``decoder`` needs, ``None`` if it imports."""
    try:
        importlib.import_module(DECODERS[decoder])
    except ImportError as e:
        return e
    return None


def read_video_list(data_path: str | os.PathLike, *, video_path_prefix: str = "",
                    check_files: bool = True) -> list[tuple[str, int]]:
    """Read ``(video path, label)`` pairs from a CSV file or a folder of class folders.

    CSV: one ``<path> <label>`` line per video (whitespace-separated, paths without
    spaces; blank lines and ``#`` comments skipped). Relative paths are joined to
    ``video_path_prefix`` if given, else to the CSV's folder. Folder: every video in
    ``<class>/`` sub-folders, labels by sorted class name (like PyTorchVideo).

    Raises ValueError naming ``file:line`` for a wrong column count, a non-integer or
    negative label, or (``check_files``) a video that does not exist; and naming the
    path when it lists no video.
    """
    data_path = os.fspath(data_path)
    entries: list[tuple[str, int]] = []
    if os.path.isdir(data_path):
        classes = sorted(d.name for d in os.scandir(data_path) if d.is_dir())
        for label, name in enumerate(classes):
            folder = os.path.join(data_path, name)
            for file in sorted(os.listdir(folder)):
                if file.lower().endswith(VIDEO_EXTENSIONS):
                    entries.append((os.path.join(folder, file), label))
    elif os.path.isfile(data_path):
        base = video_path_prefix or os.path.dirname(os.path.abspath(data_path))
        with open(data_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                fields = text.split()
                if len(fields) != 2:
                    raise ValueError(f"{data_path}:{lineno}: expected '<path> <label>' (2 columns), "
                                     f"got {len(fields)}: {text!r}")
                path, label_text = fields
                try:
                    label = int(label_text)
                except ValueError:
                    raise ValueError(f"{data_path}:{lineno}: label {label_text!r} is not an integer") from None
                if label < 0:
                    raise ValueError(f"{data_path}:{lineno}: label {label} is negative")
                path = os.path.join(base, path)  # an absolute path stays as it is
                if check_files and not os.path.exists(path):
                    raise ValueError(f"{data_path}:{lineno}: video {path} does not exist")
                entries.append((path, label))
    else:
        raise FileNotFoundError(f"video list {data_path} not found (need a CSV file or a folder of class folders)")
    if not entries:
        raise ValueError(f"{data_path} lists no videos")
    return entries


def _split_file(data_path: str, split: str) -> str:
    """A folder holding ``<split>.csv`` stands for that CSV (``test`` falls back to ``val.csv``)."""
    if os.path.isdir(data_path):
        names = [f"{split}.csv"] + (["val.csv"] if split == "test" else [])
        for name in names:
            candidate = os.path.join(data_path, name)
            if os.path.isfile(candidate):
                return candidate
    return data_path


class VideoClipTransform:
    """Turn a decoded clip dict into the model-ready sample (one call per clip/view).

    ``train``: ``frames`` frames uniformly over the clip, short side scaled to a random
    size in ``[min_short_side, max_short_side]``, random ``crop x crop`` crop, random
    horizontal flip (if ``horizontal_flip``). ``val``/``test``: short side scaled to
    ``crop``, then the centre crop (``spatial_crops=1``) or the left/centre/right crop
    selected by ``aug_index`` (``spatial_crops=3``). Normalized last (fewer pixels):
    ``(x / 255 - mean) / std``.
    """

    def __init__(self, *, mode: str, frames: int, crop: int, mean: Sequence[float] = KINETICS_MEAN,
                 std: Sequence[float] = KINETICS_STD, min_short_side: int | None = None,
                 max_short_side: int | None = None, spatial_crops: int = 1, horizontal_flip: bool = True) -> None:
        if mode not in SPLITS:
            raise ValueError(f"mode must be one of {SPLITS}, got {mode!r}")
        if spatial_crops not in (1, 3):
            raise ValueError(f"spatial_crops must be 1 or 3, got {spatial_crops!r}")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean/std must have the same length and std > 0, got {mean}, {std}")
        self.mode, self.frames, self.crop = mode, frames, crop
        self.min_short_side = min_short_side or round(crop * 256 / 224)
        self.max_short_side = max_short_side or round(crop * 320 / 224)
        if not crop <= self.min_short_side <= self.max_short_side:
            raise ValueError(f"need crop <= min_short_side <= max_short_side, got {crop}, "
                             f"{self.min_short_side}, {self.max_short_side}")
        self.spatial_crops, self.horizontal_flip = spatial_crops, horizontal_flip
        # (x / 255 - mean) / std == x * scale - shift
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1, 1)
        self._shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(-1, 1, 1, 1)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        video = sample["video"]
        if video.dtype != torch.float32:
            video = video.float()
        video = uniform_temporal_subsample(video, self.frames)
        if self.mode == "train":
            size = int(torch.randint(self.min_short_side, self.max_short_side + 1, ()))
            video = short_side_scale(video, size)
            height, width = video.shape[-2:]
            top = int(torch.randint(0, height - self.crop + 1, ()))
            left = int(torch.randint(0, width - self.crop + 1, ()))
            video = video[..., top:top + self.crop, left:left + self.crop]
            if self.horizontal_flip and bool(torch.rand(()) < 0.5):
                video = video.flip(-1)
        else:
            video = short_side_scale(video, self.crop)
            index = 1 if self.spatial_crops == 1 else int(sample["aug_index"])
            video = uniform_crop(video, self.crop, index)
        # short_side_scale returned a new tensor: the in-place ops touch no shared clip.
        video = video.mul_(self._scale).sub_(self._shift).contiguous()
        return {
            "video": video,
            "label": int(sample["label"]),
            "video_index": int(sample["video_index"]),
            "clip_index": int(sample["clip_index"]),
            "aug_index": int(sample["aug_index"]),
            "video_name": str(sample["video_name"]),
        }


class VideoDataset(LabeledVideoDataset):
    """PyTorchVideo's ``LabeledVideoDataset`` that counts what it decodes and what fails.

    Iterating yields ``transform(clip_dict)`` for each clip of each video of this rank's
    shard (split again over DataLoader workers). With ``num_frames``, videos are opened
    with ``open_video(..., num_frames=...)``: a decoded clip holds only the frames the
    transform keeps (the same frames, converted once). A video that cannot be opened or
    decoded is skipped, counted in ``stats`` under its reason (:data:`FAILURE_REASONS`)
    and named once in the log (warning); no error of a video reaches the DataLoader.

    A pass (one iteration over this rank's shard, by all its DataLoader workers together)
    raises :class:`DataLoadError` at its end if every video failed, or if more than
    ``max_failed_fraction`` of them failed (``None``: only the first check), naming the
    data path and the counts by reason. With DataLoader workers the worker that completes
    the pass checks it (for up to 128 workers per rank); an interrupted pass is not checked.

    The counters live in shared memory, so ``stats`` in the main process includes
    what DataLoader workers did (see :attr:`stats`, :meth:`reset_stats`,
    :meth:`reduced_stats`).

    ``cache_mb > 0`` keeps decoded clips (the frames the transform keeps, before the
    transform) in memory, keyed by video and clip interval, up to that many MB: a video
    read again at the same interval (whole-video clips of short videos, epoch after
    epoch) is not opened or decoded again. The cache lives in the process that iterates
    (with DataLoader workers, in each worker, for as long as the worker lives).
    """

    def __init__(self, labeled_videos: Sequence[tuple[str, int]], *, clip_sampler: ClipSampler,
                 transform: Callable[[dict], dict] | None, decoder: str = "pyav", rank: int = 0,
                 world_size: int = 1, shuffle: bool = False, seed: int = 0, clips_per_video: int = 1,
                 data_path: str = "", num_frames: int | None = None, cache_mb: int = 0,
                 max_failed_fraction: float | None = DEFAULT_MAX_FAILED_FRACTION) -> None:
        paths = LabeledVideoPaths(list(labeled_videos))
        sampler = partial(ShardedVideoSampler, rank=rank, world_size=world_size, shuffle=shuffle, seed=seed)
        super().__init__(paths, clip_sampler, sampler, transform, decode_audio=False, decoder=decoder)
        self.data_path = data_path
        self.clips_per_video = clips_per_video
        self.num_frames = num_frames
        self.rank, self.world_size = rank, world_size
        self.max_failed_fraction = _check_fraction(max_failed_fraction)
        n = len(paths)
        # Per video, in shared memory (each video is read by one worker of a pass at a time).
        # Monotonic counts: stats are differences from a baseline (reset_stats).
        self._clips_decoded = torch.zeros(n, dtype=torch.int64).share_memory_()
        self._failures = torch.zeros(n, dtype=torch.int64).share_memory_()  # passes in which it failed
        self._reason = torch.zeros(n, dtype=torch.int8).share_memory_()  # of its latest failure
        self._result = torch.zeros(n, dtype=torch.int8).share_memory_()  # of its latest attempt (0: decoded)
        self._stamp = torch.full((n,), -1, dtype=torch.int64).share_memory_()  # pass of its latest attempt
        self._warned = torch.zeros(n, dtype=torch.bool).share_memory_()
        # Passes started by worker w of a DataLoader with W workers (W = 0: the main process).
        self._passes = torch.zeros(_MAX_WORKERS + 1, _MAX_WORKERS, dtype=torch.int64).share_memory_()
        self._base_clips = torch.zeros(n, dtype=torch.int64)
        self._base_failures = torch.zeros(n, dtype=torch.int64)
        self._iterator: Iterator[dict] | None = None
        if not isinstance(cache_mb, int) or cache_mb < 0:
            raise ValueError(f"cache_mb must be a non-negative int, got {cache_mb!r}")
        self._cache_bytes_left = cache_mb << 20
        self._cache: dict[int, tuple[str, Any, dict[tuple[float, float], torch.Tensor]]] = {}

    # --- bookkeeping -------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """What this rank decoded and skipped since it was built or :meth:`reset_stats`,
        summed over its DataLoader workers (read it in the main process)::

            {"videos": int,             # listed videos (all ranks)
             "decoded": int,            # clips decoded (views of a clip share one decode)
             "decoded_videos": int,     # videos with at least one decoded clip
             "failed": int,             # videos skipped at least once
             "failed_by_reason": {reason: int for reason in FAILURE_REASONS},  # sums to "failed"
             "failed_paths": [str],     # the skipped videos, in list order
             "failure_reasons": {path: reason}}

        Cumulative: a video decoded in two passes counts twice in ``decoded``, a video
        skipped in two passes once in ``failed`` (under the reason of its latest failure).
        For per-epoch counts read ``stats`` then call :meth:`reset_stats` at each epoch
        boundary (each video is read once per pass, so ``failed`` is then the videos
        skipped in that epoch).
        """
        clips = self._clips_decoded - self._base_clips
        failed = ((self._failures - self._base_failures) > 0).nonzero().flatten().tolist()
        reasons = [FAILURE_REASONS[int(self._reason[i]) - 1] for i in failed]
        paths = [self._labeled_videos[i][0] for i in failed]
        return {
            "videos": len(self._labeled_videos),
            "decoded": int(clips.sum()),
            "decoded_videos": int((clips > 0).sum()),
            "failed": len(failed),
            "failed_by_reason": {reason: reasons.count(reason) for reason in FAILURE_REASONS},
            "failed_paths": paths,
            "failure_reasons": dict(zip(paths, reasons)),
        }

    def reset_stats(self) -> None:
        """Start :attr:`stats` from zero (in the main process; workers keep counting, and a
        skipped video is still named in the log only once)."""
        self._base_clips = self._clips_decoded.clone()
        self._base_failures = self._failures.clone()

    def reduced_stats(self, device: torch.device | str | None = None) -> dict[str, Any]:
        """The counts of :attr:`stats` summed over the ranks of the default process group
        (``torch.distributed`` initialized; else this rank's counts): ``{"videos",
        "decoded", "decoded_videos", "failed", "failed_by_reason"}``, no paths.

        A collective: every rank must call it. ``device`` holds the reduced tensor (default:
        the current CUDA device for nccl, else the CPU).
        """
        stats = self.stats
        counts = {key: stats[key] for key in ("videos", "decoded", "decoded_videos", "failed")}
        by_reason = dict(stats["failed_by_reason"])
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if device is None:
                nccl = dist.get_backend() == "nccl"
                device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
            keys = ["decoded", "decoded_videos", "failed"]
            values = torch.tensor([counts[k] for k in keys] + list(by_reason.values()), dtype=torch.int64,
                                  device=device)
            dist.all_reduce(values)
            values = values.tolist()
            counts.update(zip(keys, values[:len(keys)]))
            by_reason = dict(zip(by_reason, values[len(keys):]))
        return {**counts, "failed_by_reason": by_reason}

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle (train) for ``epoch``; reaches running workers (shared memory)."""
        self._video_sampler.set_epoch(epoch)

    def video_path(self, video_index: int) -> str:
        return self._labeled_videos[video_index][0]

    def _record(self, video_index: int, path: str, failure: tuple[str, BaseException] | None,
                token: int | None) -> None:
        """Note the outcome of one attempt at a video (after its last clip)."""
        code = 0
        if failure is not None:
            reason, error = failure
            code = _REASON_CODE[reason]
            self._reason[video_index] = code
            self._failures[video_index] += 1
            if not bool(self._warned[video_index]):
                logger.warning("skipping video %s: %s: %s: %s", path, reason, type(error).__name__, error)
                self._warned[video_index] = True
        self._result[video_index] = code
        if token is not None:
            self._stamp[video_index] = token  # written last: the result is in place when seen

    def _pass_token(self) -> int | None:
        """A number the workers of one DataLoader pass share and no other pass has."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 0) if info is None else (info.id, info.num_workers)
        if workers > _MAX_WORKERS:
            return None
        self._passes[workers, worker] += 1  # only this worker writes its slot
        return int(self._passes[workers, worker]) * (_MAX_WORKERS + 1) + workers

    def _check_pass(self, results: torch.Tensor, last_error: tuple[str, BaseException] | None) -> None:
        """Raise DataLoadError if every video of a pass failed or more than the allowed fraction."""
        total, failed = results.numel(), int((results > 0).sum())
        if not failed:
            return
        counts = ", ".join(f"{reason} {int((results == code).sum())}" for reason, code in _REASON_CODE.items()
                           if bool((results == code).any()))
        where = self.data_path or "the dataset"
        if self.world_size > 1:
            where += f" (rank {self.rank})"
        if failed == total:
            detail = f"; last error on {last_error[0]}: {' '.join(str(last_error[1]).split())}" if last_error else ""
            raise DataLoadError(f"no clip could be decoded from {where}: all {total} videos tried failed "
                                f"({counts}; decoder {self._decoder!r}){detail}")
        limit = self.max_failed_fraction
        if limit is not None and failed > limit * total:
            raise DataLoadError(f"{where}: {failed} of {total} videos failed ({counts}), "
                                f"above max_failed_fraction {limit}")

    def __len__(self) -> int:
        """Clips (views) this rank yields per epoch if nothing fails."""
        return len(self._video_sampler) * self.clips_per_video

    # --- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        return self._generate(self._pass_token())

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._generate(self._pass_token())
        return next(self._iterator)

    def _generate(self, token: int | None) -> Iterator[dict]:
        in_worker = torch.utils.data.get_worker_info() is not None
        attempted = yielded = 0
        results: list[int] = []
        last_error: tuple[str, BaseException] | None = None
        for video_index in MultiProcessSampler(self._video_sampler):
            attempted += 1
            path, info = self._labeled_videos[video_index]
            failure: tuple[str, BaseException] | None = None
            try:
                video = self._open(video_index, path)
            except Exception as e:  # missing, empty, not a video, no video stream
                failure = (_reason(e, "unreadable"), e)
            else:
                try:
                    self._clip_sampler.reset()
                    next_start: float | Fraction = 0.0
                    clip: dict | None = None
                    while True:
                        start, end, clip_index, aug_index, is_last = self._clip_sampler(next_start, video.duration,
                                                                                         info)
                        if aug_index == 0 or clip is None:  # views of a clip share one decode
                            try:
                                clip = video.get_clip(start, end)
                            except Exception as e:  # corrupt frames
                                failure = (_reason(e, "decode_error"), e)
                                break
                            if clip is None or clip.get("video") is None:
                                failure = ("no_frames", RuntimeError(
                                    f"no frames in [{float(start):.3f}, {float(end):.3f}) s of a "
                                    f"{float(video.duration):.3f} s video"))
                                break
                            self._clips_decoded[video_index] += 1
                        next_start = end
                        sample = {"video": clip["video"], "video_name": video.name, "video_index": video_index,
                                  "clip_index": clip_index, "aug_index": aug_index, **info}
                        if self._transform is not None:
                            sample = self._transform(sample)
                        if sample is not None:
                            yielded += 1
                            yield sample
                        if is_last:
                            break
                finally:
                    video.close()
                    video = clip = None  # free the decoder now (see decoding.SubsampledPyAV)
            self._record(video_index, path, failure, token)
            results.append(_REASON_CODE[failure[0]] if failure else 0)
            if failure is not None:
                last_error = (path, _without_tracebacks(failure[1]))
                failure = None
        if not in_worker:
            if attempted and not yielded and not any(results):
                raise DataLoadError(f"no clip could be decoded from {self.data_path or 'the dataset'}: "
                                    f"{attempted} videos tried yielded no sample")
            self._check_pass(torch.tensor(results, dtype=torch.int8), last_error)
        elif token is not None:
            shard = list(self._video_sampler)  # this rank's videos in this pass, over all workers
            if shard and bool((self._stamp[shard] == token).all()):  # every worker is done: check the pass
                self._check_pass(self._result[shard], last_error)

    def _open(self, video_index: int, path: str) -> Any:
        """The video to read clips from: opened by the decoder, or (``cache_mb``) a view of
        the decoded clips kept from an earlier pass that opens the file only on a miss."""
        if not self._cache_bytes_left and video_index not in self._cache:
            return open_video(path, decoder=self._decoder, num_frames=self.num_frames)
        if video_index not in self._cache:
            video = open_video(path, decoder=self._decoder, num_frames=self.num_frames)
            self._cache[video_index] = (video.name, video.duration, {})
            return _CachedVideo(self, video_index, path, video)
        return _CachedVideo(self, video_index, path, None)


class _CachedVideo:
    """``get_clip`` from :attr:`VideoDataset._cache`, decoding (and keeping, while the
    dataset's cache has room) what it does not hold."""

    def __init__(self, dataset: VideoDataset, video_index: int, path: str, video: Any) -> None:
        self.dataset, self.video_index, self.path, self._video = dataset, video_index, path, video
        self.name, self.duration, self._clips = dataset._cache[video_index]

    def get_clip(self, start: Any, end: Any) -> dict[str, Any] | None:
        key = (float(start), float(end))
        if key in self._clips:
            return {"video": self._clips[key].clone()}
        if self._video is None:
            self._video = open_video(self.path, decoder=self.dataset._decoder, num_frames=self.dataset.num_frames)
        clip = self._video.get_clip(start, end)
        frames = None if clip is None else clip.get("video")
        if frames is not None:
            size = frames.numel() * frames.element_size()
            if size <= self.dataset._cache_bytes_left:
                self._clips[key] = frames.clone()
                self.dataset._cache_bytes_left -= size
        return clip

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


def _check_fraction(value: float | None) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        raise ValueError(f"max_failed_fraction must be in [0, 1] or None, got {value!r}")
    return value


def _reason(error: BaseException, default: str) -> str:
    return error.reason if isinstance(error, VideoReadError) else default


def _without_tracebacks(error: BaseException) -> BaseException:
    """``error`` and the errors it chains, without tracebacks: kept, it holds no frame
    (nor the decoder in it) alive."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return error


def kinetics_dataset(
    *,
    data_path: str | os.PathLike,
    split: str,
    space: ConfigSpace,
    decoder: str = "pyav",
    video_path_prefix: str = "",
    clip_duration: float | None = None,
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
    min_short_side: int | None = None,
    max_short_side: int | None = None,
    temporal_clips: int = 1,
    spatial_crops: int = 1,
    horizontal_flip: bool = True,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle: bool | None = None,
    check_files: bool = True,
    cache_mb: int = 0,
    max_failed_fraction: float | None = DEFAULT_MAX_FAILED_FRACTION,
) -> VideoDataset:
    """A Kinetics-format dataset yielding the full configuration's clip of ``space``.

    Args:
        data_path: a CSV of ``<path> <label>`` lines, a folder holding ``<split>.csv``
            (``test`` falls back to ``val.csv``), or a folder of class folders.
        split: ``"train"`` (random clip, scale jitter, random crop, flip), ``"val"``
            (centre clip, centre crop) or ``"test"`` (``temporal_clips`` clips spread over
            the whole video x ``spatial_crops`` (1 or 3) crops; one sample per view).
        space: the model's ConfigSpace; samples are ``(C, T_full, S, S)`` with
            ``T_full = full().frames * (slowfast_alpha or 1)``, ``S = full().crop``.
        decoder: ``"pyav"``, ``"decord"`` or ``"torchcodec"`` (falls back to pyav with a
            warning if not importable; anything else raises, and so does torchcodec without
            the FFmpeg shared libraries it loads, see :func:`resolve_decoder`). torchcodec gives
            pyav's frames of a clip (it decodes AVI files with pyav; tests/test_torchcodec.py);
            decord picks frames by index (``ceil(fps * t)`` at the average frame rate), so
            its clips can differ from theirs on a variable frame rate or AVI timestamps.
        video_path_prefix: joined to relative CSV paths (default: the CSV's folder).
        clip_duration: seconds per clip; ``None`` = the whole video (e.g. the synthetic
            set). Required for ``split="test"`` with ``temporal_clips > 1``.
        min_short_side, max_short_side: train scale jitter; default ``S*256/224`` to
            ``S*320/224`` (Kinetics' 256-320 for 224 crops).
        horizontal_flip: random flips in training (keep the classes flip-invariant).
        rank, world_size: distributed shard (videos strided over ranks, no padding).
        seed, shuffle: train order is a seeded permutation per epoch (``set_epoch``);
            ``shuffle`` defaults to ``split == "train"``.
        check_files: fail fast, naming the CSV line, if a listed video does not exist.
        cache_mb: keep up to this many MB of decoded clips in memory (see
            :class:`VideoDataset`); for small sets of short videos read whole
            (``clip_duration=None``) with ``num_workers: 0``.
        max_failed_fraction: a pass over this rank's shard in which more than this
            fraction of the videos fail (skipped, see :data:`FAILURE_REASONS`) raises
            :class:`DataLoadError` at its end, e.g. ``data/train.csv: 7 of 10 videos
            failed (missing 2, unreadable 3, decode_error 2), above max_failed_fraction
            0.1``. Default 0.1: a copy of Kinetics loses a few percent of its videos at
            most; more means a broken path, mount or decoder. ``None``: only a pass in
            which every video fails raises.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(space, ConfigSpace) or not space.is_video:
        raise ValueError(f"space must be a video ConfigSpace, got {space!r}")
    if split != "test" and (temporal_clips != 1 or spatial_crops != 1):
        raise ValueError(f"temporal_clips/spatial_crops apply to split='test' only, got {temporal_clips}x"
                         f"{spatial_crops} for split={split!r}")
    if not isinstance(temporal_clips, int) or temporal_clips < 1:
        raise ValueError(f"temporal_clips must be a positive int, got {temporal_clips!r}")
    if clip_duration is not None and not clip_duration > 0:
        raise ValueError(f"clip_duration must be positive seconds or None, got {clip_duration!r}")
    if clip_duration is None and temporal_clips > 1:
        raise ValueError("split='test' with temporal_clips > 1 needs clip_duration (seconds per clip)")
    _check_fraction(max_failed_fraction)
    decoder = resolve_decoder(decoder)
    csv_or_dir = _split_file(os.fspath(data_path), split)
    entries = read_video_list(csv_or_dir, video_path_prefix=video_path_prefix, check_files=check_files)

    full = space.full()
    frames = full.frames * (space.slowfast_alpha or 1)
    transform = VideoClipTransform(mode=split, frames=frames, crop=full.crop, mean=mean, std=std,
                                   min_short_side=min_short_side, max_short_side=max_short_side,
                                   spatial_crops=spatial_crops if split == "test" else 1,
                                   horizontal_flip=horizontal_flip)
    if clip_duration is None:
        clip_sampler: ClipSampler = FullVideoClipSampler(spatial_crops if split == "test" else 1)
    elif split == "train":
        clip_sampler = RandomClipSampler(clip_duration)
    else:
        clip_sampler = ConstantClipsPerVideoSampler(clip_duration, temporal_clips, spatial_crops)
    return VideoDataset(entries, clip_sampler=clip_sampler, transform=transform, decoder=decoder, rank=rank,
                        world_size=world_size, shuffle=split == "train" if shuffle is None else shuffle, seed=seed,
                        clips_per_video=temporal_clips * spatial_crops, data_path=csv_or_dir, num_frames=frames,
                        cache_mb=cache_mb, max_failed_fraction=max_failed_fraction)


class VideoLoader(torch.utils.data.DataLoader):
    """A DataLoader that raises instead of running an empty epoch.

    If a pass yields no batch although the dataset has videos and none of its clips
    decoded during the pass (every video failed, in any worker), it raises
    :class:`DataLoadError` naming the data path and failed files (the dataset itself
    raises first where it can, see :class:`VideoDataset`).
    """

    def __iter__(self) -> Iterator[Any]:
        dataset = self.dataset
        before = int(dataset._clips_decoded.sum()) if isinstance(dataset, VideoDataset) else None
        batches = 0
        for batch in super().__iter__():
            batches += 1
            yield batch
        if batches == 0 and before is not None and len(dataset) > 0 and int(dataset._clips_decoded.sum()) == before:
            failed = dataset.stats["failed_paths"]
            raise DataLoadError(f"no clip could be decoded from {dataset.data_path or 'the dataset'}: "
                                f"{len(failed)} failed videos, e.g. {failed[:3]}")


def build_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, drop_last: bool = False, persistent_workers: bool = False,
                 prefetch_factor: int | None = None, collate_fn: Callable | None = None) -> VideoLoader:
    """A DataLoader over clip dicts: ``video`` stacked to ``(B, C, T, S, S)``, ``label`` etc.
    to tensors, ``video_name`` to a list. Sharding over workers is done by the dataset."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return VideoLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                       drop_last=drop_last, collate_fn=collate_fn, **kwargs)
