"""Videos as they come: odd videos in a Kinetics CSV are decoded (padded, resized, converted
to RGB) or skipped and counted with their reason; too many failures in a pass stop it in one line.

Every video is written here with PyAV (tiny: 32x32, 8 fps, 16 frames or fewer). Frame ``i``
of a "counter" video is one flat colour, so a decoded clip shows which frames it holds.
"""

from __future__ import annotations

import os
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from mutualnet_video.core import ConfigSpace
from mutualnet_video.data import build_loader, kinetics_dataset
from mutualnet_video.data.decoding import FAILURE_REASONS, keep_indices
from mutualnet_video.data.kinetics import DataLoadError

av = pytest.importorskip("av")

SPACE = ConfigSpace(width_range=(0.25, 1.0), frames=(4, 2), crops=(32, 24))
T, S = 4, 32
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255,) * 3}  # normalization off: samples hold 0..255 pixels
FPS, FRAMES = 8, 16
VFR_PTS_MS = [0, 40, 300, 340, 900, 1000, 1100, 1500, 1900, 1950]


def _colour(i: int) -> tuple[int, int, int]:
    """The RGB colour of frame ``i`` of a counter video."""
    return 15 * i + 8, 230 - 12 * i, 60 + 5 * i


def _gray(i: int) -> int:
    return 15 * i + 8


def _counter(n: int, height: int = 32, width: int = 32, *, gray: bool = False) -> np.ndarray:
    if gray:
        return np.stack([np.full((height, width), _gray(i), np.uint8) for i in range(n)])
    return np.stack([np.broadcast_to(np.array(_colour(i), np.uint8), (height, width, 3)) for i in range(n)])


def _supports(codec: str, pix_fmt: str | None = None) -> str | None:
    """``None`` if PyAV can encode ``codec`` (in ``pix_fmt``), else what is missing."""
    if codec not in av.codecs_available:
        return f"PyAV has no {codec} encoder"
    if pix_fmt is not None:
        formats = [f.name for f in av.codec.Codec(codec, "w").video_formats or ()]
        if pix_fmt not in formats:
            return f"PyAV's {codec} cannot encode {pix_fmt}"
    return None


def _encode(path: Path, frames: np.ndarray, *, codec: str = "libx264", pix_fmt: str = "yuv420p",
            options: dict | None = None, pts_ms: list[int] | None = None, full_range: bool = False) -> None:
    gray = frames.ndim == 3
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = options if options is not None else ({"crf": "0"} if codec == "libx264" else {})
        if full_range:
            stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="gray" if gray else "rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _encode_audio(path: Path, codec: str, container_format: str) -> None:
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=8000)
        stream.layout = "mono"
        fmt = stream.codec_context.format.name
        wave = np.sin(np.arange(1024) / 10)
        samples = (wave * 0.3).astype(np.float32) if fmt.startswith("flt") else (wave * 3000).astype(np.int16)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(samples[None], format=fmt, layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _corrupt_second_half(source: Path, target: Path) -> None:
    """``source`` with the second half of its ``mdat`` box (the later frames) overwritten."""
    data = bytearray(source.read_bytes())
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"mdat":
            break
        offset += size
    else:
        raise AssertionError(f"no mdat box in {source}")
    start, end = offset + size // 2, offset + size
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))


