#!/usr/bin/env python
"""Train a MutualNet video model from a YAML config.

    python tools/train_net.py --config configs/instant/x3d_synthetic.yaml [--resume] [key.sub=value ...]
    torchrun --nproc_per_node=2 tools/train_net.py --config FILE [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from mutualnet_video.engine import ConfigError, FinalEvaluation, Trainer, launch, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last_checkpoint")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    with launch(cfg):
        trainer = Trainer(cfg)
        trainer.register_hooks([FinalEvaluation()])
        try:
            trainer.train()
        except FloatingPointError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
