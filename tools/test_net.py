#!/usr/bin/env python
"""Evaluate a MutualNet checkpoint over its clip budgets: width x frames x crop x views.

    python tools/test_net.py --config configs/x3d_s.yaml --checkpoint out/model_final.pth \\
        --calibrate --views 1x1,10x3 --output out/budgets [key=value ...]

Writes budgets.json, budgets.csv, budgets.txt and top1-vs-GFLOPs (and -latency) plots,
and prints the table. With --calibrate, BN statistics are recomputed per configuration
on training batches first and the calibrated checkpoint is saved (atomically) next to
the input one as ``<name>_calibrated.pth``; without it the checkpoint must already be
calibrated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _get(cfg: Any, *keys: str, default: Any = None) -> Any:
    """The first of the dotted ``keys`` present in ``cfg`` (attributes or mapping)."""
    for key in keys:
        node, found = cfg, True
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif hasattr(node, part):
                node = getattr(node, part)
            else:
                found = False
                break
        if found:
            return node
    if default is not None:
        return default
    raise KeyError(f"the config has none of the keys {keys}")


def build_loader(cfg: Any, space: Any, *, split: str, views: Any = None, batch_size: int | None = None) -> Any:
    """The data helper's Kinetics dataset in a DataLoader (train batches for calibration, multi-view test)."""
    import torch

    import mutualnet_video  # noqa: F401  (compat before pytorchvideo.data)
    from mutualnet_video.data import kinetics_dataset

    kwargs: dict[str, Any] = {"data_path": _get(cfg, "data.path", "data.root", "DATA.PATH_TO_DATA_DIR"),
                              "split": split, "space": space,
                              "decoder": _get(cfg, "data.decoder", "DATA.DECODER", default="pyav")}
    if views is not None:
        kwargs.update(temporal_clips=views.temporal, spatial_crops=views.spatial)
    dataset = kinetics_dataset(**kwargs)
    batch = batch_size or _get(cfg, "test.batch_size", "data.batch_size", "TEST.BATCH_SIZE", default=8)
    workers = _get(cfg, "data.num_workers", "DATA_LOADER.NUM_WORKERS", default=0)
    return torch.utils.data.DataLoader(dataset, batch_size=int(batch), num_workers=int(workers))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config the model was trained with")
    p.add_argument("--checkpoint", required=True, help="model weights (state dict or checkpoint with 'model')")
    p.add_argument("--calibrate", action="store_true", help="recompute BN statistics per configuration first")
    p.add_argument("--calib-batches", type=int, default=9, help="training batches for calibration (paper: 9)")
    p.add_argument("--widths", type=float, nargs="+", help="widths (default: the model space's eval widths)")
    p.add_argument("--frames", type=int, nargs="+", help="frame counts (default: the space's)")
    p.add_argument("--crops", type=int, nargs="+", help="crop sizes (default: the space's)")
    p.add_argument("--views", default="1x1", help="comma-separated TEMPORALxSPATIAL view specs, e.g. 1x1,10x3")
    p.add_argument("--latency", type=int, default=0, metavar="REPEATS", help="also measure latency (repeats)")
    p.add_argument("--threads", type=int, help="torch threads while measuring latency")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batches", type=int, help="stop after this many test batches (smoke runs)")
    p.add_argument("--output", help="output folder (default: <checkpoint folder>/budgets)")
    p.add_argument("opts", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mutualnet_video.engine.config import build_model, load_config

    import mutualnet_video  # noqa: F401
    from mutualnet_video.core import SubnetConfig, get_space
    from mutualnet_video.evaluation import (
        ViewSpec,
        calibrated_path,
        format_table,
        load_weights,
        run_budgets,
        save_weights,
    )

    cfg = load_config(args.config, args.opts)
    model = build_model(cfg)
    space = get_space(model)
    if space is None:
        raise SystemExit(f"{args.config}: the model it builds has no ConfigSpace attached")
    payload = load_weights(model, args.checkpoint)
    model.to(args.device)
    configs = [SubnetConfig(w, f, c) for w in (args.widths or space.widths)
               for f in (args.frames or space.frames) for c in (args.crops or space.crops)]
    for c in configs:
        space.validate(c)
    views = [ViewSpec.parse(v) for v in args.views.split(",") if v.strip()]
    loader_views = ViewSpec(max(v.temporal for v in views), max(v.spatial for v in views))
    calib = build_loader(cfg, space, split="train") if args.calibrate else None
    output = Path(args.output) if args.output else Path(args.checkpoint).parent / "budgets"
    records = run_budgets(
        model, test_loader=build_loader(cfg, space, split="test", views=loader_views), configs=configs,
        views=[str(v) for v in views], output_dir=output, calibration_batches=calib,
        calibration_num_batches=args.calib_batches, device=args.device, latency_repeats=args.latency,
        latency_threads=args.threads, max_batches=args.max_batches,
        meta={"config": str(args.config), "checkpoint": str(args.checkpoint)},
    )
    if args.calibrate:
        payload = dict(payload, model=model.state_dict())
        print(f"calibrated checkpoint: {save_weights(payload, calibrated_path(args.checkpoint))}")
    print(format_table(records))
    print(f"budget table and plots in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