# name -> (the frames of the whole-video clip, the RGB colour of frame i)
DECODED = {
    "normal.mp4": (keep_indices(FRAMES, T), _colour),
    "short.mp4": ([0, 0, 1, 2], _colour),  # 3 frames: repeated up to T
    "small.mp4": (keep_indices(FRAMES, T), _colour),  # 12x16: upscaled before the 32 px crop
    "gray_h264.mp4": (keep_indices(FRAMES, T), lambda i: (_gray(i),) * 3),  # 4:0:0, full range
    "gray_ffv1.mkv": (keep_indices(FRAMES, T), lambda i: (_gray(i),) * 3),  # decodes to 1-channel gray
    "vfr.mp4": (keep_indices(len(VFR_PTS_MS), T), _colour),
    "yuv420p10le.mp4": (keep_indices(FRAMES, T), _colour),
    "yuv444p.mp4": (keep_indices(FRAMES, T), _colour),
    "vp9.webm": (keep_indices(FRAMES, T), _colour),
    "h264.mkv": (keep_indices(FRAMES, T), _colour),
    "mpeg4_bf2.avi": (keep_indices(FRAMES, T), _colour),  # MPEG-4 part 2 (Xvid-like), 2 B-frames
    "h264.avi": (keep_indices(FRAMES, T), _colour),
}
#: AVI stores no presentation timestamps (frame k of the file is at k / fps); PyAV 18.1's
#: FFmpeg 8 demuxer gives frame k the pts k + 1 (the codec's reorder delay added to the
#: AVI index), so pyav's clip windows hold the frames one period early, and the last frame
#: (pts = the duration) falls out of the whole-video window.
AVI = ("mpeg4_bf2.avi", "h264.avi")
PYAV_AVI_LATE = ("pyav reads AVI frame k at pts k + 1 (PyAV 18.1 / FFmpeg 8): a window holds frames one "
                 "period early, the whole video's clip misses the last frame")


def _pyav_avi_xfail(names) -> list:
    """``names`` for parametrize, the AVI ones marked xfail (strict) with :data:`PYAV_AVI_LATE`."""
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=PYAV_AVI_LATE)) if n in AVI else n
            for n in names]
SKIPPED = {
    "audio_aac.m4a": "no_video_stream",
    "audio_pcm.mp4": "no_video_stream",
    "empty.mp4": "empty_file",
    "text.mp4": "unreadable",
    "corrupt.mp4": "decode_error",
    "deleted.mp4": "missing",
}


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path | str]:
    """Every odd video: name -> its path, or why PyAV cannot write it here (the test skips)."""
    root = tmp_path_factory.mktemp("odd")
    out: dict[str, Path | str] = {}

    def make(name: str, missing: str | None, write) -> None:
        if missing is not None:
            out[name] = missing
            return
        write(root / name)
        out[name] = root / name

    h264 = _supports("libx264")
    make("normal.mp4", h264, lambda p: _encode(p, _counter(FRAMES)))
    make("short.mp4", h264, lambda p: _encode(p, _counter(3)))
    make("small.mp4", h264, lambda p: _encode(p, _counter(FRAMES, 12, 16)))
    make("gray_h264.mp4", _supports("libx264", "gray"),
         lambda p: _encode(p, _counter(FRAMES, gray=True), pix_fmt="gray", full_range=True))
    make("gray_ffv1.mkv", _supports("ffv1", "gray"),
         lambda p: _encode(p, _counter(FRAMES, gray=True), codec="ffv1", pix_fmt="gray"))
    make("vfr.mp4", h264, lambda p: _encode(p, _counter(len(VFR_PTS_MS)), pts_ms=VFR_PTS_MS))
    for pix_fmt in ("yuv420p10le", "yuv444p"):
        make(f"{pix_fmt}.mp4", _supports("libx264", pix_fmt), lambda p, f=pix_fmt: _encode(p, _counter(FRAMES), pix_fmt=f))
    make("vp9.webm", _supports("libvpx-vp9"),
         lambda p: _encode(p, _counter(FRAMES), codec="libvpx-vp9", options={"lossless": "1"}))
    make("h264.mkv", h264, lambda p: _encode(p, _counter(FRAMES)))
    make("mpeg4_bf2.avi", _supports("mpeg4"), lambda p: _encode(p, _counter(FRAMES), codec="mpeg4",
                                                                 options={"bf": "2", "qmin": "1", "qmax": "1"}))
    make("h264.avi", h264, lambda p: _encode(p, _counter(FRAMES)))
    make("audio_aac.m4a", _supports("aac"), lambda p: _encode_audio(p, "aac", "ipod"))
    make("audio_pcm.mp4", _supports("pcm_s16le"), lambda p: _encode_audio(p, "pcm_s16le", "mp4"))
    make("empty.mp4", None, lambda p: p.write_bytes(b""))
    make("text.mp4", None, lambda p: p.write_text("not a video, only its name says so\n"))
    make("corrupt.mp4", h264, lambda p: (
        _encode(root / "corrupt_source.mp4", np.random.default_rng(1).integers(0, 256, (32, 32, 32, 3), np.uint8),
                options={"crf": "23", "g": "4"}),
        _corrupt_second_half(root / "corrupt_source.mp4", p)))
    make("deleted.mp4", h264, lambda p: _encode(p, _counter(FRAMES)))  # deleted once a dataset lists it
    return out


