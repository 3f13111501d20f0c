#!/usr/bin/env python
"""Train a MutualNet video model from a YAML config.

    python tools/train_net.py --config configs/instant/x3d_synthetic.yaml [--resume] [--quiet] [key.sub=value ...]
    torchrun --nproc_per_node=2 tools/train_net.py --config FILE [key=value ...]
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

with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
    from mutualnet_video.engine import FinalEvaluation, Trainer, launch, load_config
    from mutualnet_video.engine.cli import ArgumentParser, run_tool, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="train_net", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last_checkpoint")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet)
    overrides = (list(args.overrides) + (["train.resume=true"] if args.resume else [])
                 + (["train.progress=false"] if args.quiet else []))

    def work() -> int:
        cfg = load_config(args.config, overrides)
        with launch(cfg):
            trainer = Trainer(cfg)
            trainer.register_hooks([FinalEvaluation()])
            trainer.train()
        return 0

    return run_tool("train_net", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
