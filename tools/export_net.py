#!/usr/bin/env python
"""Export one configuration of a MutualNet checkpoint as a static TorchScript or ONNX model.

    python tools/export_net.py --config configs/instant/x3d_synthetic.yaml \\
        --checkpoint output/instant/x3d_synthetic/model_final_calibrated.pth \\
        --width 0.5 --frames 2 --crop 32 --format onnx --output x3d_w05_f2_c32.onnx [--fold-bn]

The checkpoint should hold calibrated BN statistics for the configuration
(``tools/test_net.py --calibrate`` writes one); otherwise the shared statistics are used,
with a warning. The exported network is checked against the slimmable model at that
configuration before it is written. ``tools/query_budget.py --json`` picks a configuration.
"""

from __future__ import annotations

import os
import sys

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from mutualnet_video.console import quiet_imports


def main(argv: list[str] | None = None) -> int:
    with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
        from mutualnet_video.engine.cli import ArgumentParser, run_tool, setup_logging

    p = ArgumentParser(prog="export_net", description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="Trainer checkpoint, state dict or zoo {'model_state'}")
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--frames", type=int, help="frames (Slow pathway for SlowFast); omit for 2D models")
    p.add_argument("--crop", type=int, required=True)
    p.add_argument("--format", choices=("torchscript", "onnx"), required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--fold-bn", action="store_true", help="fold BN into the conv feeding it")
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("opts", nargs="*", help="config overrides key.sub=value")
    args = p.parse_args(argv)
    setup_logging(quiet=args.quiet)

    with quiet_imports():
        from mutualnet_video.core import SubnetConfig
        from mutualnet_video.engine.config import load_config
        from mutualnet_video.engine.inference import load_model
        from mutualnet_video.export import (
            bn_fold_pairs,
            example_inputs,
            export_onnx,
            export_subnet,
            export_torchscript,
        )

    def work() -> int:
        model, space, _ = load_model(load_config(args.config, args.opts), args.checkpoint)
        cfg = space.validate(SubnetConfig(args.width, args.frames, args.crop))
        static = export_subnet(model, cfg, fold_bn=args.fold_bn)
        folded = len(bn_fold_pairs(model, cfg)) if args.fold_bn else 0
        inputs = example_inputs(model, cfg, batch=args.batch)
        if args.format == "torchscript":
            path = export_torchscript(static, inputs, args.output)
        else:
            path = export_onnx(static, inputs, args.output, opset=args.opset)
        params = sum(p.numel() for p in static.parameters())
        print(f"exported {cfg} ({params / 1e6:.3f} M params, BN folded: {folded}) to {path}")
        return 0

    return run_tool("export_net", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
