#!/usr/bin/env python
"""Graphs that one plain ``torch.compile(model)`` builds for training, then evaluation.

What a user who does not know :func:`mutualnet_video.engine.compile_slimmable` runs: dynamo's
defaults (dynamic shapes, ``recompile_limit`` 8, not raised), one compiled object that first
runs ``mutual_step`` over ``--sandwiches`` samples of :class:`SandwichSampler` (random widths),
then evaluates every configuration of the space (eval, ``torch.no_grad``). The ``eager``
backend counts graphs (dynamo's tracing and guards, not inductor's code), so this measures
how many graphs the space needs, not speed (``compile_bench.py`` times inductor). It prints
the graphs after training and after evaluation, whether dynamo hit its recompile limit (then
it runs the function eagerly from there on) and the largest difference of the compiled outputs from eager's.

    python benchmarks/compile_graphs.py                          # the three toy networks
    python benchmarks/compile_graphs.py --model mutual_x3d_xs --sandwiches 15
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from torch._dynamo.testing import CompileCounter

from mutualnet_video.core import get_space, use_config
from mutualnet_video.engine import SandwichSampler, mutual_step

TOYS = ("toy", "toy_x3d", "toy_slowfast")


def build(name: str, frames: list[int], crops: list[int]) -> torch.nn.Module:
    from mutualnet_video import testing

    if name == "toy":
        return testing.create_toy_slimnet(channels=16)
    if name in TOYS:
        return getattr(testing, name)()
    from mutualnet_video.models import create_model

    return create_model(name, frames=tuple(frames), crops=tuple(crops), model_num_class=10)


def fresh(x):
    """A copy of a model input (SlowFast's pathway list is replaced in place by the model)."""
    return [t.clone() for t in x] if isinstance(x, list) else x.clone()


def count(name: str, args) -> tuple[int, int, int, bool, float]:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build(name, args.frames, args.crops).train()
    space = get_space(model)
    frames, crop = space.full_clip_shape()  # (SlowFast: the fast pathway's frames)
    clip = torch.randn(args.batch, 3, frames, crop, crop)
    counter = CompileCounter()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend=counter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sampler = SandwichSampler(space, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.batch) % 2
    for _ in range(args.sandwiches):
        mutual_step(compiled, sampler(clip), labels, criterion=F.cross_entropy, optimizer=optimizer)
    trained = counter.frame_count
    model.eval()
    worst = 0.0
    configs = list(space)
    for cfg in configs:
        x = space.model_input(clip, cfg)
        with use_config(model, cfg), torch.no_grad():
            worst = max(worst, (compiled(fresh(x)) - model(fresh(x))).abs().max().item())
    limit_hit = any("recompile limit" in k for k in torch._dynamo.utils.counters["unimplemented"])
    return trained, counter.frame_count, len(configs), limit_hit, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=list(TOYS),
                        help="toy, toy_x3d, toy_slowfast, or a mutualnet_video.models name")
    parser.add_argument("--sandwiches", type=int, default=10)
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 2], help="a full-size model's frames")
    parser.add_argument("--crops", type=int, nargs="+", default=[64, 48], help="a full-size model's crops")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--recompile-limit", type=int, default=None,
                        help="torch._dynamo.config.recompile_limit (default: dynamo's, 8)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads (conv's backend choice, and so dynamo's guards, follow it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.recompile_limit is not None:
        torch._dynamo.config.recompile_limit = args.recompile_limit
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}; dynamo recompile_limit "
          f"{torch._dynamo.config.recompile_limit}, eager backend")
    for name in args.model:
        start = time.perf_counter()
        trained, total, n_configs, limit_hit, worst = count(name, args)
        print(f"{name}: {args.sandwiches} sandwiches then {n_configs} "
              f"evaluation configurations: graphs {trained} after training, {total} after evaluation; "
              f"recompile limit hit: {'yes' if limit_hit else 'no'}; max |compiled - eager| {worst:.2e}; "
              f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
