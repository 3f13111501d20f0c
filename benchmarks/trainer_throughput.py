#!/usr/bin/env python
"""Clips/s of the real MutualNet training loop vs a plain full-only loop, side by side.

Both loops read the same Kinetics-format video files (written to a temp dir by the config's
``data.synthetic`` builder, so the decoder really decodes) with the config's DataLoader
settings (``data.num_workers``, ``data.batch_size``; pinned memory on CUDA only, as the
Trainer does):

* ``mutual``: :class:`mutualnet_video.engine.Trainer` built from the config, its default
  hooks included, run by ``Trainer.train()`` inside ``launch(cfg)``: a ``BatchStream`` over
  ``data.train``, the sandwich rule (``mutual.num_subnets`` forward+backward passes, in-place
  distillation), one optimizer step.
* ``plain``: what a PyTorchVideo tutorial loop does with the same model: a second copy at
  its full configuration, a ``torch.utils.data.DataLoader`` over a second instance of the
  same dataset, forward, cross-entropy, backward, one step of the config's optimizer kind
  (plain ``torch.optim.SGD`` / ``AdamW``, config LR).

They alternate in one process: a hook of the Trainer runs a plain window after every
mutual window, so both see the same machine load. Each window starts with ``--settle``
untimed iterations (default: ``num_workers x prefetch_factor + 1``: the batches the idle
loader prefetched while the other loop ran are drained first), then ``--iters`` timed
ones; the first ``--warmup`` rounds are dropped. Reported: medians over rounds of clips/s
(wall time between iterations, the Trainer's hooks included), of the per-round ratio
mutual/plain, and of the data-wait fraction ``sum(data_time) / sum(iteration time)`` (the
Trainer's ``data_time`` and ``step_time``, which includes the wait; the plain loop's time
in ``next(loader)``). The sandwich's FLOPs (``mutualnet_video.evaluation.count_flops`` of
the configurations the Trainer drew) relative to the full configuration's give the
compute-bound expectation of the ratio, ``full / sandwich``.

    python benchmarks/trainer_throughput.py                       # configs/instant/slow_synthetic.yaml
    python benchmarks/trainer_throughput.py --config configs/instant/x3d_synthetic.yaml
    python benchmarks/trainer_throughput.py data.num_workers=2   # any config override
    python benchmarks/trainer_throughput.py --rounds 7 --iters 10 --threads 1 --root /tmp/synthetic8
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

try:
    import mutualnet_video  # noqa: F401  (installed? else from the source checkout below)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mutualnet_video  # noqa: F401
from mutualnet_video.core import SubnetConfig, get_space, use_config
from mutualnet_video.engine import (
    HookBase,
    Trainer,
    build_dataset,
    build_model,
    launch,
    load_config,
    seed_everything,
)
from mutualnet_video.engine.config import validate_config
from mutualnet_video.engine.stream import split_batch, to_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "instant", "slow_synthetic.yaml")


class PlainLoop:
    """The plain full-only loop: DataLoader -> forward -> cross-entropy -> backward -> step."""

    def __init__(self, cfg: dict, device: torch.device, *, amp: bool) -> None:
        dcfg, ocfg, tcfg = cfg["data"], cfg["optim"], cfg["train"]
        self.model = build_model(cfg).to(device).train()
        self.space = get_space(self.model)
        self.full = self.space.full() if self.space is not None else None
        self.dataset = build_dataset(cfg, "train", space=self.space, seed=tcfg["seed"], rank=0, world_size=1,
                                     optional_node=False)
        kwargs: dict[str, Any] = {}
        if dcfg["num_workers"] > 0 and dcfg.get("prefetch_factor") is not None:
            kwargs["prefetch_factor"] = dcfg["prefetch_factor"]
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=dcfg["batch_size"], num_workers=dcfg["num_workers"], drop_last=dcfg["drop_last"],
            pin_memory=device.type == "cuda", collate_fn=getattr(self.dataset, "collate_fn", None), **kwargs)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if ocfg["name"] == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=ocfg["lr"],
                                                                       weight_decay=ocfg["weight_decay"])
        else:
            self.optimizer = torch.optim.SGD(params, lr=ocfg["lr"], momentum=ocfg["momentum"],
                                             weight_decay=ocfg["weight_decay"])
        self.device, self.amp = device, amp
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self.epoch = 0
        self._batches = self._forever()

    def _forever(self):
        while True:  # a new pass (and new workers) per epoch, as `for epoch ...: for batch in loader` does
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            yield from self.loader
            self.epoch += 1

    def step(self) -> tuple[float, float, int]:
        """One iteration: (iteration seconds, data-wait seconds, clips)."""
        start = time.perf_counter()
        video, labels = split_batch(next(self._batches))
        data_time = time.perf_counter() - start
        video, labels = to_device(video, self.device), labels.to(self.device, non_blocking=True)
        x = self.space.model_input(video, self.full) if self.space is not None else video
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(device_type=self.device.type) if self.amp else contextlib.nullcontext()
        with autocast:
            loss = F.cross_entropy(self.model(x), labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        float(loss.detach())  # what a logging loop does; syncs CUDA like the Trainer's finite-loss check
        return time.perf_counter() - start, data_time, labels.shape[0]

    def window(self, settle: int, iters: int) -> dict[str, float]:
        ctx = use_config(self.model, self.full) if self.full is not None else contextlib.nullcontext()
        with ctx:
            for _ in range(settle):
                self.step()
            steps = [self.step() for _ in range(iters)]
        wall = sum(s[0] for s in steps)
        return {"clips_per_s": sum(s[2] for s in steps) / wall, "wait": sum(s[1] for s in steps) / wall,
                "s_per_iter": wall / iters}


class Alternate(HookBase):
    """Registered last on the Trainer: times its iterations, runs a plain window after each
    mutual window (the hook's own time is excluded from the Trainer's iteration times)."""

    def __init__(self, plain: PlainLoop, *, settle: int, iters: int, warmup: int) -> None:
        self.plain, self.settle, self.iters, self.warmup = plain, settle, iters, warmup
        self.per_window = settle + iters
        self.mutual: list[dict[str, float]] = []  # the timed rounds
        self.plain_rows: list[dict[str, float]] = []
        self.warm: dict[str, list[dict[str, float]]] = {"mutual": [], "plain": []}  # the warm-up rounds
        self.tags: list[list[str]] = []  # the configurations of each timed mutual iteration
        self._rows: list[tuple[float, float, float, int]] = []
        self._last = 0.0

    def before_train(self) -> None:
        self._last = time.perf_counter()

    def after_step(self) -> None:
        now = time.perf_counter()
        t = self.trainer
        pos, rnd = (t.iteration - 1) % self.per_window, (t.iteration - 1) // self.per_window
        if pos >= self.settle:
            self._rows.append((now - self._last, t.data_time, t.step_time, t.clips_per_iter))
            if rnd >= self.warmup:
                self.tags.append(list(t.step_losses))
        if pos == self.per_window - 1:
            rows, self._rows = self._rows, []
            wall = sum(r[0] for r in rows)
            mutual = {"clips_per_s": sum(r[3] for r in rows) / wall,
                      "wait": sum(r[1] for r in rows) / sum(r[2] for r in rows), "s_per_iter": wall / len(rows)}
            plain = self.plain.window(self.settle, self.iters)
            if rnd >= self.warmup:
                self.mutual.append(mutual)
                self.plain_rows.append(plain)
            else:
                self.warm["mutual"].append(mutual)
                self.warm["plain"].append(plain)
        self._last = time.perf_counter()


def sandwich_flops(model: torch.nn.Module, tags: list[list[str]]) -> float | None:
    """Mean over iterations of sum(FLOPs of the iteration's configurations) / FLOPs(full)."""
    if not tags:
        return None
    from mutualnet_video.evaluation import count_flops

    cache: dict[str, int] = {}

    def flops(tag: str) -> int:
        if tag not in cache:
            cache[tag] = count_flops(model, SubnetConfig.from_tag(tag))
        return cache[tag]

    full = flops(tags[0][0])
    return statistics.mean(sum(flops(tag) for tag in sandwich) / full for sandwich in tags)


def _prepare(cfg: dict, root: str) -> dict:
    """Point the config's training data (and its data.synthetic writer) at ``root``; no
    validation set, checkpoints or TensorBoard inside the timed run."""
    data = cfg["data"]
    synthetic = data.get("synthetic")
    if synthetic is not None:
        old = synthetic["root"]
        synthetic["root"] = root
        if os.path.normpath(str(data["train"].get("data_path", ""))) == os.path.normpath(old):
            data["train"]["data_path"] = root
    data["val"] = None
    train = cfg["train"]
    train.update(progress=False, tensorboard=False, eval_period=0, resume=False)
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--root", default=None,
                        help="dataset folder (written by data.synthetic if absent; default: a temp dir)")
    parser.add_argument("--train-per-class", type=int, default=None,
                        help="data.synthetic.train_per_class (default: the writer's, 48)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one mutual + one plain window each)")
    parser.add_argument("--iters", type=int, default=8, help="timed iterations per window")
    parser.add_argument("--settle", type=int, default=None,
                        help="untimed iterations at the start of each window (default: workers x prefetch + 1)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="rounds dropped at the start (default: enough to cover the first epoch, plus one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the main process (train.cpu_threads; 0: the config's)")
    parser.add_argument("--flops-iters", type=int, default=8,
                        help="timed mutual iterations whose sandwich FLOPs are counted (0: skip)")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="trainer_throughput.")
    overrides = list(args.overrides)
    if args.threads:
        overrides.append(f"train.cpu_threads={args.threads}")
    if args.train_per_class is not None:
        overrides.append(f"data.synthetic.train_per_class={args.train_per_class}")
    cfg = load_config(args.config, overrides)
    root = os.path.abspath(args.root) if args.root else os.path.join(tmp.name, "data")
    cfg = _prepare(cfg, root)
    cfg["output_dir"] = os.path.join(tmp.name, "output")
    dcfg = cfg["data"]
    workers, prefetch = dcfg["num_workers"], (dcfg.get("prefetch_factor") or 2)
    settle = args.settle if args.settle is not None else (workers * prefetch + 1 if workers else 1)
    per_window = settle + args.iters

    logging.getLogger("mutualnet_video").setLevel(logging.WARNING)
    with launch(cfg) as device:  # threads, seeds, data.synthetic written to root
        amp = cfg["train"]["amp"] and device.type == "cuda"
        plain = PlainLoop(cfg, device, amp=amp)
        num_videos = len(plain.dataset)
        per_epoch = max(1, num_videos // dcfg["batch_size"])
        # Warm-up: the whole first epoch (decoding fills data.train.cache_mb; workers start) and a round.
        warmup = args.warmup if args.warmup is not None else math.ceil(per_epoch / per_window) + 1
        total = (warmup + args.rounds) * per_window
        cfg["optim"].update(max_iters=total, epochs=None, warmup_iters=min(cfg["optim"]["warmup_iters"], total - 1))
        cfg["train"]["checkpoint_period"] = total + 1
        cfg = validate_config(cfg)
        seed_everything(cfg["train"]["seed"])  # the Trainer's model and data as tools/train_net.py builds them
        trainer = Trainer(cfg)
        hook = Alternate(plain, settle=settle, iters=args.iters, warmup=warmup)
        trainer.register_hooks([hook])
        start = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - start
        ratio_flops = sandwich_flops(trainer.model, hook.tags[: args.flops_iters]) if args.flops_iters else None
        threads = torch.get_num_threads()

    med = statistics.median
    m, p = hook.mutual, hook.plain_rows
    result: dict[str, Any] = {
        "mutual_clips_per_s": med(r["clips_per_s"] for r in m),
        "plain_clips_per_s": med(r["clips_per_s"] for r in p),
        "ratio": med(a["clips_per_s"] / b["clips_per_s"] for a, b in zip(m, p)),
        "mutual_wait": med(r["wait"] for r in m),
        "plain_wait": med(r["wait"] for r in p),
        "mutual_s_per_iter": med(r["s_per_iter"] for r in m),
        "plain_s_per_iter": med(r["s_per_iter"] for r in p),
        "sandwich_flops_ratio": ratio_flops,
        "rounds": {"mutual": m, "plain": p}, "warmup_rounds": hook.warm,
        "num_workers": workers, "prefetch_factor": prefetch if workers else None,
        "pin_memory": device.type == "cuda", "threads": threads, "device": str(device),
        "batch_size": dcfg["batch_size"], "num_videos": num_videos, "num_subnets": trainer.space.num_subnets,
    }
    space = trainer.space
    print(f"config: {os.path.relpath(args.config, REPO) if args.config.startswith(REPO) else args.config}"
          f"{' ' + ' '.join(args.overrides) if args.overrides else ''}: {cfg['model']['_target_'].rsplit('.', 1)[-1]},"
          f" batch {dcfg['batch_size']}, sandwich of {space.num_subnets} (full {space.full()}, frames "
          f"{list(space.frames)}, crops {list(space.crops)}), optim {cfg['optim']['name']}")
    print(f"data: {num_videos} Kinetics-format training videos written by data.synthetic "
          f"({(cfg['data']['synthetic'] or {}).get('_target_', 'make_synthetic_kinetics').rsplit('.', 1)[-1]}), "
          f"decoder {dcfg['train'].get('decoder', 'pyav')}, cache_mb {dcfg['train'].get('cache_mb', 0)}; "
          f"DataLoader num_workers {workers}, prefetch_factor {result['prefetch_factor'] or '-'}, "
          f"pin_memory {result['pin_memory']}")
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}, torch threads {threads}, device {device}")
    print(f"{args.rounds} rounds x {args.iters} timed iterations per loop (+{settle} settle iterations per window, "
          f"+{warmup} warm-up rounds: the first epoch of {per_epoch} iterations and one more), mutual and plain windows alternating; medians over rounds; "
          f"{elapsed:.0f} s in all")
    print(f"{'loop':<38}{'clips/s':>9}{'s/iter':>9}{'data wait':>11}")
    print(f"{'mutual: Trainer.train(), sandwich':<38}{result['mutual_clips_per_s']:>9.1f}"
          f"{result['mutual_s_per_iter']:>9.3f}{result['mutual_wait']:>10.1%}")
    print(f"{'plain: DataLoader, full config only':<38}{result['plain_clips_per_s']:>9.1f}"
          f"{result['plain_s_per_iter']:>9.3f}{result['plain_wait']:>10.1%}")
    print(f"ratio mutual/plain clips/s = {result['ratio']:.3f}")
    if ratio_flops is not None:
        print(f"sandwich FLOPs / full-config FLOPs = {ratio_flops:.3f} (count_flops, the configurations of "
              f"{len(hook.tags[: args.flops_iters])} timed iterations) -> compute-bound ratio {1 / ratio_flops:.3f}")
    starved = result["mutual_wait"] > 0.05
    print(f"mutual step data-starved (wait > 5%): {'YES' if starved else 'no'}")
    print("per round clips/s: mutual " + ", ".join(f"{r['clips_per_s']:.1f}" for r in m)
          + "; plain " + ", ".join(f"{r['clips_per_s']:.1f}" for r in p))
    print("per round data wait: mutual " + ", ".join(f"{r['wait']:.1%}" for r in m)
          + "; plain " + ", ".join(f"{r['wait']:.1%}" for r in p))
    if hook.warm["mutual"]:
        print("warm-up rounds (first epoch: decoding fills the cache, workers start) clips/s: mutual "
              + ", ".join(f"{r['clips_per_s']:.1f}" for r in hook.warm["mutual"]) + "; plain "
              + ", ".join(f"{r['clips_per_s']:.1f}" for r in hook.warm["plain"]) + "; data wait: mutual "
              + ", ".join(f"{r['wait']:.1%}" for r in hook.warm["mutual"]) + "; plain "
              + ", ".join(f"{r['wait']:.1%}" for r in hook.warm["plain"]))
    for key in ("mutual_clips_per_s", "plain_clips_per_s", "ratio"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
