#!/usr/bin/env python
"""torch.compile (inductor) against eager for a slimmable model, measured side by side in one run.

Two parts, each timing eager and compiled interleaved, round after round:

* ``inference``: every configuration of the space's evaluation grid (widths x frames x crops),
  eval mode under ``torch.no_grad``; per configuration, the median of the rounds; the
  compiled outputs are checked against eager first;
* ``mutual step``: ``mutual_step`` on ``--steps`` sandwiches drawn by ``SandwichSampler``
  (the same ones every round), eager against the compiled model (two copies of one model,
  each with its optimizer).

The compiled model is ``mutualnet_video.engine.compile_slimmable(model)`` (dynamo's recompile
limit raised to the space's static graph budget) with a counting inductor backend: it reports
the graphs compiled (with dynamic shapes, the default, a few for the whole space: channel
counts, frames and crops become dynamic sizes; at most one per configuration with
``--dynamic false``; none in the timed rounds, which run configurations already seen) and
the compile time (first pass, compiled minus eager).

    python benchmarks/compile_bench.py                      # the toy network, 3 widths x 2 frames x 2 crops
    python benchmarks/compile_bench.py --model x3d_xs --crops 64 48 --frames 4 2 --widths 1.0 0.5
    python benchmarks/compile_bench.py --dynamic false      # static shapes: one graph per (configuration, input)
"""

from __future__ import annotations

import argparse
import atexit
import copy
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

