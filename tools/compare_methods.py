#!/usr/bin/env python
"""Train MutualNet and its baselines from one config, evaluate them at the same configurations.

    python tools/compare_methods.py --config configs/instant/x3d_synthetic.yaml --output output/compare
    python tools/compare_methods.py --config FILE --output DIR [--seeds N] [--methods mutual,independent]
        [--budget iters|flops] [key.sub=value ...]

Methods: mutual, width_only, independent, single, boost, finetune (see
mutualnet_video.engine.compare). Writes DIR/comparison.{json,csv,txt,png} and one subfolder
per trained model; prints the accuracy and training-cost tables.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from mutualnet_video.console import quiet_imports

with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
    from mutualnet_video.engine import launch, load_config
    from mutualnet_video.engine.cli import ArgumentParser, run_tool, setup_logging
    from mutualnet_video.engine.compare import (
        BUDGETS,
        METHODS,
        compare_methods,
        format_accuracy_table,
        format_training_table,
    )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="compare_methods", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--output", required=True, help="comparison folder")
    parser.add_argument("--seeds", type=int, default=1, help="seeds train.seed, train.seed+1, ... (default 1)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--budget", choices=BUDGETS, default="iters",
                        help="iters: same iterations per model; flops: same training FLOPs as the mutual run")
    parser.add_argument("--finetune-fraction", type=float, default=0.25, help="finetune iterations / base iterations")
    parser.add_argument("--max-iters-factor", type=float, default=4.0, help="cap of the FLOPs budget (x base iterations)")
    parser.add_argument("--verbose", action="store_true", help="keep the trainer's own per-iteration log lines")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet)
    command = shlex.join([os.path.basename(sys.argv[0]) if argv is None else "compare_methods.py",
                          *(sys.argv[1:] if argv is None else argv)])
    if args.seeds < 1:
        parser.error(f"--seeds: must be >= 1, got {args.seeds}")

    def work():
        # the trainers' per-iteration lines, for the run only (levels restored: main may run in-process)
        quieted = [] if args.verbose else [logging.getLogger(name) for name in (
            "mutualnet_video.engine.trainer", "mutualnet_video.engine.hooks", "fvcore.common.checkpoint")]
        levels = [log.level for log in quieted]
        for log in quieted:
            log.setLevel(logging.WARNING)
        try:
            cfg = load_config(args.config, args.overrides)
            first = cfg["train"]["seed"]
            with launch(cfg):
                return compare_methods(
                    cfg, output_dir=args.output, seeds=range(first, first + args.seeds), methods=args.methods,
                    budget=args.budget, finetune_fraction=args.finetune_fraction,
                    max_iters_factor=args.max_iters_factor, command=command, config_file=args.config,
                )
        finally:
            for log, level in zip(quieted, levels):
                log.setLevel(level)

    result = run_tool("compare_methods", work, debug=args.debug)
    if isinstance(result, int):
        return result
    print(format_accuracy_table(result.records))
    print()
    print(format_training_table(result.training))
    print(f"\nwrote {', '.join(str(p) for p in result.paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
