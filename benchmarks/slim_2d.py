"""Forward time of slimmed 2D backbones vs dense models of the same size.

For each (model, configuration): the slimmable model switched with ``use_config`` and a
dense copy (plain ``nn`` layers holding the sliced weights, same channel counts, built by
recording each slimmable layer's active shapes) are timed side by side in ONE run,
interleaved, batch 1, eval mode, no grad; prints medians and slim/dense ratios. The dense
copy's output is checked against the slimmed model's first.

    python benchmarks/slim_2d.py [--reps 20] [--threads 1] [--models mutual_mobilenet_v2 ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from mutualnet_video.core import SlimBatchNorm2d, SlimConv2d, SlimLinear, SubnetConfig, slimmable_modules, use_config
from mutualnet_video.models import mobilenet, resnet2d  # noqa: F401  (registration)
from mutualnet_video.models.registry import create_model

CONFIGS = {
    "mutual_mobilenet_v1": [(1.0, 224), (0.75, 192), (0.5, 160), (0.25, 128)],
    "mutual_mobilenet_v2": [(1.0, 224), (0.85, 192), (0.7, 160), (0.7, 128)],
    "mutual_resnet50": [(1.0, 224), (0.9, 224), (0.9, 160), (0.9, 128)],
}


def dense_copy(model: nn.Module, cfg: SubnetConfig, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose slimmable layers are plain layers of the active shapes at ``cfg``."""
    shapes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, module in slimmable_modules(model):
        def hook(mod, inputs, output, name=name):
            dim = -1 if isinstance(mod, nn.Linear) else 1
            shapes[name] = (inputs[0].shape[dim], output.shape[dim])
        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad(), use_config(model, cfg):
        model(example)
    for h in hooks:
        h.remove()
    dense = copy.deepcopy(model)
    for name, module in list(slimmable_modules(dense)):
        cin, cout = shapes[name]
        if isinstance(module, SlimConv2d):
            depthwise = module.groups > 1
            new: nn.Module = nn.Conv2d(cin, cout, module.kernel_size, module.stride, module.padding, module.dilation,
                                       groups=cin if depthwise else 1, bias=module.bias is not None)
            new.weight.data.copy_(module.weight[:cout] if depthwise else module.weight[:cout, :cin])
        elif isinstance(module, SlimBatchNorm2d):
            new = nn.BatchNorm2d(cout, eps=module.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).data.copy_(getattr(module, key)[:cout])
        elif isinstance(module, SlimLinear):
            new = nn.Linear(cin, cout, bias=module.bias is not None)
            new.weight.data.copy_(module.weight[:cout, :cin])
        else:
            continue
        if getattr(module, "bias", None) is not None and not isinstance(module, SlimBatchNorm2d):
            new.bias.data.copy_(module.bias[:cout])
        parent, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent) if parent else dense, child, new)
    return dense.eval()


def _time(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, eval, no grad, {args.reps} reps, "
          f"medians; slim and dense interleaved in one run")
    print(f"{'model':22s} {'config':>14s} {'slim ms':>9s} {'dense ms':>9s} {'ratio':>6s}")
    for name in args.models:
        model = create_model(name).eval()
        for width, crop in CONFIGS[name]:
            cfg = SubnetConfig(width, None, crop)
            x = torch.randn(1, 3, crop, crop)
            dense = dense_copy(model, cfg, x)
            with torch.no_grad():
                with use_config(model, cfg):
                    err = (model(x) - dense(x)).abs().max().item()
                    if err > 1e-3:
                        raise RuntimeError(f"{name} {cfg}: dense copy differs by {err}")
                    for _ in range(3):
                        model(x), dense(x)
                    slim_t, dense_t = [], []
                    for _ in range(args.reps):
                        slim_t.append(_time(model, x))
                        dense_t.append(_time(dense, x))
            s, d = statistics.median(slim_t) * 1e3, statistics.median(dense_t) * 1e3
            print(f"{name:22s} {f'{width:g}@{crop}':>14s} {s:9.2f} {d:9.2f} {s / d:6.3f}", flush=True)


if __name__ == "__main__":
    main()
