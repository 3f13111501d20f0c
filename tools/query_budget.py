#!/usr/bin/env python
"""Pick the most accurate configuration of a budget table under a budget.

    python tools/query_budget.py out/budgets/budgets.json --max-gflops 2.0 [--max-latency-ms 50]

Prints the chosen configuration (width, frames, crop, views) with its cost and accuracy;
exits with status 2 and the cheapest configuration when nothing fits.
"""

from __future__ import annotations

import json
import os
import sys

try:
    import mutualnet_video  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mutualnet_video.console import quiet_imports


def main(argv: list[str] | None = None) -> int:
    with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
        from mutualnet_video.engine.cli import ArgumentParser, run_tool, setup_logging

    p = ArgumentParser(prog="query_budget", description=__doc__)
    p.add_argument("table", help="budgets.json (or budgets.csv) written by tools/test_net.py")
    p.add_argument("--max-gflops", type=float, help="GFLOPs per video (all views)")
    p.add_argument("--max-latency-ms", type=float, help="milliseconds per video")
    p.add_argument("--metric", default="top1", choices=("top1", "top5"))
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    args = p.parse_args(argv)
    setup_logging(quiet=args.quiet)
    for flag, value in (("--max-gflops", args.max_gflops), ("--max-latency-ms", args.max_latency_ms)):
        if value is not None and not value > 0:
            p.error(f"{flag}: must be > 0, got {value:g}")
    with quiet_imports():
        from mutualnet_video.evaluation.budgets import select_config

    record = run_tool("query_budget", lambda: select_config(args.table, max_gflops=args.max_gflops,
                                                            max_latency_ms=args.max_latency_ms, metric=args.metric),
                      debug=args.debug)
    if isinstance(record, int):
        return record
    if args.json:
        print(json.dumps(record.to_dict()))
    else:
        latency = "" if record.latency_ms is None else f", {record.latency_ms:.2f} ms/video"
        print(f"width={record.width:g} frames={record.frames} crop={record.crop} views={record.views}: "
              f"{record.gflops_per_video:.4g} GFLOPs/video{latency}, top1={record.top1:.2f} top5={record.top5:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
