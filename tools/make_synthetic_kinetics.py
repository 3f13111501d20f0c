#!/usr/bin/env python
"""Write (or reuse) the synthetic Kinetics-format action dataset.

    python tools/make_synthetic_kinetics.py --root data/synthetic [--num-classes 4 ...]
"""

from __future__ import annotations

import json
import os
import sys

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mutualnet_video.console import quiet_imports

with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
    from mutualnet_video.engine.cli import ArgumentParser, run_tool, setup_logging


def main(argv: list[str] | None = None) -> dict | int:
    """The dataset's info (a dict), or 2 after a one-line error."""
    with quiet_imports():
        from mutualnet_video.data import make_synthetic_kinetics

    parser = ArgumentParser(prog="make_synthetic_kinetics", description=__doc__)
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--num-classes", type=int, default=4, help="1..10; <= 4 keeps classes flip-invariant")
    parser.add_argument("--train-per-class", type=int, default=48)
    parser.add_argument("--val-per-class", type=int, default=12)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 80), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", default=None, help="libx264 (default when available) or mpeg4")
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet)
    info = run_tool("make_synthetic_kinetics", lambda: make_synthetic_kinetics(
        args.root, num_classes=args.num_classes, train_per_class=args.train_per_class,
        val_per_class=args.val_per_class, frames=args.frames, size=tuple(args.size), fps=args.fps, seed=args.seed,
        codec=args.codec), debug=args.debug)
    if isinstance(info, int):
        return info
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    sys.exit(0 if isinstance(main(), dict) else 2)
