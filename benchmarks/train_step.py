#!/usr/bin/env python
"""Cost of one MutualNet training iteration, measured side by side in one run.

For one fixed sandwich (same configurations and inputs in every round) it times, per
round and interleaved:

* ``mutual``: ``mutual_step`` (zero_grad, n forward+backward passes, one optimizer step);
* ``parts``: each sub-network's forward + loss + backward alone (teacher precomputed),
  summed over the sub-networks;
* ``full-only``: ``mutual_step`` with the full configuration only (single-network step).

Reports medians and the ratios ``mutual / sum(parts)`` (goal <= 1.10: the engine adds
little beyond the sub-networks' own work) and ``mutual / full-only``.

``--memory`` also reports the peak memory of one step of each kind: ``mutual``,
``full-only`` and each sub-network's own step (zero_grad, forward, loss, backward,
optimizer step), above a baseline. On the CPU each kind runs in its own fresh process:
baseline = resident memory once model and inputs are built (the same in every process),
peak = the kernel's high-water mark ``VmHWM`` over two steps, reset after a warm-up step
(freed memory the allocator keeps resident counts, as it does in training). On CUDA in
this process: baseline = ``memory_allocated`` after a warm-up step (gradients and
optimizer state), peak = ``max_memory_allocated`` over two steps. The mutual step
keeps one sub-network graph alive at a time, so its peak should be that of its largest
sub-network step, not the sum.

    python benchmarks/train_step.py                       # slimmable X3D-XS if mutualnet_video.models exists
    python benchmarks/train_step.py --model toy           # mutualnet_video.testing's tiny network
    python benchmarks/train_step.py --crops 112 96 80 --batch 2 --rounds 7 --threads 0
    python benchmarks/train_step.py --memory --batch 4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from mutualnet_video.core import distillation_loss, get_space, use_config
from mutualnet_video.engine import SandwichSampler, mutual_step


def build(args):
    if args.model != "toy":
        try:
            from mutualnet_video.models import create_slimmable_x3d
        except ImportError:
            if args.model == "x3d_xs":
                raise
            print("mutualnet_video.models not importable: falling back to mutualnet_video.testing's toy network")
        else:
            model = create_slimmable_x3d(
                input_clip_length=args.frames[0], input_crop_size=args.crops[0], model_num_class=400,
                width_range=(0.5, 1.0), frames=args.frames, crops=args.crops, num_subnets=args.num_subnets,
            )
            return model, "slimmable X3D-XS (mutualnet_video.models.create_slimmable_x3d), 400 classes"
    from mutualnet_video.testing import create_toy_slimnet

    model = create_toy_slimnet(channels=32, model_num_class=400, frames=args.frames, crops=args.crops,
                               num_subnets=args.num_subnets)
    return model, "toy slimmable net (mutualnet_video.testing, 3 conv layers), 400 classes"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["auto", "x3d_xs", "toy"], default="auto")
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 3, 2])
    parser.add_argument("--crops", type=int, nargs="+", default=[160, 128, 112])
    parser.add_argument("--num-subnets", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared 2-core machine two OpenMP threads "
                             "made timings swing 2-10x; 0 keeps torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--memory", action="store_true", help="also report the peak memory of each kind of step")
    parser.add_argument("--memory-only", action="store_true", help="report the peak memory only (no timing)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # one CPU measurement
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, desc = build(args)
    device = torch.device(args.device)
    model.to(device).train()
    space = get_space(model)
    full = space.full()
    video = torch.randn(args.batch, 3, full.frames, full.crop, full.crop, device=device)
    labels = torch.randint(0, 400, (args.batch,), device=device)
    sub_inputs = SandwichSampler(space, generator=torch.Generator().manual_seed(1))(video)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    ref = copy.deepcopy(model)  # parts run on a copy so the optimizer's updates do not matter
    with torch.no_grad(), use_config(ref, full):
        teacher = ref(sub_inputs[0][1])

    def run_mutual():
        mutual_step(model, sub_inputs, labels, criterion=F.cross_entropy, optimizer=optimizer)

    def run_full_only():
        mutual_step(model, sub_inputs[:1], labels, criterion=F.cross_entropy, optimizer=optimizer)

    def part(i):
        cfg, x = sub_inputs[i]

        def run():
            ref.zero_grad(set_to_none=True)
            with use_config(ref, cfg):
                out = ref(x)
                loss = F.cross_entropy(out, labels) if i == 0 else distillation_loss(out, teacher)
                loss.backward()
        return run

    def sub_step(i):  # one sub-network's own step, for memory: as a mutual step of that configuration alone
        cfg, x = sub_inputs[i]
        sub_opt = torch.optim.SGD(ref.parameters(), lr=1e-4, momentum=0.9, nesterov=True)

        def run():
            sub_opt.zero_grad(set_to_none=True)
            with use_config(ref, cfg):
                out = ref(x)
                (F.cross_entropy(out, labels) if i == 0 else distillation_loss(out, teacher)).backward()
            sub_opt.step()
        return run

    steps = {"mutual": run_mutual, "full-only": run_full_only}
    steps.update({f"sub {i} {cfg.tag}": sub_step(i) for i, (cfg, _) in enumerate(sub_inputs)})
    if args.memory_child is not None:  # a fresh process measuring one kind of step
        step = steps[args.memory_child]
        base = _rss_mb("VmRSS")  # model, its copy, inputs: the same in every child
        step()  # warm-up: gradients and optimizer state exist, as in training
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        step()
        step()
        print(json.dumps({"base_mb": base, "peak_mb": _rss_mb("VmHWM")}))
        return
    if args.memory or args.memory_only:
        memory = measure_memory(steps, args, argv, device)
    if args.memory_only:
        print_memory(memory, desc, args)
        return
    parts = [part(i) for i in range(len(sub_inputs))]
    for _ in range(args.warmup):
        run_mutual()
        run_full_only()
        for p in parts:
            p()
    t_mutual, t_full, t_parts = [], [], [[] for _ in parts]
    for _ in range(args.rounds):
        t_mutual.append(timed(run_mutual))
        for i, p in enumerate(parts):
            t_parts[i].append(timed(p))
        t_full.append(timed(run_full_only))
    med = statistics.median
    m_parts = [med(t) for t in t_parts]
    sum_parts = sum(m_parts)
    print(f"model: {desc}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}{' (set)' if args.threads else ''}, batch {args.batch}, "
          f"{args.rounds} rounds (+{args.warmup} warm-up), medians")
    for (cfg, _), t in zip(sub_inputs, m_parts):
        print(f"  part {cfg.tag:<16} fwd+bwd {t * 1e3:9.1f} ms")
    print(f"  sum of parts              {sum_parts * 1e3:9.1f} ms")
    print(f"  mutual_step               {med(t_mutual) * 1e3:9.1f} ms")
    print(f"  full-only step            {med(t_full) * 1e3:9.1f} ms")
    print(f"ratio mutual / sum(parts) = {med(t_mutual) / sum_parts:.3f}  (goal <= 1.10)")
    print(f"ratio mutual / full-only  = {med(t_mutual) / med(t_full):.3f}")
    if args.memory:
        print_memory(memory, desc, args)


def measure_memory(steps, args, argv, device) -> dict[str, tuple[float, float]]:
    """``{step name: (baseline MB, peak MB)}`` of each kind of step."""
    out = {}
    for name, step in steps.items():
        if device.type == "cuda":
            step()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
            step()
            step()
            torch.cuda.synchronize()
            out[name] = (base, torch.cuda.max_memory_allocated() / 2**20)
        else:
            child_argv = [a for a in (sys.argv[1:] if argv is None else argv)
                          if a not in ("--memory", "--memory-only")]
            done = subprocess.run([sys.executable, os.path.abspath(__file__), *child_argv, "--memory-child", name],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            out[name] = (result["base_mb"], result["peak_mb"])
    return out


def print_memory(memory: dict[str, tuple[float, float]], desc: str, args) -> None:
    kind = ("CUDA max_memory_allocated" if args.device.startswith("cuda")
            else "CPU resident memory (VmHWM), one fresh process per kind of step")
    print(f"peak memory of one step, {kind}; model: {desc}, batch {args.batch}")
    print(f"  {'step':<26}{'baseline MB':>12}{'peak MB':>10}{'peak - baseline':>17}")
    for name, (base, peak) in memory.items():
        print(f"  {name:<26}{base:>12.1f}{peak:>10.1f}{peak - base:>17.1f}")
    mutual = memory["mutual"][1] - memory["mutual"][0]
    full = memory["full-only"][1] - memory["full-only"][0]
    subs = {k: v[1] - v[0] for k, v in memory.items() if k.startswith("sub ")}
    largest = max(subs, key=subs.get)
    print(f"ratio mutual / full-only step (above baseline)          = {mutual / full:.3f}")
    print(f"ratio mutual / largest sub-network step ({largest.split()[-1]}) = {mutual / subs[largest]:.3f}")
    print(f"ratio mutual / sum of sub-network steps                 = {mutual / sum(subs.values()):.3f}")


if __name__ == "__main__":
    main()