def _path(odd: dict, name: str) -> Path:
    if isinstance(odd[name], str):
        pytest.skip(f"{name}: {odd[name]}")
    return odd[name]


def _csv(path: Path, videos: list[Path]) -> Path:
    path.write_text("".join(f"{v} {i % 3}\n" for i, v in enumerate(videos)))
    return path


def _frame_colours(video: torch.Tensor) -> list[tuple[float, ...]]:
    """Mean (R, G, B) of each frame of a (3, T, S, S) clip."""
    return [tuple(round(float(c), 1) for c in video[:, t].mean((1, 2))) for t in range(video.shape[1])]


def _with_deleted(tmp_path: Path, odd: dict, names: list[str], **kwargs):
    """A dataset over ``names`` (copies of the odd videos in tmp_path); ``deleted.mp4`` is
    removed after the dataset is built (its CSV line was checked then)."""
    videos = []
    for name in names:
        videos.append(tmp_path / name)
        shutil.copyfile(_path(odd, name), videos[-1])
    dataset = kinetics_dataset(data_path=_csv(tmp_path / "list.csv", videos), space=SPACE, **kwargs)
    if "deleted.mp4" in names:
        (tmp_path / "deleted.mp4").unlink()
    return dataset, videos


# --- decoded ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _pyav_avi_xfail(sorted(DECODED)))
def test_odd_video_is_decoded_to_the_full_clip(odd, name, tmp_path):
    """Whole-video clip (val): (3, T, S, S), the expected frames, their colours within 3/255."""
    path = _path(odd, name)
    indices, colour = DECODED[name]
    dataset = kinetics_dataset(data_path=_csv(tmp_path / "one.csv", [path]), split="val", space=SPACE, **RAW)
    (sample,) = list(dataset)
    assert sample["video"].shape == (3, T, S, S) and sample["video"].dtype == torch.float32
    got = _frame_colours(sample["video"])
    for t, i in enumerate(indices):
        assert got[t] == pytest.approx(colour(i), abs=3), (name, t, got)
    assert float(sample["video"].std((2, 3)).max()) < 2  # flat frames stay flat (resize, colour conversion)
    assert dataset.stats["decoded"] == 1 and dataset.stats["failed"] == 0


def test_the_odd_encodings_are_what_they_claim(odd):
    """The files really hold the odd formats (nothing falls back to plain yuv420p H.264)."""
    expected = {"yuv420p10le.mp4": ("h264", "yuv420p10le"), "yuv444p.mp4": ("h264", "yuv444p"),
                "gray_ffv1.mkv": ("ffv1", "gray"), "vp9.webm": ("vp9", "yuv420p"), "h264.mkv": ("h264", "yuv420p"),
                "small.mp4": ("h264", "yuv420p"), "mpeg4_bf2.avi": ("mpeg4", "yuv420p"), "h264.avi": ("h264", "yuv420p")}
    for name, (codec, pix_fmt) in expected.items():
        if isinstance(odd[name], str):
            continue
        with av.open(str(odd[name])) as container:
            ctx = container.streams.video[0].codec_context
            assert (ctx.name, ctx.pix_fmt) == (codec, pix_fmt), name
            if name == "small.mp4":
                assert (ctx.height, ctx.width) == (12, 16)
    for name in AVI:  # AVI, frame k of the file (decoding order of the frames out) is counter frame k
        if isinstance(odd[name], str):
            continue
        with av.open(str(odd[name])) as container:
            assert container.format.name == "avi"
            stream = container.streams.video[0]
            packets = [p.pts for p in container.demux(stream) if p.size]
        with av.open(str(odd[name])) as container:
            frames = list(container.decode(container.streams.video[0]))
        assert [min(range(FRAMES), key=lambda k: np.abs(f.to_ndarray(format="rgb24")[0, 0] - _colour(k)).sum())
                for f in frames] == list(range(FRAMES))
        reordered = packets != sorted(packets)  # B-frames: stored after the later frame they refer to
        assert reordered == (name == "mpeg4_bf2.avi"), (name, packets)
    if not isinstance(odd["vfr.mp4"], str):
        with av.open(str(odd["vfr.mp4"])) as container:
            stream = container.streams.video[0]
            stamps = [round(float(f.pts * stream.time_base) * 1000) for f in container.decode(stream)]
        assert stamps == VFR_PTS_MS
    if not isinstance(odd["vp9.webm"], str):
        with av.open(str(odd["vp9.webm"])) as container:
            assert container.streams.video[0].duration is None  # no header duration: the container's is used
    for name in ("audio_aac.m4a", "audio_pcm.mp4"):
        if not isinstance(odd[name], str):
            with av.open(str(odd[name])) as container:
                assert not container.streams.video and len(container.streams.audio) == 1


