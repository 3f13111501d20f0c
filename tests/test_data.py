"""Data pipeline: synthetic dataset, Kinetics datasets, sharding, failures, one decode per clip."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler as StockConstantClipsPerVideoSampler
from pytorchvideo.data.encoded_video import EncodedVideo

from mutualnet_video.core import ConfigSpace, SubnetConfig, clip_for_config, subsample_frames
from mutualnet_video.data import (
    SYNTHETIC_CLASSES,
    ConstantClipsPerVideoSampler,
    build_loader,
    kinetics_dataset,
    make_synthetic_kinetics,
    read_video_list,
    render_clip,
    shard_indices,
    worker_split,
)
from mutualnet_video.data.decoding import SubsampledPyAV, open_video
from mutualnet_video.engine import SandwichSampler

SPACE = ConfigSpace(width_range=(0.25, 1.0), frames=(4, 2), crops=(32, 24))
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """4 classes x (2 train + 1 val) videos of 16 frames, 32x40, 8 fps (2 s)."""
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_kinetics(root, num_classes=4, train_per_class=2, val_per_class=1, frames=16,
                                   size=(32, 40), fps=8, seed=0)


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _denormalize(video: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(-1, 1, 1, 1)
    std = torch.tensor(STD).view(-1, 1, 1, 1)
    return video * std + mean


# --- synthetic dataset ---------------------------------------------------------------------


def test_synthetic_dataset_created_and_reused(tiny, caplog):
    root = Path(tiny["root"])
    train = (root / "train.csv").read_text().splitlines()
    val = (root / "val.csv").read_text().splitlines()
    assert len(train) == tiny["num_train"] == 8 and len(val) == tiny["num_val"] == 4
    assert (root / "classes.txt").read_text().split() == list(SYNTHETIC_CLASSES[:4]) == tiny["classes"]
    assert tiny["flip_invariant"] and not tiny["reused"]
    for line in train + val:
        rel, label = line.split()
        assert (root / rel).is_file() and 0 <= int(label) < 4
        assert Path(rel).parent.name.split("_", 1)[1] == tiny["classes"][int(label)]
    video = EncodedVideo.from_path(str(root / train[0].split()[0]), decode_audio=False)
    assert video.get_clip(0, video.duration)["video"].shape == (3, 16, 32, 40)
    assert float(video.duration) == pytest.approx(2.0)

    kwargs = dict(num_classes=4, train_per_class=2, val_per_class=1, frames=16, size=(32, 40), fps=8, seed=0)
    mtime = (root / train[0].split()[0]).stat().st_mtime_ns
    assert make_synthetic_kinetics(root, **kwargs)["reused"]
    assert (root / train[0].split()[0]).stat().st_mtime_ns == mtime

    # A truncated video is detected, reported and rebuilt.
    victim = root / val[0].split()[0]
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[: size // 3])
    with caplog.at_level(logging.WARNING, logger="mutualnet_video.data.synthetic"):
        info = make_synthetic_kinetics(root, **kwargs)
    assert not info["reused"] and victim.stat().st_size == size
    assert "rebuilding" in caplog.text and str(victim) in caplog.text


def _blob_track(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid (y, x) and area of the pixels far from the frame's median colour."""
    frames = clip.astype(np.float64)
    median = np.median(frames, axis=(1, 2), keepdims=True)
    mask = np.abs(frames - median).sum(-1) > 120
    yy, xx = np.mgrid[0:clip.shape[1], 0:clip.shape[2]]
    area = mask.sum((1, 2))
    cy = (mask * yy).sum((1, 2)) / area
    cx = (mask * xx).sum((1, 2)) / area
    return cy, cx, area