if "--warm-cache" not in sys.argv:  # before torch is imported: a cold compile, in a cache directory of its own
    _CACHE = tempfile.mkdtemp(prefix="compile_bench_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import torch
import torch.nn.functional as F

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from torch._dynamo.testing import CompileCounterWithBackend

from mutualnet_video.core import get_space, use_config
from mutualnet_video.engine import SandwichSampler, compile_slimmable, graph_budget, mutual_step


def build(args):
    if args.model == "x3d_xs":
        from mutualnet_video.models import create_slimmable_x3d

        model = create_slimmable_x3d(
            input_clip_length=args.frames[0], input_crop_size=args.crops[0], model_num_class=400,
            width_range=(min(args.widths), max(args.widths)), widths=args.widths, frames=args.frames,
            crops=args.crops, num_subnets=args.num_subnets,
        )
        return model, "slimmable X3D-XS (mutualnet_video.models.create_slimmable_x3d), 400 classes"
    from mutualnet_video.testing import create_toy_slimnet

    model = create_toy_slimnet(channels=args.channels, model_num_class=400, width_range=(min(args.widths),
                               max(args.widths)), widths=args.widths, frames=args.frames, crops=args.crops,
                               num_subnets=args.num_subnets)
    return model, f"toy slimmable net (mutualnet_video.testing, 3 conv layers, {args.channels} channels), 400 classes"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["toy", "x3d_xs"], default="toy")
    parser.add_argument("--channels", type=int, default=32, help="toy network width")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--crops", type=int, nargs="+", default=[64, 48])
    parser.add_argument("--num-subnets", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="sandwiches of the mutual step, run every round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dynamic", choices=["auto", "false", "true"], default="auto",
                        help="torch.compile(dynamic=...): auto = None, dynamo's default")
    parser.add_argument("--warm-cache", action="store_true",
                        help="use inductor's usual on-disk cache (default: an empty one of its own, so the compile "
                             "time is a cold compile's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared 2-core machine two OpenMP threads "
                             "made timings swing 2-10x; 0 keeps torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, desc = build(args)
    space = get_space(model)
    budget = graph_budget(model)
    frames, crop = space.full_clip_shape()
    clip = torch.randn(args.batch, 3, frames, crop, crop)
    med = statistics.median
    dynamic = {"auto": None, "false": False, "true": True}[args.dynamic]
    limit_before = torch._dynamo.config.recompile_limit
    print(f"model: {desc}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}{' (set)' if args.threads else ''}, batch "
          f"{args.batch}, {args.rounds} rounds (after a first pass that compiles), medians; dynamic={dynamic}, "
          f"inductor cache {'warm' if args.warm_cache else 'cold'}")
    print(f"space: widths {list(space.widths)} x frames {list(space.frames)} x crops {list(space.crops)} = "
          f"{budget.eval} configurations; graph budget {budget.total} (training: {budget.channel_patterns} channel "
          f"patterns x {budget.inputs} inputs; evaluation: {budget.eval})")

    # -- inference: every configuration, eval, no_grad ------------------------------------------------
    eager = model.eval()
    counter = CompileCounterWithBackend("inductor")
    compiled = compile_slimmable(eager, backend=counter, dynamic=dynamic)
    print(f"torch._dynamo recompile_limit {limit_before} -> {torch._dynamo.config.recompile_limit}")
    configs = list(space)
    inputs = [space.model_input(clip, cfg) for cfg in configs]

    def infer(net, i):
        def run():
            with use_config(eager, configs[i]), torch.no_grad():
                net(inputs[i])
        return run

    first_eager = sum(timed(infer(eager, i)) for i in range(len(configs)))
    first_compiled = sum(timed(infer(compiled, i)) for i in range(len(configs)))
    graphs_first = counter.frame_count
    for cfg, x in zip(configs, inputs):
        with use_config(eager, cfg), torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x), msg=lambda m, cfg=cfg: f"{cfg.tag}: {m}")
    t_eager, t_comp = [[] for _ in configs], [[] for _ in configs]
    for _ in range(args.rounds):
        for i in range(len(configs)):
            t_eager[i].append(timed(infer(eager, i)))
            t_comp[i].append(timed(infer(compiled, i)))
    print(f"inference (eval, no_grad), {len(configs)} configurations: graphs compiled {graphs_first} in the first "
          f"pass, {counter.frame_count - graphs_first} after; compile time {first_compiled - first_eager:.1f} s; "
          f"outputs equal to eager")
    print(f"  {'config':<16} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15}")
    for cfg, te, tc in zip(configs, t_eager, t_comp):
        print(f"  {cfg.tag:<16} {med(te) * 1e3:9.2f} {med(tc) * 1e3:12.2f} {med(tc) / med(te):15.3f}")
    sum_e, sum_c = sum(med(t) for t in t_eager), sum(med(t) for t in t_comp)
    print(f"  {'all':<16} {sum_e * 1e3:9.2f} {sum_c * 1e3:12.2f} {sum_c / sum_e:15.3f}")

    # -- the mutual step: sandwiches of SandwichSampler, forward + backward + one optimizer step ------
    torch._dynamo.reset()  # a fresh compile for the training graphs
    model_e = copy.deepcopy(model).train()
    model_c = copy.deepcopy(model).train()
    counter = CompileCounterWithBackend("inductor")
    compiled = compile_slimmable(model_c, backend=counter, dynamic=dynamic)
    opt_e = torch.optim.SGD(model_e.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    opt_c = torch.optim.SGD(model_c.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    sampler = SandwichSampler(space, generator=torch.Generator().manual_seed(1))
    steps = [sampler(clip) for _ in range(args.steps)]
    labels = torch.randint(0, 400, (args.batch,))

    def train(net, opt):
        def run():
            for sub_inputs in steps:
                mutual_step(net, sub_inputs, labels, criterion=F.cross_entropy, optimizer=opt)
        return run

    first_e, first_c = timed(train(model_e, opt_e)), timed(train(compiled, opt_c))
    graphs_first = counter.frame_count
    t_e, t_c = [], []
    for _ in range(args.rounds):
        t_e.append(timed(train(model_e, opt_e)))
        t_c.append(timed(train(compiled, opt_c)))
    tags = ", ".join("[" + " ".join(cfg.tag for cfg, _ in s) + "]" for s in steps)
    print(f"mutual step ({args.steps} sandwiches of {args.num_subnets}: {tags}): graphs compiled {graphs_first} in "
          f"the first pass, {counter.frame_count - graphs_first} after; compile time {first_c - first_e:.1f} s")
    print(f"  eager     {med(t_e) / args.steps * 1e3:9.1f} ms / step")
    print(f"  compiled  {med(t_c) / args.steps * 1e3:9.1f} ms / step")
    print(f"ratio compiled / eager: inference (all configurations) = {sum_c / sum_e:.3f}, "
          f"mutual step = {med(t_c) / med(t_e):.3f}")


if __name__ == "__main__":
    main()