def test_variable_frame_rate_clip_holds_the_frames_of_its_time_window(odd, tmp_path):
    path = _path(odd, "vfr.mp4")
    dataset = kinetics_dataset(data_path=_csv(tmp_path / "one.csv", [path]), split="val", space=SPACE,
                               clip_duration=1.0, **RAW)
    (sample,) = list(dataset)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
    start = (duration - 1.0) / 2  # the centred clip
    inside = [i for i, ms in enumerate(VFR_PTS_MS) if start <= ms / 1000 < start + 1.0]
    assert inside == [4, 5, 6, 7]  # 4 of the 10 frames, not the 8 a constant 5 fps would give
    got = _frame_colours(sample["video"])
    for t, k in enumerate(keep_indices(len(inside), T)):
        assert got[t] == pytest.approx(_colour(inside[k]), abs=3)


@pytest.mark.parametrize("name", AVI)
@pytest.mark.xfail(strict=True, reason=PYAV_AVI_LATE)
def test_avi_window_holds_the_frames_of_its_time(odd, name):
    """AVI frame k is at k / FPS: the window [0.5 s, 1.5 s) holds frames 4..11 (pyav: 3..10)."""
    from mutualnet_video.data.decoding import open_video

    video = open_video(str(_path(odd, name)), num_frames=8)
    try:
        clip = video.get_clip(0.5, 1.5)["video"]
    finally:
        video.close()
    got = _frame_colours(clip)
    assert got == [pytest.approx(_colour(k), abs=3) for k in range(4, 12)], got


def test_odd_videos_train_clips_have_the_full_shape(odd, tmp_path):
    """Random 1 s clips of every decodable video (longer than some): scale jitter, crop, flip."""
    names = [n for n in sorted(DECODED) if not isinstance(odd[n], str)]
    csv = _csv(tmp_path / "train.csv", [odd[n] for n in names])
    dataset = kinetics_dataset(data_path=csv, split="train", space=SPACE, clip_duration=1.0, **RAW)
    torch.manual_seed(0)
    samples = list(dataset)
    assert sorted(s["video_name"] for s in samples) == sorted(Path(odd[n]).name for n in names)
    for s in samples:
        assert s["video"].shape == (3, T, S, S)
        assert -1 < float(s["video"].min()) and float(s["video"].max()) < 256
    assert dataset.stats["failed"] == 0


# --- skipped --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_odd_video_is_skipped_with_its_reason(odd, name, tmp_path, caplog):
    dataset, videos = _with_deleted(tmp_path, odd, ["normal.mp4", name], split="val", max_failed_fraction=None)
    samples = list(dataset)
    assert [s["video_name"] for s in samples] == ["normal.mp4"]
    stats = dataset.stats
    bad = str(videos[1])
    assert stats["failure_reasons"] == {bad: SKIPPED[name]} and stats["failed_paths"] == [bad]
    assert stats["failed_by_reason"] == {r: int(r == SKIPPED[name]) for r in FAILURE_REASONS}
    assert stats["decoded"] == stats["decoded_videos"] == 1 and stats["failed"] == 1
    assert any(r.getMessage().startswith(f"skipping video {bad}: {SKIPPED[name]}: ") for r in caplog.records)