def _stripe_shift(clip: np.ndarray) -> float:
    """Mean shift (pixels, + down) of the texture inside the blob from frame i to i + 3,
    relative to the blob's centroid: the lag that best aligns the rows' brightness profiles."""
    cy, _, _ = _blob_track(clip)
    shifts = []
    for i in range(len(clip) - 3):
        rows = []
        for k in (i, i + 3):
            gray = clip[k].astype(np.float64).sum(-1)
            centre = int(round(cy[k]))
            rows.append(gray[centre - 8:centre + 8, :].max(axis=1))  # 16 rows around the centroid
        errors = {lag: np.mean((rows[1][4 + lag:12 + lag] - rows[0][4:12]) ** 2) for lag in range(-3, 4)}
        shifts.append(min(errors, key=errors.get))
    return float(np.mean(shifts))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_classes_are_defined_by_motion(seed):
    moves = {}
    for label, name in enumerate(SYNTHETIC_CLASSES):
        clip = render_clip(label, frames=12, height=64, width=80, rng=np.random.default_rng(seed))
        cy, cx, area = _blob_track(clip)
        moves[name] = (cy[-1] - cy[0], cx[-1] - cx[0], area[-1] / area[0])
    assert moves["move_up"][0] < -8 and moves["move_down"][0] > 8
    assert moves["move_left"][1] < -8 and moves["move_right"][1] > 8
    assert moves["grow"][2] > 1.8 and moves["shrink"][2] < 1 / 1.8
    # stripes_*: the blob barely moves, the stripes inside it scroll down / up.
    for name, sign in (("stripes_down", 1), ("stripes_up", -1)):
        dy, dx, ratio = moves[name]
        assert abs(dy) < 8 and abs(dx) < 8 and 0.8 < ratio < 1.25, (name, moves[name])
        clip = render_clip(SYNTHETIC_CLASSES.index(name), frames=12, height=64, width=80,
                           rng=np.random.default_rng(seed))
        assert sign * _stripe_shift(clip) > 0.5, name
    # Time-reversed twins: the first frame of "up" is distributed like the last of "down".
    up = render_clip(0, frames=12, height=64, width=80, rng=np.random.default_rng(seed))
    assert up.shape == (12, 64, 80, 3) and up.dtype == np.uint8


def test_synthetic_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_kinetics(tmp_path, num_classes=11)
    with pytest.raises(ValueError, match="size"):
        make_synthetic_kinetics(tmp_path, size=(33, 40))


# --- datasets ---------------------------------------------------------------------------------


