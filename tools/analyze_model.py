#!/usr/bin/env python
"""Print the FLOPs / parameters table of a registered model, one row per configuration.

    python tools/analyze_model.py --model mutual_x3d_m [--widths 1.0 0.5] [--frames 16 8] [--crops 224 160]
"""

from __future__ import annotations

import os
import sys

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mutualnet_video.console import quiet_imports

with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
    from mutualnet_video.engine.cli import ArgumentParser, run_tool, setup_logging


def main(argv: list[str] | None = None) -> int:
    with quiet_imports():
        from mutualnet_video.core import SubnetConfig, get_space
        from mutualnet_video.evaluation import count_flops, count_params
        from mutualnet_video.models import create_model, list_models

    parser = ArgumentParser(prog="analyze_model", description="FLOPs (multiply-adds) and parameters per configuration")
    parser.add_argument("--model", required=True, choices=list_models())
    parser.add_argument("--widths", type=float, nargs="+", help="default: the space's evaluation widths")
    parser.add_argument("--frames", type=int, nargs="+", help="default: the space's frames")
    parser.add_argument("--crops", type=int, nargs="+", help="default: the space's crops")
    parser.add_argument("--num-classes", type=int, default=400)
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet)

    def work() -> int:
        model = create_model(args.model, model_num_class=args.num_classes)
        space = get_space(model)
        widths = args.widths or space.widths
        frames = args.frames or space.frames
        crops = args.crops or space.crops
        print(f"{args.model}: {space}")
        print(f"{'config':<20}{'width':>7}{'frames':>8}{'crop':>6}{'GFLOPs':>10}{'params (M)':>12}")
        for w in widths:
            for f in frames:
                for c in crops:
                    try:
                        cfg = space.validate(SubnetConfig(w, f, c))
                    except ValueError as exc:
                        raise ValueError(f"--widths/--frames/--crops: {exc}") from None
                    print(f"{cfg.tag:<20}{w:>7.3f}{f:>8}{c:>6}{count_flops(model, cfg) / 1e9:>10.3f}"
                          f"{count_params(model, cfg) / 1e6:>12.3f}")
        return 0

    return run_tool("analyze_model", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