# --- the mixed list, counted over DataLoader workers ---------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mixed_list_decodes_or_counts_every_video_over_workers(odd, tmp_path, num_workers):
    names = [n for n in sorted(DECODED) + sorted(SKIPPED) if not isinstance(odd[n], str)]
    decodable = [n for n in names if n in DECODED]
    expected = {r: sum(SKIPPED.get(n) == r for n in names) for r in FAILURE_REASONS}
    dataset, videos = _with_deleted(tmp_path, odd, names, split="val", max_failed_fraction=None, **RAW)
    loader = build_loader(dataset, batch_size=3, num_workers=num_workers, persistent_workers=num_workers > 0)
    for _epoch in range(2):  # the second pass (the same workers if any) counts the same again
        batches = list(loader)
        assert all(b["video"].shape[1:] == (3, T, S, S) for b in batches)
        assert sorted(n for b in batches for n in b["video_name"]) == sorted(decodable)
        stats = dataset.stats
        assert stats["decoded"] == stats["decoded_videos"] == len(decodable)
        assert stats["failed_by_reason"] == expected and stats["failed"] == sum(expected.values())
        assert stats["failure_reasons"] == {str(tmp_path / n): SKIPPED[n] for n in names if n in SKIPPED}
        assert dataset.reduced_stats() == {k: stats[k] for k in ("videos", "decoded", "decoded_videos", "failed",
                                                                 "failed_by_reason")}
        dataset.reset_stats()  # per-epoch counts
        assert dataset.stats["decoded"] == dataset.stats["failed"] == 0
    # Without reset_stats: decoded clips add up over passes, a failing video counts once.
    list(loader)
    list(loader)
    assert dataset.stats["decoded"] == 2 * len(decodable) and dataset.stats["failed_by_reason"] == expected


# --- too many failures in a pass ------------------------------------------------------------


def _failing_list(tmp_path: Path, odd: dict) -> Path:
    """10 videos: 3 decodable, 2 missing (deleted after the dataset is built), 3 not videos,
    2 corrupt mid-file."""
    names = (["normal.mp4", "small.mp4", "short.mp4"] + ["deleted.mp4"] * 2 + ["text.mp4"] * 3
             + ["corrupt.mp4"] * 2)
    videos = []
    for i, name in enumerate(names):
        videos.append(tmp_path / f"{i}_{name}")
        shutil.copyfile(_path(odd, name), videos[-1])
    return _csv(tmp_path / "train.csv", videos)


MESSAGE = "{csv}: 7 of 10 videos failed (missing 2, unreadable 3, decode_error 2), above max_failed_fraction 0.5"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_pass_with_too_many_failures_stops_in_one_line(odd, tmp_path, num_workers):
    csv = _failing_list(tmp_path, odd)
    datasets = {limit: kinetics_dataset(data_path=csv, split="val", space=SPACE, max_failed_fraction=limit)
                for limit in (0.5, 0.7, None)}
    for path in tmp_path.glob("*_deleted.mp4"):
        os.remove(path)
    loader = torch.utils.data.DataLoader(datasets[0.5], batch_size=2, num_workers=num_workers)  # as the Trainer's
    with pytest.raises(DataLoadError) as error:
        list(loader)
    assert str(error.value) == MESSAGE.format(csv=csv)  # one line, also when raised in a worker
    assert isinstance(error.value, RuntimeError)
    for limit in (0.7, None):  # 7 of 10 is not above 0.7
        batches = list(torch.utils.data.DataLoader(datasets[limit], batch_size=2, num_workers=num_workers))
        assert sum(len(b["label"]) for b in batches) == 3
        assert datasets[limit].stats["failed"] == 7