def test_train_val_test_samples(tiny):
    train = kinetics_dataset(data_path=tiny["root"], split="train", space=SPACE)
    samples = list(train)
    assert len(samples) == len(train) == 8
    assert sorted(s["video_index"] for s in samples) == list(range(8))
    for s in samples:
        assert s["video"].shape == (3, 4, 32, 32) and s["video"].dtype == torch.float32
        assert isinstance(s["label"], int) and isinstance(s["video_name"], str)
        assert s["clip_index"] == 0 and s["aug_index"] == 0
        pixels = _denormalize(s["video"])
        assert pixels.min() > -0.02 and pixels.max() < 1.02

    # pytorchvideo.transforms needs the compat alias, which importing mutualnet_video.data applied.
    from pytorchvideo.transforms.functional import short_side_scale, uniform_crop, uniform_temporal_subsample

    # Val: exactly the centre clip (whole video), short side -> 32, centre crop, normalized.
    val = kinetics_dataset(data_path=tiny["root"], split="val", space=SPACE)
    sample = next(iter(val))
    path = val.video_path(sample["video_index"])
    raw = EncodedVideo.from_path(path, decode_audio=False).get_clip(0, Fraction(2))["video"]
    expected = uniform_crop(short_side_scale(uniform_temporal_subsample(raw, 4), 32), 32, 1)
    expected = (expected / 255.0 - torch.tensor(MEAN).view(-1, 1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1, 1)
    torch.testing.assert_close(sample["video"], expected, rtol=1e-4, atol=1e-4)
    assert sample["label"] == int(Path(path).parent.name.split("_")[0])


def test_multiview_test_split_counts_and_decodes_once_per_clip(tiny):
    test = kinetics_dataset(data_path=tiny["root"], split="test", space=SPACE, clip_duration=1.0,
                            temporal_clips=2, spatial_crops=3)
    samples = list(test)
    assert len(samples) == len(test) == 4 * 2 * 3
    views = {(s["video_index"], s["clip_index"], s["aug_index"]) for s in samples}
    assert views == {(v, c, a) for v in range(4) for c in range(2) for a in range(3)}
    assert test.stats["decoded"] == 4 * 2  # the 3 crops of a clip share one decode
    left, centre, right = (s["video"] for s in samples[:3])
    assert left.shape == centre.shape == right.shape == (3, 4, 32, 32)
    assert not torch.equal(left, right)


def _write_counter_video(path: Path, *, frames: int = 16, fps: int = 8) -> None:
    """A gray video whose frame i has brightness 15 * i + 8."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"crf": "0"}
        for i in range(frames):
            image = np.full((32, 32, 3), 15 * i + 8, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_fixed_constant_clip_sampler_reaches_video_end(tmp_path):
    ours, stock = ConstantClipsPerVideoSampler(2, 3), StockConstantClipsPerVideoSampler(2, 3)
    ours_clips = [ours(0, 10, {}) for _ in range(3)]
    stock_clips = [stock(0, 10, {}) for _ in range(3)]
    assert [c.clip_start_sec for c in ours_clips] == [0, 4, 8] and ours_clips[-1].clip_end_sec == 10
    assert [c.is_last_clip for c in ours_clips] == [False, False, True]
    assert stock_clips[-1].clip_end_sec < 10  # the stock spacing never reaches the end
    assert ConstantClipsPerVideoSampler(2, 1)(0, 10, {}).clip_start_sec == 4  # one clip: centred

    # Decoded: the last frame of the last test clip is the video's last frame.
    _write_counter_video(tmp_path / "counter.mp4")
    csv = _write_csv(tmp_path / "test.csv", ["counter.mp4 0"])
    last_frame = {}
    for name, sampler in (("ours", None), ("stock", StockConstantClipsPerVideoSampler(1.0, 2))):
        dataset = kinetics_dataset(data_path=csv, split="test", space=SPACE, clip_duration=1.0, temporal_clips=2)
        if sampler is not None:
            dataset._clip_sampler = sampler
        clips = list(dataset)
        assert len(clips) == 2
        last_frame[name] = float(_denormalize(clips[-1]["video"])[:, -1].mean() * 255)
    assert last_frame["ours"] == pytest.approx(15 * 15 + 8, abs=3)
    assert last_frame["stock"] == pytest.approx(15 * 11 + 8, abs=3)


def test_training_decodes_each_clip_once_for_every_sandwich_input(tiny, monkeypatch, tmp_path):
    """On the path training runs (Trainer -> BatchStream -> SandwichSampler -> mutual_step):
    one decode per clip per iteration, and every configuration's input cut from that clip."""
    from mutualnet_video.engine import Trainer
    from mutualnet_video.engine.config import default_config
    from mutualnet_video.testing import create_toy_slimnet

    calls = []
    original = SubsampledPyAV.get_clip

    def counting_get_clip(self, start, end):
        calls.append(self.name)
        return original(self, start, end)

    monkeypatch.setattr(SubsampledPyAV, "get_clip", counting_get_clip)
    cfg = default_config(
        model={"_target_": "mutualnet_video.testing.create_toy_slimnet", "model_num_class": 4},
        data={"train": {"_target_": "mutualnet_video.data.kinetics_dataset", "data_path": tiny["root"],
                        "split": "train"},
              "batch_size": 2, "num_workers": 0},
        optim={"lr": 0.01, "max_iters": 4}, train={"progress": False, "tensorboard": False},
        output_dir=str(tmp_path))
    model = create_toy_slimnet(model_num_class=4, width_range=SPACE.width_range, frames=SPACE.frames,
                               crops=SPACE.crops, num_subnets=4)
    trainer = Trainer(cfg, model=model)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.proj.subnet, args[0])))
    step = trainer.run_step

    def checked_step():
        before = len(calls)
        step()
        assert len(calls) == before + 2  # this iteration decoded its 2 clips once
        full_clip = seen[-SPACE.num_subnets][1]
        for cfg_seen, inputs in seen[-SPACE.num_subnets:]:
            assert inputs.shape == (2, 3, cfg_seen.frames, cfg_seen.crop, cfg_seen.crop)
            torch.testing.assert_close(inputs, clip_for_config(full_clip, cfg_seen))

    trainer.run_step = checked_step
    trainer.train()
    reference = torch.Generator().manual_seed(cfg["train"]["seed"] + 1)  # the Trainer's sandwich seeding
    expected = [c for _ in range(4) for c in SPACE.sandwich(reference)]
    assert [c for c, _ in seen] == expected and expected[0] == SPACE.full()
    assert len(calls) == 8 == trainer.sampler.num_clips_seen  # 4 iterations x 2 clips, one decode each


