"""A tiny Kinetics-format dataset of synthetic action clips, defined by motion.

Each clip shows one textured blob over a noisy background. Its class is a motion over
time: the blob moves up / down, grows / shrinks, moves left / right; or it stays (up to a
small drift) while fine horizontal stripes inside it scroll up / down; or it rotates
clockwise / counter-clockwise. Start, speed, size, colours and an unrelated sideways drift
are random. The position, size or texture in one frame has the same distribution for a
class and its time-reversed twin, so a single frame does not reveal the class: a network
must compare frames. The stripes need spatial detail (a period of about 8 px at 64 px,
half that at a 32 px crop) and a few frames: they move by about a quarter of a period
between 4 frames spread over the clip, a tenth between 8.

The first four classes are invariant to a horizontal flip (flip augmentation keeps their
labels); the others are not (the returned ``flip_invariant`` says which case a dataset
is in): train those without ``horizontal_flip``.

Layout (what ``kinetics_dataset`` and PyTorchVideo's ``LabeledVideoPaths`` read)::

    root/videos/<k>_<class>/<split>_<class>_<i>.mp4
    root/train.csv, root/val.csv     lines "videos/<k>_<class>/<name>.mp4 <label>"
    root/classes.txt                 one class name per line, in label order
    root/manifest.json               parameters and file sizes, written last
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_path, atomic_write_text

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic_kinetics", "pick_codec", "render_clip", "write_mp4"]

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "move_left",
    "move_right",
    "stripes_up",
    "stripes_down",
    "rotate_cw",
    "rotate_ccw",
)
_FLIP_INVARIANT = 4  # the first 4 classes keep their label under a horizontal flip
_MANIFEST_VERSION = 1
_RENDERER_VERSION = 6  # bump when render_clip changes: stale datasets are rebuilt


def render_clip(label: int, *, frames: int, height: int, width: int,
                rng: np.random.Generator) -> np.ndarray:
    """Render one clip of class ``label`` as uint8 ``(frames, height, width, 3)``."""
    if not 0 <= label < len(SYNTHETIC_CLASSES):
        raise ValueError(f"label {label} is outside 0..{len(SYNTHETIC_CLASSES) - 1}")
    name = SYNTHETIC_CLASSES[label]
    short = min(height, width)
    t = np.linspace(0.0, 1.0, frames)  # (T,), constant speed

    # Background: a random colour, static texture noise and a little per-frame noise.
    base = rng.uniform(20, 110, size=3)
    background = base + rng.normal(0.0, 5.0, size=(height, width, 3))
    # A bright blob on a darker background (one contrast polarity).
    colour = rng.uniform(170, 255, size=3)

    radius0 = rng.uniform(0.18, 0.24) * short
    radius = np.full(frames, radius0)
    angle = np.full(frames, rng.uniform(0, 2 * math.pi))
    if name in ("grow", "shrink"):
        lo, hi = 0.1 * short, 0.32 * short
        ratio = rng.uniform(1.7, 2.2)
        r_small = rng.uniform(lo, hi / ratio)
        r_big = r_small * ratio
        radius = r_small + (r_big - r_small) * (t if name == "grow" else 1.0 - t)
    r_max = float(radius.max())

    def _travel(extent: float, sign: float) -> np.ndarray:
        # A trajectory inside [r_max, extent - r_max] whose start is random: the
        # positions of the up and down classes have the same marginal distribution.
        room = extent - 2 * r_max
        dist = rng.uniform(0.75, 1.0) * room
        start = r_max + rng.uniform(0.0, room - dist)
        pos = start + dist * t
        return pos if sign > 0 else pos[::-1].copy()

    def _drift(extent: float) -> np.ndarray:
        # A small sideways drift of random direction (a distractor).
        room = extent - 2 * r_max
        dist = rng.uniform(0.0, 0.15) * room
        start = r_max + rng.uniform(0.0, room - dist)
        pos = start + dist * t
        return pos if rng.random() < 0.5 else pos[::-1].copy()

    if name == "move_up":
        cy, cx = _travel(height, -1), _drift(width)
    elif name == "move_down":
        cy, cx = _travel(height, +1), _drift(width)
    elif name == "move_left":
        cx, cy = _travel(width, -1), _drift(height)
    elif name == "move_right":
        cx, cy = _travel(width, +1), _drift(height)
    else:
        cy, cx = _drift(height), _drift(width)
    # stripes_*: the blob only drifts; stripes inside it scroll up or down (a fine texture
    # whose motion only shows at enough resolution, and without aliasing at enough frames).
    period = rng.uniform(10.0, 12.0) * short / 64
    scroll = np.zeros(frames)
    if name in ("stripes_up", "stripes_down"):
        # Shift per 1/31 of the clip: 8 frames over the clip step 0.09-0.12 periods, 4 frames
        # 0.21-0.29 (below half a period: the direction does not alias at 4 frames either).
        step = rng.uniform(0.02, 0.028) * period
        scroll = (1.0 if name == "stripes_down" else -1.0) * step * 31 * t
    if name in ("rotate_cw", "rotate_ccw"):
        turn = rng.uniform(0.8, 1.2) * math.pi  # half a turn or so over the clip
        # Image y points down, so a growing angle turns clockwise on screen.
        angle = angle + (turn * t if name == "rotate_cw" else -turn * t)

    cells = rng.integers(2, 4)  # checker cells per radius
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        dy, dx = yy - cy[i], xx - cx[i]
        dist = np.hypot(dy, dx)
        inside = np.clip(radius[i] + 0.5 - dist, 0.0, 1.0)[..., None]  # anti-aliased disc
        # Texture in blob coordinates (rotates and scales with the blob).
        cos, sin = math.cos(angle[i]), math.sin(angle[i])
        u = (dx * cos + dy * sin) / radius[i] * cells
        v = (-dx * sin + dy * cos) / radius[i] * cells
        if name in ("stripes_up", "stripes_down"):
            # Horizontal stripes in image coordinates, moving with the blob plus the scroll.
            phase = ((dy - scroll[i]) / period) % 1.0
            blob = colour * np.where(phase < 0.5, 1.0, 0.5)[..., None]
        else:
            # Two shaded halves and a dark hand: the orientation shows even at low resolution.
            half = v >= 0
            bar = (np.abs(v) < 0.35 * cells) & (u > 0)
            blob = colour * np.where(half, 1.0, 0.6)[..., None]
            blob[bar] = 0.3 * colour
        frame = background * (1 - inside) + blob * inside + rng.normal(0.0, 2.0, size=(height, width, 1))
        out[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def write_mp4(path: Path, clip: np.ndarray, *, fps: int, codec: str) -> None:
    """Encode ``clip`` (``(T, H, W, 3)`` uint8) to ``path`` with PyAV, atomically
    (:func:`mutualnet_video.io.atomic_path`)."""
    import av

    frames, height, width, _ = clip.shape
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency"}
        else:
            stream.bit_rate = 2_000_000
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(clip[i], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def pick_codec(codec: str | None) -> str:
    """``codec`` (raising if PyAV cannot encode it), else the first available of H.264 and MPEG-4."""
    import av

    if codec is not None:
        if codec not in av.codecs_available:
            raise ValueError(f"codec {codec!r} is not available in this PyAV build")
        return codec
    for candidate in ("libx264", "mpeg4"):
        if candidate in av.codecs_available:
            return candidate
    raise RuntimeError("PyAV has neither libx264 nor mpeg4: cannot write synthetic videos")


def _check_complete(root: Path, params: dict) -> str | None:
    """``None`` if ``root`` holds the dataset of ``params``, else why not."""
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return "no manifest.json (partial build?)"
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest.json ({e})"
    if meta.get("version") != _MANIFEST_VERSION or meta.get("params") != params:
        return f"built with other parameters {meta.get('params')}"
    for rel, size in meta.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            return f"missing file {path}"
        if path.stat().st_size != size:
            return f"file {path} has {path.stat().st_size} bytes, expected {size} (corrupt?)"
    return None


def make_synthetic_kinetics(
    root: str | os.PathLike,
    *,
    num_classes: int = 4,
    train_per_class: int = 48,
    val_per_class: int = 12,
    frames: int = 32,
    size: int | Sequence[int] = (64, 80),
    fps: int = 16,
    seed: int = 0,
    codec: str | None = None,
) -> dict:
    """Write (or reuse) a small Kinetics-format dataset of synthetic action clips.

    Args:
        root: output folder (created).
        num_classes: 1..10; classes ``SYNTHETIC_CLASSES[:num_classes]``. Up to 4 the
            classes are invariant to horizontal flips.
        train_per_class, val_per_class: videos per class in ``train.csv`` / ``val.csv``.
        frames, fps: length of each video (``frames / fps`` seconds).
        size: frame size, an int (square) or ``(height, width)``; both even.
        seed: everything is a deterministic function of the seed.
        codec: ``"libx264"`` (default when available) or ``"mpeg4"``.

    Idempotent: a complete dataset with the same parameters (checked against
    ``manifest.json``: every file present with its recorded size) is reused; a partial,
    corrupt or differently-built one is reported with a warning and rebuilt.

    Returns:
        ``{"root", "train_csv", "val_csv", "classes_txt", "classes", "num_classes",
        "num_train", "num_val", "frames", "fps", "size", "codec", "flip_invariant",
        "reused"}`` (paths as str).
    """
    if not isinstance(num_classes, int) or not 1 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SYNTHETIC_CLASSES)}, got {num_classes!r}")
    for key, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a non-negative int, got {value!r}")
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an int >= 2, got {frames!r}")
    if not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(f"size must be even and >= 16, got {size!r}")
    codec = pick_codec(codec)

    root = Path(root)
    classes = list(SYNTHETIC_CLASSES[:num_classes])
    params = {
        "num_classes": num_classes, "train_per_class": train_per_class, "val_per_class": val_per_class,
        "frames": frames, "height": height, "width": width, "fps": fps, "seed": seed, "codec": codec,
        "renderer": _RENDERER_VERSION,
    }
    info = {
        "root": str(root), "train_csv": str(root / "train.csv"), "val_csv": str(root / "val.csv"),
        "classes_txt": str(root / "classes.txt"), "classes": classes, "num_classes": num_classes,
        "num_train": num_classes * train_per_class, "num_val": num_classes * val_per_class,
        "frames": frames, "fps": fps, "size": (height, width), "codec": codec,
        "flip_invariant": num_classes <= _FLIP_INVARIANT,
    }

    reason = _check_complete(root, params) if root.exists() else "not built yet"
    if reason is None:
        logger.info("reusing synthetic dataset in %s", root)
        return {**info, "reused": True}
    if root.exists() and any(root.iterdir()):
        logger.warning("synthetic dataset in %s is incomplete or stale: %s; rebuilding", root, reason)
    # Remove only what this function writes.
    (root / "manifest.json").unlink(missing_ok=True)
    shutil.rmtree(root / "videos", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)

    files: dict[str, int] = {}
    csv_lines: dict[str, list[str]] = {"train": [], "val": []}
    for split_id, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for label, name in enumerate(classes):
            folder = root / "videos" / f"{label}_{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, split_id, label, i])
                clip = render_clip(label, frames=frames, height=height, width=width, rng=rng)
                rel = f"videos/{label}_{name}/{split}_{name}_{i:03d}.mp4"
                write_mp4(root / rel, clip, fps=fps, codec=codec)
                files[rel] = (root / rel).stat().st_size
                csv_lines[split].append(f"{rel} {label}")
    for split, lines in csv_lines.items():
        # Interleave classes so that a prefix of the file is balanced.
        lines.sort(key=lambda line: (line.rsplit("_", 1)[-1], line))
        atomic_write_text(root / f"{split}.csv", "".join(f"{line}\n" for line in lines))
        files[f"{split}.csv"] = (root / f"{split}.csv").stat().st_size
    atomic_write_text(root / "classes.txt", "".join(f"{c}\n" for c in classes))
    files["classes.txt"] = (root / "classes.txt").stat().st_size
    atomic_write_text(root / "manifest.json",
                      json.dumps({"version": _MANIFEST_VERSION, "params": params, "files": files}, indent=1))
    logger.info("wrote synthetic dataset (%d train, %d val videos) to %s", info["num_train"], info["num_val"], root)
    return {**info, "reused": False}
