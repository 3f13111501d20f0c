"""Runtime cost of slimmable layers, measured side by side in one run.

* full width: the slimmable model vs the stock PyTorchVideo model (same weights);
* each width w: the slimmable model at w vs a dense static model of that width (plain
  ``nn`` layers holding the sliced weights, i.e. what an exported sub-network runs).

Forward (eval, no grad) and forward+backward (train mode) are timed alternately, A
then B in each repeat (order flipped every repeat). The ratio of a row is the median of
the per-repeat ratios (B over the A timed next to it: a shared machine's slow spells hit
both), printed with their quartiles; the medians of each side and the ratio of the
fastest repeats are printed beside it. Goal: full width within 5% of stock, slimmed
within 10% of dense.

The forward+backward pass is a sub-network's pass inside ``mutual_step``: gradients
accumulate into existing ``.grad`` tensors (there the full configuration's backward has
already created them), and the slimmable model runs under ``core.slice_grads`` as
``mutual_step`` does (``--plain-grads``: without it, autograd's full-size gradient of
each sliced weight).

    python benchmarks/slim_overhead.py --model mutual_x3d_xs --frames 4 --crop 160 --repeats 9
    python benchmarks/slim_overhead.py --model all --repeats 15    # every family at its FAMILY_INPUTS
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from pytorchvideo.models.resnet import create_resnet
from pytorchvideo.models.slowfast import create_slowfast
from pytorchvideo.models.x3d import create_x3d
from torch import nn

from mutualnet_video.core import (
    SlimConv3d,
    SlimLinear,
    SubnetConfig,
    dummy_input,
    get_space,
    slice_grads,
    slimmable_modules,
    use_config,
)
from mutualnet_video.models import create_model

# (slow) frames and crop of each family under --model all: small enough for a CPU run,
# large enough that the convolutions, not Python, dominate
FAMILY_INPUTS = {
    "mutual_x3d_xs": (4, 160),
    "mutual_x3d_s": (8, 160),
    "mutual_x3d_m": (4, 224),
    "mutual_slow_r50": (4, 96),
    "mutual_slowfast_r50": (4, 96),
}


def stock_model(name: str, frames: int, crop: int, num_classes: int) -> nn.Module:
    """The stock PyTorchVideo network behind registry ``name``, head pools sized for the input."""
    cell = crop // 32
    if name.startswith("mutual_x3d_"):
        depth = 5.0 if name == "mutual_x3d_l" else 2.2
        return create_x3d(input_clip_length=frames, input_crop_size=crop, depth_factor=depth,
                          model_num_class=num_classes, head_activation=None)
    if name == "mutual_slow_r50":
        return create_resnet(stem_conv_kernel_size=(1, 7, 7), head_pool_kernel_size=(frames, cell, cell),
                             model_num_class=num_classes)
    if name == "mutual_slowfast_r50":
        return create_slowfast(head_pool_kernel_sizes=((frames, cell, cell), (4 * frames, cell, cell)),
                               model_num_class=num_classes)
    raise SystemExit(f"no stock counterpart known for {name}")


def dense_model(model: nn.Module, cfg: SubnetConfig, x) -> nn.Module:
    """A copy of ``model`` whose slim layers are plain ``nn`` layers of their shapes at ``cfg``."""
    shapes: dict[str, tuple[int, int]] = {}

    def record(name):
        def hook(mod, args, out):
            dim = -1 if isinstance(mod, nn.Linear) else 1
            shapes[name] = (args[0].shape[dim], out.shape[dim])
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in slimmable_modules(model)]
    with torch.no_grad(), use_config(model, cfg):
        model(_clone(x))
    for h in hooks:
        h.remove()
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in list(slimmable_modules(dense)):
            m.set_subnet(cfg)
            c_in, c_out = shapes[name]
            if isinstance(m, SlimConv3d):
                weight, bias = m.active_weight(c_in)
                new = nn.Conv3d(c_in, c_out, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                                groups=c_out if m.is_depthwise else 1, bias=bias is not None)
            elif isinstance(m, SlimLinear):
                weight, bias = m.active_weight(c_in)
                new = nn.Linear(c_in, c_out, bias=bias is not None)
            else:
                new = nn.BatchNorm3d(c_in, eps=m.eps, momentum=m.momentum)
                weight, bias = m.weight[:c_in], m.bias[:c_in]
                new.running_mean.copy_(m.running_mean[:c_in])
                new.running_var.copy_(m.running_var[:c_in])
            new.weight.copy_(weight)
            if bias is not None:
                new.bias.copy_(bias)
            parent, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent) if parent else dense, child, new)
    return dense


def _clone(x):
    return [t.clone() for t in x] if isinstance(x, list) else x.clone()


def _forward(model: nn.Module, x) -> Callable[[], None]:
    def run():
        model.eval()
        with torch.no_grad():
            model(_clone(x))
    return run


def _forward_backward(model: nn.Module, x, sliced: bool = False) -> Callable[[], None]:
    def run():
        model.train()
        with slice_grads(sliced):
            model(_clone(x)).sum().backward()  # accumulates into .grad, as a sub-network in mutual_step
    return run


def side_by_side(
    a: Callable[[], None], b: Callable[[], None], *, repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Seconds of each run of ``a`` and ``b``, timed alternately (order flipped every repeat)."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for i in range(repeats):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return ta, tb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mutual_x3d_xs", help="registry name, or 'all' (FAMILY_INPUTS)")
    parser.add_argument("--frames", type=int, default=None, help="(slow) input frames (default: FAMILY_INPUTS)")
    parser.add_argument("--crop", type=int, default=None, help="crop size, multiple of 32 (default: FAMILY_INPUTS)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-backward", action="store_true", help="time the forward only")
    parser.add_argument("--plain-grads", action="store_true",
                        help="fwd+bwd without core.slice_grads (autograd's full-size gradient of each slice)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(FAMILY_INPUTS) if args.model == "all" else [args.model]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, repeats {args.repeats} "
          f"(+{args.warmup} warm-up), device cpu, grads {'plain' if args.plain_grads else 'slice_grads'}")
    print("ratio: median of the per-repeat slim/ref ratios [quartiles]; ms: medians; min: fastest repeats")
    summary = []
    for name in names:
        frames, crop = FAMILY_INPUTS.get(name, (4, 160))
        summary += run_model(name, args.frames or frames, args.crop or crop, args)
    if len(names) > 1:
        print("\nsummary (median per-repeat ratios [quartiles]):")
        for name, tag, label, ratio, q1, q3 in summary:
            print(f"  {name:<22}{tag:<18}{label:<9}{ratio:>7.3f} [{q1:.3f}, {q3:.3f}]")


def paired_ratio(t_ref: list[float], t_slim: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the per-repeat ratios ``t_slim[i] / t_ref[i]``."""
    ratios = [b / a for a, b in zip(t_ref, t_slim)]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return median, q1, q3


