#!/usr/bin/env python
"""Latency of every configuration of an adaptive model next to its FLOPs, and the exported
static sub-network against the slimmable model (and a stock model of the same shape).

    python benchmarks/budgets_latency.py [--model mutual_x3d_xs] [--threads 1] [--repeats 15]

Everything is measured side by side in ONE run, interleaved: each round visits every
configuration and, for each, the slimmable, exported and stock models, so load drifting
over the run hits all alike; each number is the median over rounds of
``measure_latency`` medians (batch 1, eval mode, no grad, threads pinned).

Model: a real one from ``mutualnet_video.models.create_model`` if that package is
importable, else the toy X3D-like net of ``mutualnet_video.testing`` (the output
says which). The "stock" model: for the toy, the same architecture built from plain
``nn.Conv3d`` / ``nn.BatchNorm3d`` / ``nn.Linear`` at the exported channel counts; for a
registered X3D at width 1.0, PyTorchVideo's own ``create_x3d`` built for that clip size
(no stock PyTorchVideo model has a slimmed width's channel counts). Either loads the
exported weights strictly. FLOPs: ``mutualnet_video.evaluation.flops.count_flops``
if present, else ``torch.utils.flop_counter`` halved (multiply-adds of conv/linear/matmul;
BN not counted), which the output also says.

Goals: exported within 2% of stock; latency falling with FLOPs (rank correlation).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import torch

from mutualnet_video.core import dummy_input, get_space
from mutualnet_video.evaluation.budgets import measure_latency
from mutualnet_video.evaluation.calibration import calibrate_bn
from mutualnet_video.export import export_subnet
from mutualnet_video.testing import ToyX3D, toy_x3d


def _model(name: str | None):
    try:
        from mutualnet_video import models
    except ImportError:
        models = None
    if models is not None and hasattr(models, "create_model") and name:
        model = models.create_model(name, head_activation=None) if "x3d" in name else models.create_model(name)
        return model, f"real: mutualnet_video.models.create_model({name!r})", False
    model = toy_x3d(num_classes=10, channels=32, inner=80, se=16, blocks=3, frames=(8, 4), crops=(64, 48),
                    width_range=(0.5, 1.0))
    return model, "toy: ToyX3D(channels=32, inner=80, se=16, blocks=3), frames (8, 4), crops (64, 48)", True


def _flops_fn():
    try:
        from mutualnet_video.evaluation.flops import count_flops  # type: ignore[import-not-found]

        return count_flops, "mutualnet_video.evaluation.flops.count_flops"
    except ImportError:
        pass
    from torch.utils.flop_counter import FlopCounterMode

    from mutualnet_video.core import use_config

    def count(model, cfg):
        with torch.no_grad(), use_config(model.eval(), cfg), FlopCounterMode(display=False) as counter:
            model(dummy_input(get_space(model), cfg))
        return counter.get_total_flops() // 2

    return count, "torch.utils.flop_counter / 2 (fallback: flops.py not available)"


def _stock_like(static: torch.nn.Module, model: ToyX3D) -> torch.nn.Module:
    channels, inner = static.stem_conv.out_channels, static.block.conv_a.out_channels
    stock = ToyX3D(num_classes=static.proj.out_features, channels=channels, inner=inner,
                   se=static.block.se.fc1.out_channels, blocks=model.blocks, conv=torch.nn.Conv3d,
                   norm=torch.nn.BatchNorm3d, linear=torch.nn.Linear)
    stock.load_state_dict(static.state_dict(), strict=True)
    return stock.eval()


def _stock_x3d(static: torch.nn.Module, name: str, cfg) -> torch.nn.Module | None:
    """PyTorchVideo's ``create_x3d`` at ``cfg``'s clip size, exported weights loaded strictly."""
    if cfg.width != 1.0 or "x3d" not in name:
        return None
    from pytorchvideo.models.x3d import create_x3d

    stock = create_x3d(input_clip_length=cfg.frames, input_crop_size=cfg.crop, head_activation=None,
                       depth_factor=5.0 if name.endswith("_l") else 2.2,
                       model_num_class=static.blocks[-1].proj.out_features)
    stock.load_state_dict(static.state_dict(), strict=True)
    return stock.eval()


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / ((sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registry name (e.g. mutual_x3d_xs); default: the toy")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="forward passes per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration")
    p.add_argument("--widths", type=float, nargs="+", help="widths (default: the space's)")
    args = p.parse_args(argv)

    model, description, is_toy = _model(args.model)
    space = get_space(model)
    flops_fn, flops_source = _flops_fn()
    configs = space.grid(args.widths)
    full = space.full()
    clip = torch.randn(2, 3, full.frames * (space.slowfast_alpha or 1), full.crop, full.crop)
    calibrate_bn(model, [clip], configs, num_batches=1)  # statistics per config, so export uses them
    print(f"model: {description}")
    print(f"FLOPs: {flops_source}")
    print(f"machine: CPU, torch {torch.__version__}, torch.set_num_threads({args.threads}) while timing, batch 1; "
          f"{args.rounds} interleaved rounds x {args.repeats} repeats, medians")
    print(f"{'config':>16} {'GFLOPs':>8} {'slim ms':>8} {'export ms':>9} {'stock ms':>8} "
          f"{'export/slim':>11} {'export/stock':>12}")
    prepared = []
    for cfg in configs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            static = export_subnet(model, cfg)
        stock = _stock_like(static, model) if is_toy else _stock_x3d(static, args.model, cfg)
        prepared.append((cfg, static, stock, dummy_input(space, cfg)))
    # Rounds outside, configurations inside: load drifting over the run hits every configuration alike.
    times = {cfg: {"slim": [], "export": [], "stock": []} for cfg in configs}
    for _ in range(args.rounds):
        for cfg, static, stock, inputs in prepared:
            t = times[cfg]
            t["slim"].append(measure_latency(model, cfg, repeats=args.repeats, warmup=2, threads=args.threads))
            t["export"].append(measure_latency(static, inputs=inputs, repeats=args.repeats, warmup=2,
                                               threads=args.threads))
            if stock is not None:
                t["stock"].append(measure_latency(stock, inputs=inputs, repeats=args.repeats, warmup=2,
                                                  threads=args.threads))
    rows = []
    for cfg in configs:
        t = times[cfg]
        slim, export = statistics.median(t["slim"]), statistics.median(t["export"])
        stock_ms = statistics.median(t["stock"]) if t["stock"] else float("nan")
        gflops = flops_fn(model, cfg) / 1e9
        rows.append((cfg, gflops, slim, export, stock_ms))
        print(f"{cfg.tag:>16} {gflops:>8.4f} {slim:>8.2f} {export:>9.2f} {stock_ms:>8.2f} "
              f"{export / slim:>11.3f} {export / stock_ms:>12.3f}")
    ratios_slim = [r[3] / r[2] for r in rows]
    ratios_stock = [r[3] / r[4] for r in rows if r[4] == r[4]]  # configurations with a stock twin
    print(f"median export/slim: {statistics.median(ratios_slim):.3f}; "
          f"median export/stock: {statistics.median(ratios_stock) if ratios_stock else float('nan'):.3f} "
          f"over {len(ratios_stock)} configs with a stock twin (goal: within 0.98-1.02)")
    rho = _spearman([r[1] for r in rows], [r[3] for r in rows])
    print(f"Spearman rank correlation GFLOPs vs exported latency over {len(rows)} configs: {rho:.3f}")
    by_flops = sorted(rows, key=lambda r: r[1])
    inversions = sum(1 for a, b in zip(by_flops, by_flops[1:]) if b[3] < a[3])
    print(f"adjacent inversions (more FLOPs, less time) in FLOPs order: {inversions} of {len(rows) - 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
