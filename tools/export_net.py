#!/usr/bin/env python
"""Export one configuration of a MutualNet checkpoint as a static TorchScript or ONNX model.

    python tools/export_net.py --config configs/x3d_s.yaml --checkpoint out/model_calibrated.pth \\
        --width 0.5 --frames 8 --crop 160 --format onnx --output out/x3d_w05_f8_c160.onnx [--fold-bn]

The checkpoint should hold calibrated BN statistics for the configuration
(``tools/test_net.py --calibrate`` writes one); otherwise the shared statistics are used,
with a warning. The exported network is checked against the slimmable model at that
configuration before it is written.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--frames", type=int, help="frames (Slow pathway for SlowFast); omit for 2D models")
    p.add_argument("--crop", type=int, required=True)
    p.add_argument("--format", choices=("torchscript", "onnx"), required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--fold-bn", action="store_true", help="fold BN into the conv feeding it")
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("opts", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)

    from mutualnet_video.engine.config import build_model, load_config

    import mutualnet_video  # noqa: F401
    from mutualnet_video.core import SubnetConfig, get_space
    from mutualnet_video.evaluation.runner import load_weights
    from mutualnet_video.export import example_inputs, export_onnx, export_subnet, export_torchscript

    model = build_model(load_config(args.config, args.opts))
    if get_space(model) is None:
        raise SystemExit(f"{args.config}: the model it builds has no ConfigSpace attached")
    load_weights(model, args.checkpoint)
    cfg = get_space(model).validate(SubnetConfig(args.width, args.frames, args.crop))
    static = export_subnet(model, cfg, fold_bn=args.fold_bn)
    inputs = example_inputs(model, cfg, batch=args.batch)
    if args.format == "torchscript":
        path = export_torchscript(static, inputs, args.output)
    else:
        path = export_onnx(static, inputs, args.output, opset=args.opset)
    params = sum(p.numel() for p in static.parameters())
    print(f"exported {cfg} ({params / 1e6:.3f} M params, BN folded: {len(static.folded_bn)}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