def run_model(name: str, frames: int, crop: int, args) -> list[tuple[str, str, str, float, float, float]]:
    torch.manual_seed(0)
    slim = create_model(name, frames=(frames,), crops=(crop,), model_num_class=400,
                        width_range=(min(args.widths), 1.0), widths=tuple(args.widths))
    stock = stock_model(name, frames, crop, 400)
    slim.load_state_dict(stock.state_dict(), strict=True)
    space = get_space(slim)
    full = SubnetConfig(1.0, frames, crop)
    x = dummy_input(space, full, batch=args.batch)
    x = [t.normal_() for t in x] if isinstance(x, list) else x.normal_()
    with torch.no_grad():
        same = torch.allclose(_forward_out(slim.eval(), full, x), stock.eval()(_clone(x)), atol=1e-4, rtol=1e-4)

    print(f"\nmodel {name}  input {frames}x{crop}")
    print(f"slimmable at full width equals stock: {same}")
    print(f"{'config':<18}{'pass':<9}{'reference':<10}{'ratio':>7} {'[quartiles]':<16}{'ref ms':>9}{'slim ms':>9}"
          f"{'ref min':>9}{'slim min':>9}{'ratio':>7}")
    rows = []
    for width in sorted(args.widths, reverse=True):
        cfg = SubnetConfig(width, frames, crop)
        if width == 1.0:
            ref, ref_name = stock, "stock"
        else:
            ref, ref_name = dense_model(slim, cfg, x), "dense"
        passes = [("fwd", _forward, _forward)]
        if not args.no_backward:
            passes.append(("fwd+bwd", _forward_backward,
                           functools.partial(_forward_backward, sliced=not args.plain_grads)))
        for label, make_ref, make_slim in passes:
            with use_config(slim, cfg):
                t_ref, t_slim = side_by_side(make_ref(ref, x), make_slim(slim, x), repeats=args.repeats,
                                             warmup=args.warmup)
            med_ref, med_slim = statistics.median(t_ref) * 1e3, statistics.median(t_slim) * 1e3
            min_ref, min_slim = min(t_ref) * 1e3, min(t_slim) * 1e3
            ratio, q1, q3 = paired_ratio(t_ref, t_slim)
            print(f"{cfg.tag:<18}{label:<9}{ref_name:<10}{ratio:>7.3f} {f'[{q1:.3f}, {q3:.3f}]':<16}{med_ref:>9.1f}"
                  f"{med_slim:>9.1f}{min_ref:>9.1f}{min_slim:>9.1f}{min_slim / min_ref:>7.3f}", flush=True)
            rows.append((name, cfg.tag, label, ratio, q1, q3))
    return rows


def _forward_out(model: nn.Module, cfg: SubnetConfig, x) -> torch.Tensor:
    with use_config(model, cfg):
        return model(_clone(x))


if __name__ == "__main__":
    main()
