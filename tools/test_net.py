#!/usr/bin/env python
"""Evaluate a MutualNet checkpoint over its budgets: width x frames x crop x views.

    python tools/test_net.py --config configs/instant/x3d_synthetic.yaml \\
        --checkpoint output/instant/x3d_synthetic/model_final.pth --calibrate --views 1x1,3x1 [key=value ...]

The checkpoint may be a Trainer checkpoint (``output_dir/model_final.pth``), a plain
state dict or a PyTorchVideo zoo checkpoint (``{"model_state": ...}``); it is loaded
strictly. The grid defaults to the config's ``eval.widths/frames/crops/views`` (else the
model's space). With ``--calibrate``, BN statistics are recomputed for every
configuration on ``eval.calib_batches`` training batches and the calibrated checkpoint is
saved (atomically) next to the input as ``<name>_calibrated.pth``; without it the
checkpoint must already be calibrated. Writes budgets.json, budgets.csv, budgets.txt and
top1_vs_gflops.png (and top1_vs_latency.png with ``--latency``) to ``--output`` (default
``<checkpoint folder>/budgets``), and prints the table and its Pareto front.
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from mutualnet_video.console import quiet_imports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
        from mutualnet_video.engine.cli import ArgumentParser

    p = ArgumentParser(prog="test_net", description=__doc__)
    p.add_argument("--config", required=True, help="YAML config the model was trained with")
    p.add_argument("--checkpoint", required=True, help="Trainer checkpoint, state dict or zoo {'model_state'}")
    p.add_argument("--calibrate", action="store_true", help="recompute BN statistics per configuration first")
    p.add_argument("--widths", type=float, nargs="+", help="widths (default: eval.widths, else the space's)")
    p.add_argument("--frames", type=int, nargs="+", help="frame counts (default: eval.frames, else the space's)")
    p.add_argument("--crops", type=int, nargs="+", help="crop sizes (default: eval.crops, else the space's)")
    p.add_argument("--views", help="comma-separated TEMPORALxSPATIAL view specs, e.g. 1x1,10x3 (default: eval.views)")
    p.add_argument("--latency", type=int, default=0, metavar="REPEATS", help="also measure latency (repeats)")
    p.add_argument("--threads", type=int, help="torch threads while measuring latency")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batches", type=int, help="stop after this many test batches (default: eval.max_batches)")
    p.add_argument("--output", help="output folder (default: <checkpoint folder>/budgets)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs="*", help="config overrides key.sub=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with quiet_imports():
        from mutualnet_video.engine import launch
        from mutualnet_video.engine.cli import run_tool, setup_logging
        from mutualnet_video.engine.config import load_config
        from mutualnet_video.engine.inference import run_test
        from mutualnet_video.evaluation import format_table, pareto_front
    setup_logging(quiet=args.quiet)

    def work():
        cfg = load_config(args.config, args.opts)
        with launch(cfg):  # the same process setup as training: threads, seeds, data.synthetic
            return run_test(
                cfg, checkpoint=args.checkpoint, calibrate=args.calibrate, widths=args.widths, frames=args.frames,
                crops=args.crops, views=args.views, output_dir=args.output, device=args.device,
                latency_repeats=args.latency, latency_threads=args.threads, max_batches=args.max_batches,
                progress=not (args.no_progress or args.quiet),
            )

    result = run_tool("test_net", work, debug=args.debug)
    if isinstance(result, int):
        return result
    if result.calibrated_checkpoint is not None:
        print(f"calibrated checkpoint: {result.calibrated_checkpoint}")
    print(format_table(result.records))
    print("Pareto front (GFLOPs/video -> top1):")
    for r in pareto_front(result.records):
        print(f"  {r.gflops_per_video:10.4f}  {r.top1:6.2f}  width={r.width:g} frames={r.frames} "
              f"crop={r.crop} views={r.views}")
    print(f"budget table and plots in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