def test_default_limit_and_an_interrupted_pass(odd, tmp_path):
    csv = _failing_list(tmp_path, odd)
    dataset = kinetics_dataset(data_path=csv, split="val", space=SPACE)
    assert dataset.max_failed_fraction == 0.1
    for path in tmp_path.glob("*_deleted.mp4"):
        os.remove(path)
    it = iter(dataset)
    next(it)  # a pass stopped early is not checked
    it.close()
    with pytest.raises(DataLoadError, match=r"7 of 10 videos failed .* above max_failed_fraction 0.1$"):
        list(dataset)
    with pytest.raises(ValueError, match="max_failed_fraction"):
        kinetics_dataset(data_path=csv, split="val", space=SPACE, max_failed_fraction=1.5)


def test_every_video_failing_in_workers_names_the_reasons(odd, tmp_path):
    videos = [tmp_path / f"{i}.mp4" for i in range(4)]
    for i, video in enumerate(videos):
        shutil.copyfile(_path(odd, "text.mp4" if i % 2 else "empty.mp4"), video)
    csv = _csv(tmp_path / "bad.csv", videos)
    dataset = kinetics_dataset(data_path=csv, split="train", space=SPACE, max_failed_fraction=None)
    with pytest.raises(DataLoadError) as error:
        list(torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2))
    message = str(error.value)
    assert message.startswith(f"no clip could be decoded from {csv}: all 4 videos tried failed "
                              "(empty_file 2, unreadable 2; decoder 'pyav')")
    assert "\n" not in message


# --- fork safety ------------------------------------------------------------------------------

_HELD: list = []


def _free_inherited_decoder(worker_id: int) -> None:
    _HELD.clear()  # the forked worker frees its copy of the parent's decoder


def test_a_decoder_left_in_the_main_process_does_not_hang_forked_workers(odd, tmp_path):
    """A decoder used in the main process (num_workers=0 evaluation, an exception's traceback)
    and freed in a forked DataLoader worker: with FFmpeg's default threads that worker hangs."""
    from mutualnet_video.data.decoding import open_video

    path = _path(odd, "normal.mp4")
    _HELD.append(open_video(str(path), num_frames=T))  # held by _HELD only
    assert _HELD[0].get_clip(0, 1)["video"].shape == (3, T, 32, 32)
    try:
        dataset = kinetics_dataset(data_path=_csv(tmp_path / "one.csv", [path, path]), split="val", space=SPACE)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, timeout=20,
                                             worker_init_fn=_free_inherited_decoder,
                                             multiprocessing_context="fork")
        assert len(list(loader)) == 2
    finally:
        _HELD.clear()


# --- summed over DDP ranks --------------------------------------------------------------------


def _rank_stats(rank: int, world_size: int, init_file: str, csv: str, out: str) -> None:
    import json

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        dataset = kinetics_dataset(data_path=csv, split="val", space=SPACE, rank=rank, world_size=world_size,
                                   check_files=False, max_failed_fraction=None)
        list(dataset)
        result = {"local": dataset.stats, "reduced": dataset.reduced_stats()}
        Path(f"{out}.{rank}").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def test_reduced_stats_sum_the_counts_over_ranks(odd, tmp_path):
    import json

    import torch.multiprocessing as mp

    names = [n for n in sorted(DECODED) + sorted(SKIPPED) if not isinstance(odd[n], str) and n != "deleted.mp4"]
    csv = _csv(tmp_path / "list.csv", [odd[n] for n in names] + [tmp_path / "never_written.mp4"])
    whole = kinetics_dataset(data_path=csv, split="val", space=SPACE, check_files=False, max_failed_fraction=None)
    list(whole)
    expected = {k: whole.stats[k] for k in ("videos", "decoded", "decoded_videos", "failed", "failed_by_reason")}
    assert expected["failed_by_reason"]["missing"] == 1 and expected["decoded"] == sum(n in DECODED for n in names)
    mp.start_processes(_rank_stats, args=(2, str(tmp_path / "init"), str(csv), str(tmp_path / "out")), nprocs=2,
                       start_method="fork")
    results = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in range(2)]
    for result in results:
        assert result["reduced"] == expected
    local = [r["local"] for r in results]
    assert 0 < local[0]["decoded"] < expected["decoded"]
    assert local[0]["failed"] + local[1]["failed"] == expected["failed"]
    assert sorted(local[0]["failed_paths"] + local[1]["failed_paths"]) == sorted(whole.stats["failed_paths"])
