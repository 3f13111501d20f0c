#!/usr/bin/env python
"""Write (or reuse) the synthetic Kinetics-format action dataset.

    python tools/make_synthetic_kinetics.py --root data/synthetic [--num-classes 4 ...]
"""

from __future__ import annotations

import argparse
import json
import logging

from mutualnet_video.data import make_synthetic_kinetics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = make_synthetic_kinetics(args.root, num_classes=args.num_classes, train_per_class=args.train_per_class,
                                   val_per_class=args.val_per_class, frames=args.frames, size=tuple(args.size),
                                   fps=args.fps, seed=args.seed, codec=args.codec)
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