def test_slowfast_space_gives_slow_and_fast_from_one_clip(tiny):
    space = ConfigSpace(width_range=(0.5, 1.0), frames=(2, 1), crops=(32, 24), slowfast_alpha=4)
    dataset = kinetics_dataset(data_path=tiny["root"], split="val", space=space)
    batch = next(iter(build_loader(dataset, batch_size=2)))
    assert batch["video"].shape == (2, 3, 8, 32, 32)
    pairs = SandwichSampler(space)(batch["video"])
    for cfg, (slow, fast) in pairs:
        assert fast.shape == (2, 3, 4 * cfg.frames, cfg.crop, cfg.crop)
        assert slow.shape == (2, 3, cfg.frames, cfg.crop, cfg.crop)


def test_mutual_sampler_rejects_wrong_batches():
    sampler = SandwichSampler(SPACE)
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        sampler(torch.zeros(3, 4, 32, 32))
    with pytest.raises(ValueError, match="T=4"):
        sampler(torch.zeros(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="H, W"):
        SandwichSampler(ConfigSpace(width_range=(0.5, 1.0), crops=(32,)))(torch.zeros(1, 3, 4, 32, 32))
    assert sampler.num_clips_seen == 0
    pairs = sampler.inputs_for(torch.zeros(1, 3, 4, 32, 32), [SubnetConfig(0.5, 2, 24)])
    assert pairs[0][1].shape == (1, 3, 2, 24, 24)


# --- sharding -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_videos", [1, 7, 12])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_rank_and_worker_shards_partition_the_videos(num_videos, world_size, num_workers):
    for epoch in (0, 1):
        shards = [
            worker_split(shard_indices(num_videos, rank=r, world_size=world_size, shuffle=True, seed=5, epoch=epoch),
                         worker_id=w, num_workers=num_workers)
            for r in range(world_size) for w in range(num_workers)
        ]
        flat = [i for shard in shards for i in shard]
        assert sorted(flat) == list(range(num_videos))  # union == all, no overlap
    assert shard_indices(12, shuffle=True, seed=5, epoch=0) != shard_indices(12, shuffle=True, seed=5, epoch=1)
    with pytest.raises(ValueError, match="rank"):
        shard_indices(4, rank=2, world_size=2)


def test_real_loader_shards_ranks_and_workers(tiny):
    seen: dict[int, list[int]] = {}
    for rank in range(2):
        dataset = kinetics_dataset(data_path=tiny["root"], split="train", space=SPACE, rank=rank, world_size=2)
        dataset.set_epoch(1)
        loader = build_loader(dataset, batch_size=1, num_workers=2)
        seen[rank] = [int(b["video_index"]) for b in loader]
        assert len(seen[rank]) == len(dataset) == 4
        assert dataset.stats["decoded"] == 4  # counted in the workers, visible here
    flat = seen[0] + seen[1]
    assert sorted(flat) == list(range(8))


# --- bad input --------------------------------------------------------------------------------


def test_corrupt_unreadable_and_missing_videos_are_skipped_counted_and_named(tiny, tmp_path, caplog):
    root = Path(tiny["root"])
    good = [line.split()[0] for line in (root / "val.csv").read_text().splitlines()[:2]]
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(2000))
    (tmp_path / "empty.mp4").write_bytes(b"")
    truncated = (root / good[0]).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(truncated[: len(truncated) // 4])
    bad = [str(tmp_path / n) for n in ("garbage.mp4", "empty.mp4", "truncated.mp4", "missing.mp4")]
    csv = _write_csv(tmp_path / "list.csv", [f"{root / good[0]} 0", f"{bad[0]} 1", f"{bad[1]} 2",
                                              f"{root / good[1]} 1", f"{bad[2]} 0", f"{bad[3]} 3"])
    dataset = kinetics_dataset(data_path=csv, split="val", space=SPACE, check_files=False, max_failed_fraction=None)
    with caplog.at_level(logging.WARNING, logger="mutualnet_video.data.kinetics"):
        first = list(dataset)
        second = list(dataset)
    assert len(first) == len(second) == 2
    stats = dataset.stats
    assert stats["videos"] == 6 and stats["decoded"] == 4 and stats["decoded_videos"] == 2
    assert stats["failed"] == 4 and sorted(stats["failed_paths"]) == sorted(bad)
    for path in bad:  # named once in the log, although read in two epochs
        named = [r for r in caplog.records if r.getMessage().startswith(f"skipping video {path}:")]
        assert len(named) == 1


def test_all_videos_failing_raises_naming_the_data_path(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(os.urandom(500))
    csv = _write_csv(tmp_path / "broken.csv", ["a.mp4 0", "b.mp4 1", "c.mp4 0"])
    dataset = kinetics_dataset(data_path=csv, split="train", space=SPACE)
    with pytest.raises(RuntimeError, match=f"no clip could be decoded from {csv}"):
        list(dataset)
    with pytest.raises(RuntimeError, match=f"no clip could be decoded from {csv}"):
        list(build_loader(kinetics_dataset(data_path=csv, split="train", space=SPACE), batch_size=1, num_workers=2))
    empty = _write_csv(tmp_path / "empty.csv", ["# nothing here", ""])
    with pytest.raises(ValueError, match=f"{empty} lists no videos"):
        kinetics_dataset(data_path=empty, split="train", space=SPACE)


@pytest.mark.parametrize(
    ("line", "message"),
    [("{good} 1 extra", "2 columns"), ("{good}", "2 columns"), ("{good} one", "not an integer"),
     ("{good} -1", "negative"), ("nope.mp4 1", "does not exist")],
)
def test_malformed_csv_raises_with_file_and_line(tiny, tmp_path, line, message):
    good = str(Path(tiny["root"]) / (Path(tiny["root"]) / "val.csv").read_text().split()[0])
    csv = _write_csv(tmp_path / "bad.csv", [f"{good} 0", "", line.format(good=good)])
    with pytest.raises(ValueError, match=f"{csv}:3: .*{message}"):
        kinetics_dataset(data_path=csv, split="train", space=SPACE)


def test_class_folder_layout_matches_csv_labels(tiny):
    root = Path(tiny["root"])
    from_dirs = dict(read_video_list(root / "videos"))
    from_csv = dict(read_video_list(root / "train.csv")) | dict(read_video_list(root / "val.csv"))
    assert from_dirs == from_csv


def test_bad_arguments_are_named(tiny):
    with pytest.raises(ValueError, match="'nvdec'"):
        kinetics_dataset(data_path=tiny["root"], split="train", space=SPACE, decoder="nvdec")
    with pytest.raises(ValueError, match="torchvision"):
        kinetics_dataset(data_path=tiny["root"], split="train", space=SPACE, decoder="torchvision")
    with pytest.raises(ValueError, match="split"):
        kinetics_dataset(data_path=tiny["root"], split="eval", space=SPACE)
    with pytest.raises(ValueError, match="clip_duration"):
        kinetics_dataset(data_path=tiny["root"], split="test", space=SPACE, temporal_clips=3)
    with pytest.raises(ValueError, match="split='test' only"):
        kinetics_dataset(data_path=tiny["root"], split="val", space=SPACE, spatial_crops=3)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        kinetics_dataset(data_path="/nowhere.csv", split="train", space=SPACE)


# --- decoders ---------------------------------------------------------------------------------


def test_missing_decoder_falls_back_to_pyav_with_a_warning(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    with pytest.warns(RuntimeWarning, match="'decord' is not importable.*falling back to 'pyav'"):
        dataset = kinetics_dataset(data_path=tiny["root"], split="val", space=SPACE, decoder="decord")
    assert dataset._decoder == "pyav"
    assert next(iter(dataset))["video"].shape == (3, 4, 32, 32)


def test_decord_and_pyav_decode_the_same_clips(tiny):
    outputs = {}
    for decoder in ("pyav", "decord"):
        dataset = kinetics_dataset(data_path=tiny["root"], split="val", space=SPACE, decoder=decoder)
        assert dataset._decoder == decoder
        outputs[decoder] = list(dataset)
    assert len(outputs["pyav"]) == len(outputs["decord"]) == 4
    for a, b in zip(outputs["pyav"], outputs["decord"]):
        assert a["video_name"] == b["video_name"]
        torch.testing.assert_close(a["video"], b["video"], atol=0.05, rtol=0)


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_subsampled_decoders_equal_stock_decode_then_subsample(tiny, decoder):
    path = str(Path(tiny["root"]) / (Path(tiny["root"]) / "train.csv").read_text().split()[0])
    stock = EncodedVideo.from_path(path, decode_audio=False, decoder=decoder)
    for num_frames in (4, 5, 16, 20):
        ours = open_video(path, decoder=decoder, num_frames=num_frames)
        for start, end in ((Fraction(0), Fraction(2)), (Fraction(1, 2), Fraction(3, 2)), (Fraction(1), Fraction(3))):
            expected = subsample_frames(stock.get_clip(start, end)["video"], num_frames)
            got = ours.get_clip(start, end)["video"]
            assert got.shape == expected.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_synthetic_dataset_copy_is_relocatable(tiny, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(tiny["root"], copy)
    dataset = kinetics_dataset(data_path=copy, split="val", space=SPACE)
    assert all(p.startswith(str(copy)) for p, _ in dataset._labeled_videos._paths_and_labels)


def test_cache_mb_serves_later_passes_from_memory_without_opening_the_videos(tiny, tmp_path, monkeypatch):
    import shutil

    from mutualnet_video.data import kinetics as kinetics_module

    root = tmp_path / "copy"
    shutil.copytree(tiny["root"], root)
    opened = []
    real_open = kinetics_module.open_video
    monkeypatch.setattr(kinetics_module, "open_video", lambda path, **kw: opened.append(path) or real_open(path, **kw))
    plain = [s["video"] for s in kinetics_dataset(data_path=str(root), split="val", space=SPACE)]
    assert len(opened) == 4
    cached = kinetics_dataset(data_path=str(root), split="val", space=SPACE, cache_mb=64)
    first = [s["video"] for s in cached]
    assert len(opened) == 8
    shutil.rmtree(root / "videos")  # served from memory: the files are not read again
    second = [s["video"] for s in cached]
    assert len(opened) == 8 and cached.stats["failed"] == 0
    for a, b, c in zip(plain, first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    # cache_mb=0 (the default) keeps nothing: every pass opens the files again.
    tiny_cache = kinetics_dataset(data_path=tiny["root"], split="val", space=SPACE, cache_mb=0)
    list(tiny_cache)
    list(tiny_cache)
    assert len(opened) == 16
    with pytest.raises(ValueError, match="cache_mb"):
        kinetics_dataset(data_path=tiny["root"], split="val", space=SPACE, cache_mb=-1)
