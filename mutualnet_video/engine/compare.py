"""The paper's comparison as one command: MutualNet against its baselines, from one config.

:func:`compare_methods` trains, from one validated config (same data, same seeds, the same
number of iterations per trained model unless ``budget="flops"``), every method of
:data:`METHODS` with the existing :class:`~mutualnet_video.engine.Trainer`:

* ``mutual``: the sandwich rule over width x frames x crop (the config as it is);
* ``width_only``: the sandwich rule over widths only, at the full frames and crop (US-Nets):
  same model and space, a sampler that draws widths only;
* ``independent``: one static network per compared configuration (``export_subnet`` of a
  freshly initialised model: plain ``nn`` layers of the sliced size), trained alone on
  ``clip_for_config(video, cfg)``, with its own BN statistics;
* ``single``: the full network alone (``mutual.mode: single``);
* ``boost``: the sandwich rule with a narrow width range (``[boost_min_width, w_max]``, the
  config's frames and crops), the "boost a single network" mode of the paper;
* ``finetune``: the trained ``single`` weights (standing for a stock checkpoint) turned
  adaptive by a short mutual fine-tune (``finetune_fraction`` of the iterations).

Every slimmable model is BN-calibrated (``calibrate_bn``, ``eval.calib_batches`` training
batches, the same clips for every method of a seed) at the configurations it is evaluated
at: all compared configurations for ``mutual``, ``width_only`` and ``finetune``; the full
one for ``single`` and ``boost``; ``independent`` models are evaluated at their own
configuration without calibration. The compared configurations are ``eval.configs`` if
set, else :func:`~mutualnet_video.engine.trainer.default_eval_configs`. Every model is
evaluated on the same validation clips (``data.val``, one view, decoded once and kept in
memory while they fit in ``val_cache_mb``).

Seeds: every model of a seed starts from the weights ``build_model`` gives after
``seed_everything(seed)`` (``independent``: their slice), reads the training set in the same
order and draws its sandwich configurations from ``train.seed + 1`` (the Trainer's seeding);
random augmentations stay identical across methods while nothing else draws from the global
RNG (e.g. no dropout).

Training cost convention: ``train_gflops`` = sum over iterations and sub-networks of the
sub-network's forward GFLOPs (``count_flops``: multiply-adds of conv/linear/matmul, batch
1) x clips in the batch x 3 (forward + backward, the usual estimate). ``budget="flops"``
gives every trained model except ``mutual`` and ``finetune`` the iteration count whose
training GFLOPs equal the ``mutual`` run's of the same seed (capped at
``max_iters_factor`` x the base iterations; the uncapped count is reported).

Each model writes into ``output_dir/<method>/<seed>[/<config tag>]`` (checkpoints,
``metrics.jsonl``, the training ``config.yaml``, ``eval.json``); :func:`write_comparison`
writes ``comparison.json`` / ``.csv`` / ``.png`` / ``.txt``. One process (no torchrun).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core import ConfigSpace, SubnetConfig, get_space, scale_channels, slimmable_modules
from ..evaluation import calibrate_bn, count_flops, count_params, evaluate_configs
from ..evaluation.budgets import save_figure
from ..export import export_subnet
from ..io import atomic_write_text
from .config import ConfigError, build_dataset, build_model, dump_config
from .launch import seed_everything
from .mutual import SandwichSampler, SingleSampler
from .trainer import Trainer, default_eval_configs, eval_batches

__all__ = [
    "METHODS",
    "BUDGETS",
    "RECORD_KEYS",
    "Run",
    "Comparison",
    "compare_methods",
    "compared_configs",
    "method_space",
    "plan_runs",
    "write_comparison",
    "format_accuracy_table",
    "format_training_table",
    "plot_comparison",
]

logger = logging.getLogger(__name__)

#: The methods, in the order they are trained (``finetune`` needs ``single`` first).
METHODS = ("mutual", "width_only", "independent", "single", "boost", "finetune")
BUDGETS = ("iters", "flops")
#: Keys of every record of ``comparison.json`` / columns of ``comparison.csv``.
RECORD_KEYS = ("method", "seed", "config", "width", "frames", "crop", "gflops", "params", "top1", "top5",
               "videos", "calibrated", "iters")
_SANDWICH = ("mutual", "width_only", "boost", "finetune")
_ALL_CONFIGS = ("mutual", "width_only", "finetune")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Run:
    """One model to train: its method, seed, iterations and (``independent``) configuration.

    ``uncapped_iters`` is the count the FLOPs budget asked for before the cap (``None``
    when ``budget="iters"``).
    """

    method: str
    seed: int
    iters: int
    config: SubnetConfig | None = None
    uncapped_iters: int | None = None

    @property
    def tag(self) -> str | None:
        return None if self.config is None else self.config.tag

    @property
    def name(self) -> str:
        return self.method if self.config is None else f"{self.method} {self.config.tag}"

    def output_dir(self, root: str | os.PathLike) -> Path:
        path = Path(root) / self.method / str(self.seed)
        return path if self.config is None else path / self.config.tag


@dataclass
class Comparison:
    """What :func:`compare_methods` returns and :func:`write_comparison` writes.

    ``records``: one dict per method x evaluated configuration x seed (keys
    :data:`RECORD_KEYS`); ``training``: one dict per trained model (method, seed, config,
    iters, base_iters, uncapped_iters, wall_s, train_gflops, output_dir, init_from);
    ``meta``: methods, seeds, compared config tags, budget, base iterations, command,
    config (the validated tree); ``paths``: the files written.
    """

    records: list[dict[str, Any]]
    training: list[dict[str, Any]]
    meta: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


# -- the sub-network samplers of each method ----------------------------------------------
def method_space(method: str, space: ConfigSpace, *, boost_min_width: float = 0.9) -> ConfigSpace | None:
    """The space the sandwich sampler of ``method`` draws from (``None``: no sandwich).

    ``mutual`` / ``finetune``: ``space``; ``width_only``: its width range at the full frames
    and crop only; ``boost``: widths ``[max(boost_min_width, w_min), w_max]`` with the frames
    and crops of ``space``. Every drawn configuration lies in ``space``.
    """
    full = space.full()
    common = dict(num_subnets=space.num_subnets, slowfast_alpha=space.slowfast_alpha)
    if method in ("mutual", "finetune"):
        return space
    if method == "width_only":
        return ConfigSpace(space.width_range, frames=(full.frames,), crops=(full.crop,), **common)
    if method == "boost":
        low = min(max(boost_min_width, space.width_range[0]), full.width)
        return ConfigSpace((low, full.width), frames=space.frames, crops=space.crops, **common)
    if method in ("single", "independent"):
        return None
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _sandwich_generator(seed: int) -> torch.Generator:
    """The sandwich generator of a run: the Trainer's default seeding (``train.seed + 1``)."""
    return torch.Generator().manual_seed(seed + 1)


class _FixedSampler:
    """``independent``: the static network's input at its one configuration, ``[(None, input)]``."""

    def __init__(self, subnet: SubnetConfig, space: ConfigSpace) -> None:
        self.subnet, self.space = subnet, space

    def __call__(self, video: torch.Tensor) -> list[tuple[None, Any]]:
        return [(None, self.space.model_input(video, self.subnet))]


# -- FLOPs, memoised by what decides them ---------------------------------------------------
class _FlopsTable:
    """Forward FLOPs (``count_flops``, batch 1) of a slimmable model per configuration.

    A count depends on the frames, the crop and the active channels of every slim layer,
    which are ``scale_channels(c, width)`` of the model's slimmed channel counts: counts
    are memoised by that key, so the continuous widths of the sandwich cost one trace
    per distinct channel layout. Usable as ``flops_fn(model, cfg)`` of
    :func:`~mutualnet_video.evaluation.evaluate_configs` (the model argument is ignored:
    every method shares the architecture).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._counts, self._exact = _slim_channel_counts(model)
        self._flops: dict[tuple, int] = {}

    def key(self, cfg: SubnetConfig) -> tuple:
        if self._exact:
            return (cfg,)
        return (cfg.frames, cfg.crop, tuple(scale_channels(c, cfg.width) for c in self._counts))

    def flops(self, cfg: SubnetConfig) -> int:
        key = self.key(cfg)
        if key not in self._flops:
            self._flops[key] = count_flops(self.model, cfg)
        return self._flops[key]

    def __call__(self, model: nn.Module, cfg: SubnetConfig) -> int:
        return self.flops(cfg)


def _slim_channel_counts(model: nn.Module) -> tuple[list[int], bool]:
    """The channel counts the slim layers scale, and whether an unknown slim layer forces exact keys."""
    counts: set[int] = set()
    exact = False
    for _, module in slimmable_modules(model):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue  # BN channels follow their input
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            if module.slim_out:
                counts.add(module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features)
            counts.update(c for c, slim in (module.in_splits or ()) if slim)
        else:
            exact = True
    return sorted(counts), exact


def _sandwich_cost(space: ConfigSpace, seed: int, *, flops_fn: Callable[[SubnetConfig], int],
                   clips: int) -> Iterator[float]:
    """Training GFLOPs of each iteration of a sandwich run, replaying its sampler's draws."""
    generator = _sandwich_generator(seed)
    while True:
        yield 3 * clips * sum(flops_fn(cfg) for cfg in space.sandwich(generator)) / 1e9


# -- planning -------------------------------------------------------------------------------
def plan_runs(
    *,
    space: ConfigSpace,
    configs: Sequence[SubnetConfig],
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = (0,),
    base_iters: int,
    clips_per_iter: int,
    flops_fn: Callable[[SubnetConfig], int],
    budget: str = "iters",
    finetune_fraction: float = 0.25,
    boost_min_width: float = 0.9,
    max_iters_factor: float = 4.0,
) -> list[Run]:
    """The models to train, in order (per seed: :data:`METHODS` order, ``independent``
    once per configuration of ``configs``).

    ``budget="iters"``: ``base_iters`` each (``finetune``: ``round(finetune_fraction *
    base_iters)``, at least 1). ``budget="flops"``: each model other than ``mutual`` and
    ``finetune`` gets the count whose training GFLOPs (``3 x clips_per_iter x`` forward
    FLOPs of its sub-networks, ``flops_fn(cfg)``; random sandwich draws replayed from the
    run's own generator) first reach the ``mutual`` run's of the same seed, capped at
    ``ceil(max_iters_factor * base_iters)``.
    """
    methods = _check_methods(methods)
    if budget not in BUDGETS:
        raise ConfigError(f"budget: must be one of {', '.join(BUDGETS)}, got {budget!r}")
    cap = max(1, math.ceil(max_iters_factor * base_iters))
    runs: list[Run] = []
    for seed in seeds:
        reference = None
        if budget == "flops":
            costs = _sandwich_cost(space, seed, flops_fn=flops_fn, clips=clips_per_iter)
            reference = sum(next(costs) for _ in range(base_iters))
        for method in methods:
            targets = list(configs) if method == "independent" else [None]
            for cfg in targets:
                iters, uncapped = base_iters, None
                if method == "finetune":
                    iters = max(1, round(finetune_fraction * base_iters))
                elif reference is not None and method != "mutual":
                    uncapped = _iters_for_budget(method, cfg, space=space, seed=seed, reference=reference, cap=cap,
                                                 flops_fn=flops_fn, clips=clips_per_iter,
                                                 boost_min_width=boost_min_width)
                    iters = max(1, min(uncapped, cap))
                runs.append(Run(method, seed, iters, cfg, uncapped))
    return runs


def _iters_for_budget(method: str, cfg: SubnetConfig | None, *, space: ConfigSpace, seed: int, reference: float,
                      cap: int, flops_fn: Callable[[SubnetConfig], int], clips: int, boost_min_width: float) -> int:
    """Iterations whose training GFLOPs are nearest to ``reference`` (sandwich draws replayed,
    at most ``cap + 1``)."""
    sampler_space = method_space(method, space, boost_min_width=boost_min_width)
    if sampler_space is None:
        per_iter = 3 * clips * flops_fn(cfg if cfg is not None else space.full()) / 1e9
        return max(1, round(reference / per_iter))
    previous, total, iters = 0.0, 0.0, 0
    costs = _sandwich_cost(sampler_space, seed, flops_fn=flops_fn, clips=clips)
    while total < reference and iters <= cap:
        previous, total = total, total + next(costs)
        iters += 1
    nearer_before = iters > 1 and reference - previous < total - reference
    return iters - 1 if nearer_before else iters


def _check_methods(methods: Sequence[str] | str) -> list[str]:
    """``methods`` in training order; ``single`` added for ``finetune`` (with a log line)."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ConfigError(f"methods: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                          f"choose from {', '.join(METHODS)}")
    if "finetune" in names and "single" not in names:
        logger.info("methods: finetune starts from the single run's weights, so single is trained too")
        names.append("single")
    return [m for m in METHODS if m in names]


def compared_configs(cfg: Mapping[str, Any], space: ConfigSpace,
                     configs: Sequence[SubnetConfig] | None = None) -> list[SubnetConfig]:
    """``configs``, else ``eval.configs`` tags, else ``default_eval_configs(space)``;
    deduplicated and validated against ``space`` (``ConfigError`` naming the bad one)."""
    if configs is None:
        tags = cfg["eval"]["configs"]
        try:
            configs = [SubnetConfig.from_tag(t) for t in tags] if tags else default_eval_configs(space)
        except ValueError as exc:
            raise ConfigError(f"eval.configs: {exc}") from None
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise ConfigError("eval.configs: no configuration to compare")
    for c in configs:
        try:
            space.validate(c)
        except ValueError as exc:
            raise ConfigError(f"eval.configs: {c.tag}: {exc}") from None
    return configs


# -- data ---------------------------------------------------------------------------------
def _build_split(cfg: Mapping[str, Any], split: str, *, space: ConfigSpace, seed: int) -> Dataset:
    """``data.<split>`` built as the Trainer builds it on one process; required here."""
    dataset = build_dataset(cfg, split, space=space, seed=seed)
    if dataset is None:
        raise ConfigError(f"data.{split}: required by the comparison (a dataset _target_ node)")
    return dataset


def _base_iters(cfg: Mapping[str, Any], dataset: Dataset) -> int:
    """``optim.max_iters``, or ``optim.epochs`` x batches per epoch (one process)."""
    optim, data = cfg["optim"], cfg["data"]
    if optim["max_iters"] is not None:
        return optim["max_iters"]
    if not hasattr(dataset, "__len__"):
        raise ConfigError("optim.epochs: the training dataset has no length; set optim.max_iters instead")
    n, batch = len(dataset), data["batch_size"]
    per_epoch = n // batch if data["drop_last"] else math.ceil(n / batch)
    if per_epoch == 0:
        raise ConfigError(f"data.batch_size: {batch} is larger than the training set ({n})")
    return per_epoch * optim["epochs"]


class _ValBatches:
    """The validation batches as the evaluator reads them, decoded once and kept on the
    CPU while they fit in ``max_bytes`` (else decoded again at each pass)."""

    def __init__(self, dataset: Dataset, *, batch_size: int, num_workers: int, max_bytes: int) -> None:
        self.dataset, self.batch_size, self.num_workers, self.max_bytes = dataset, batch_size, num_workers, max_bytes
        self._cache: list[dict[str, Any]] | None = None
        self._streaming = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._cache is not None:
            yield from self._cache
            return
        loader = DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers)
        kept: list[dict[str, Any]] | None = None if self._streaming else []
        size = 0
        for batch in eval_batches(loader, torch.device("cpu")):
            if kept is not None:
                size += sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))
                if size > self.max_bytes:
                    kept, self._streaming = None, True
                    logger.info("validation set over %d MB: decoded again for every model", self.max_bytes >> 20)
                else:
                    kept.append(batch)
            yield batch
        if kept is not None:  # a complete pass (not cut short by eval.max_batches)
            self._cache = kept


# -- progress -------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _Progress:
    """Log lines per model (``[i/n] method [tag] seed s: iter k/N ... ETA``) and the overall ETA.

    The work of a run is its iterations x sub-networks per iteration; the overall ETA
    extrapolates the wall time per unit of work so far (evaluation included).
    """

    def __init__(self, runs: Sequence[Run], *, subnets: Callable[[Run], int], log_period: int) -> None:
        self.runs = list(runs)
        self.work = [r.iters * subnets(r) for r in self.runs]
        self.log_period = log_period
        self.start = time.perf_counter()
        self.done_work = 0.0
        self.index = 0
        self.run_start = self.start

    def prefix(self, run: Run) -> str:
        return f"[{self.index + 1}/{len(self.runs)}] {run.name} seed {run.seed}"

    def begin(self, index: int) -> None:
        self.index, self.run_start = index, time.perf_counter()

    def eta_all(self, current_done: float) -> str:
        done = self.done_work + current_done
        if done <= 0:
            return "?"
        rate = (time.perf_counter() - self.start) / done
        return _duration(rate * (sum(self.work) - done))

    def iteration(self, run: Run, done: int, loss: float | None) -> None:
        period = max(self.log_period, math.ceil(run.iters / 10))
        if done == 0 or done % period:
            return
        elapsed = time.perf_counter() - self.run_start
        eta = elapsed / done * (run.iters - done)
        loss_text = "" if loss is None else f"  loss {loss:.4f}"
        logger.info("%s: iter %d/%d%s  %.3f s/it  ETA %s (all: %s)", self.prefix(run), done, run.iters, loss_text,
                    elapsed / done, _duration(eta), self.eta_all(self.work[self.index] * done / run.iters))

    def finish(self, run: Run, *, wall: float, summary: str) -> None:
        self.done_work += self.work[self.index]
        left = "done" if self.index + 1 == len(self.runs) else f"overall ETA {self.eta_all(0.0)}"
        logger.info("%s: finished in %s (training %s); %s; %s", self.prefix(run),
                    _duration(time.perf_counter() - self.run_start), _duration(wall), summary, left)


class _Meter:
    """The run's sampler, wrapped: counts iterations, the clips of each sub-network
    (by FLOPs key) and the last full-configuration loss, and logs progress."""

    def __init__(self, sampler: Callable, *, run: Run, table: _FlopsTable, progress: _Progress) -> None:
        self.sampler, self.run, self.table, self.progress = sampler, run, table, progress
        self.iterations = 0
        self.clips: Counter = Counter()
        self.configs: dict[tuple, SubnetConfig] = {}
        self._loss: torch.Tensor | None = None

    def __call__(self, video: Any) -> Any:
        self.progress.iteration(self.run, self.iterations, None if self._loss is None else float(self._loss))
        pairs = self.sampler(video)
        clips = len(video[0] if isinstance(video, list | tuple) else video)
        for cfg, _ in pairs:
            cfg = self.run.config if cfg is None else cfg
            key = self.table.key(cfg)
            self.configs.setdefault(key, cfg)
            self.clips[key] += clips
        self.iterations += 1
        return pairs

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets)  # the Trainer's default criterion
        self._loss = loss.detach()
        return loss

    def train_gflops(self) -> float:
        """``3 x sum(clips x forward FLOPs)`` over every sub-network run, in GFLOPs."""
        return 3 * sum(n * self.table.flops(self.configs[k]) for k, n in self.clips.items()) / 1e9

    def state_dict(self) -> dict[str, Any]:
        inner = self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {}
        return {"sampler": inner, "iterations": self.iterations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        self.iterations = int(state["iterations"])


# -- one run ------------------------------------------------------------------------------
@dataclass
class _Context:
    cfg: Mapping[str, Any]
    output_dir: Path
    space: ConfigSpace
    configs: list[SubnetConfig]
    base_iters: int
    table: _FlopsTable
    train_sets: dict[int, Dataset]
    val: _ValBatches
    progress: _Progress
    boost_min_width: float
    on_train_start: Callable[[Run, Trainer], None] | None
    calibration: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    single_weights: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


def _run_config(ctx: _Context, run: Run) -> dict[str, Any]:
    """The Trainer config of ``run``: its output folder, seed, iterations (warm-up scaled),
    mode; no periodic validation, no resume, no SyncBN (one process) and no ``data.val``
    (the comparison evaluates)."""
    cfg = copy.deepcopy(dict(ctx.cfg))
    cfg["output_dir"] = str(run.output_dir(ctx.output_dir))
    cfg["train"].update(seed=run.seed, eval_period=0, resume=False, progress=False, sync_bn=False)
    warmup = cfg["optim"]["warmup_iters"]
    cfg["optim"].update(max_iters=run.iters, epochs=None,
                        warmup_iters=min(round(warmup * run.iters / ctx.base_iters), run.iters - 1))
    cfg["mutual"]["mode"] = "mutual" if run.method in _SANDWICH else "single"
    cfg["data"]["val"] = None
    return cfg


def _initial_model(ctx: _Context, run: Run, run_cfg: Mapping[str, Any]) -> nn.Module:
    """The model before training, built after ``seed_everything(seed)`` as the Trainer does
    (the same initial weights for every method of a seed)."""
    seed_everything(run.seed)
    model = build_model(run_cfg)
    if run.method == "finetune":
        model.load_state_dict(ctx.single_weights[run.seed], strict=True)
    elif run.method == "independent":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a fresh model has no calibrated BN statistics
            model = export_subnet(model, run.config)
        model.train()
    return model


def _sampler(ctx: _Context, run: Run) -> Callable:
    if run.method == "independent":
        return _FixedSampler(run.config, ctx.space)
    if run.method == "single":
        return SingleSampler(ctx.space)
    space = method_space(run.method, ctx.space, boost_min_width=ctx.boost_min_width)
    return SandwichSampler(space, generator=_sandwich_generator(run.seed))


def _evaluated_configs(ctx: _Context, run: Run) -> list[SubnetConfig]:
    if run.method in _ALL_CONFIGS:
        return list(ctx.configs)
    return [run.config] if run.method == "independent" else [ctx.space.full()]


def _execute(ctx: _Context, run: Run, index: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``run`` with the Trainer, evaluate it; its records and its training entry."""
    ctx.progress.begin(index)
    run_cfg = _run_config(ctx, run)
    meter = _Meter(_sampler(ctx, run), run=run, table=ctx.table, progress=ctx.progress)
    model = _initial_model(ctx, run, run_cfg)
    seed_everything(run.seed)  # each run starts from the RNG state of a fresh launch with its seed
    trainer = Trainer(run_cfg, model=model, train_dataset=ctx.train_sets[run.seed], sampler=meter,
                      criterion=meter.criterion)
    if ctx.on_train_start is not None:
        ctx.on_train_start(run, trainer)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    if run.method == "single":
        ctx.single_weights[run.seed] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    records = _evaluate_run(ctx, run, trainer)
    for record in records:
        record["iters"] = meter.iterations
    training = {
        "method": run.method, "seed": run.seed, "config": run.tag, "iters": meter.iterations,
        "base_iters": ctx.base_iters, "uncapped_iters": run.uncapped_iters, "wall_s": round(wall, 3),
        "train_gflops": meter.train_gflops(), "output_dir": run_cfg["output_dir"],
        "init_from": "single" if run.method == "finetune" else None,
    }
    atomic_write_text(Path(run_cfg["output_dir"]) / "eval.json",
                      json.dumps({"records": records, "training": training}, indent=2) + "\n")
    summary = ", ".join(f"{r['config']} top1 {r['top1']:.2f}" for r in records[:3]) + (" ..." if len(records) > 3 else "")
    ctx.progress.finish(run, wall=wall, summary=f"{training['train_gflops']:.4g} train GFLOPs; {summary}")
    return records, training


def _evaluate_run(ctx: _Context, run: Run, trainer: Trainer) -> list[dict[str, Any]]:
    configs = _evaluated_configs(ctx, run)
    max_batches = ctx.cfg["eval"]["max_batches"]
    if run.method == "independent":  # the static network, on its configuration's input
        params = sum(p.numel() for p in trainer.model.parameters())
        (r,) = evaluate_configs(trainer.model, ctx.val, [run.config], views=("1x1",), device=trainer.device,
                                progress=False, flops_fn=lambda _model, cfg: ctx.table.flops(cfg),
                                params_fn=lambda _model, _cfg: params, max_batches=max_batches,
                                input_fn=lambda batch, cfg: ctx.space.model_input(batch["video"].to(trainer.device),
                                                                                   cfg))
        return [_record(run, run.config, gflops=r.gflops_per_view, params=params, calibrated=False, top1=r.top1,
                        top5=r.top5, videos=r.num_videos)]
    num = ctx.cfg["eval"]["calib_batches"]
    if run.seed not in ctx.calibration:  # the same clips for every method of a seed
        ctx.calibration[run.seed] = [b.cpu() for b in trainer.calibration_batches(num)]
    calibrate_bn(trainer.model, ctx.calibration[run.seed], configs, num_batches=num, device=trainer.device)
    results = evaluate_configs(trainer.model, ctx.val, configs, views=("1x1",), device=trainer.device,
                               progress=False, flops_fn=ctx.table, params_fn=count_params, require_calibrated=True,
                               max_batches=max_batches)
    return [_record(run, r.config, gflops=r.gflops_per_view, params=r.params, calibrated=True, top1=r.top1,
                    top5=r.top5, videos=r.num_videos) for r in results]


def _record(run: Run, cfg: SubnetConfig, *, gflops: float, params: int, calibrated: bool, top1: float,
            top5: float, videos: int) -> dict[str, Any]:
    return {"method": run.method, "seed": run.seed, "config": cfg.tag, "width": cfg.width, "frames": cfg.frames,
            "crop": cfg.crop, "gflops": gflops, "params": int(params), "top1": float(top1), "top5": float(top5),
            "videos": int(videos), "calibrated": calibrated, "iters": None}


# -- the comparison -------------------------------------------------------------------------
def compare_methods(
    cfg: Mapping[str, Any],
    *,
    output_dir: str | os.PathLike,
    seeds: Sequence[int] | None = None,
    methods: Sequence[str] | str = METHODS,
    budget: str = "iters",
    configs: Sequence[SubnetConfig] | None = None,
    finetune_fraction: float = 0.25,
    boost_min_width: float = 0.9,
    max_iters_factor: float = 4.0,
    val_cache_mb: int = 2048,
    command: str | None = None,
    config_file: str | None = None,
    on_train_start: Callable[[Run, Trainer], None] | None = None,
) -> Comparison:
    """Train and evaluate every method of ``methods`` on ``cfg``'s data; write the results.

    Run it inside :func:`~mutualnet_video.engine.launch` (threads, ``data.synthetic``), as
    ``tools/compare_methods.py`` does; every run is seeded with its own seed.

    Args:
        cfg: a validated config (:func:`~mutualnet_video.engine.config.load_config`) whose
            model carries a ConfigSpace and that has ``data.train`` and ``data.val``.
        output_dir: the comparison folder (one subfolder per trained model, see the module doc).
        seeds: training seeds (default: ``train.seed``); every method is trained once per seed.
        methods: names from :data:`METHODS` (a list or ``"a,b"``); ``finetune`` adds ``single``.
        budget: ``"iters"`` (the same iterations per model) or ``"flops"`` (see :func:`plan_runs`).
        configs: the compared configurations (default: ``eval.configs``, else full / middle / smallest).
        finetune_fraction: ``finetune`` iterations as a fraction of the base iterations.
        boost_min_width: the lower end of ``boost``'s width range.
        max_iters_factor: cap of the FLOPs budget, in multiples of the base iterations.
        val_cache_mb: keep the decoded validation batches in memory up to this size.
        command / config_file: recorded in ``comparison.json``.
        on_train_start: ``fn(run, trainer)`` called before each model trains (tests, hooks).

    Returns:
        The :class:`Comparison`, already written by :func:`write_comparison`.

    Raises:
        ConfigError: a bad argument, config value or compared configuration (before any
            training); ``FloatingPointError`` from a diverging run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("compare_methods runs on one process: start it without torchrun")
    methods = _check_methods(methods)
    seeds = [cfg["train"]["seed"]] if seeds is None else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: must be distinct non-negative ints, got {seeds!r}")
    if not 0 < finetune_fraction <= 1 or max_iters_factor < 1:
        raise ConfigError(f"finetune_fraction must be in (0, 1] and max_iters_factor >= 1, got "
                          f"{finetune_fraction!r} and {max_iters_factor!r}")
    counting_model = build_model({**cfg, "model": {**cfg["model"], "weights": None}})
    space = get_space(counting_model)
    if space is None:
        raise ConfigError(f"model._target_: {cfg['model']['_target_']} has no ConfigSpace; the comparison needs a "
                          "slimmable model (a mutualnet_video.models builder)")
    configs = compared_configs(cfg, space, configs)
    if cfg["data"].get("val") is None:
        raise ConfigError("data.val: required by the comparison (a dataset _target_ node)")

    train_sets = {seed: _build_split(cfg, "train", space=space, seed=seed) for seed in seeds}
    val_set = _build_split(cfg, "val", space=space, seed=cfg["train"]["seed"])
    base = _base_iters(cfg, train_sets[seeds[0]])
    table = _FlopsTable(counting_model)
    runs = plan_runs(space=space, configs=configs, methods=methods, seeds=seeds, base_iters=base,
                     clips_per_iter=cfg["data"]["batch_size"], flops_fn=table.flops, budget=budget,
                     finetune_fraction=finetune_fraction, boost_min_width=boost_min_width,
                     max_iters_factor=max_iters_factor)
    progress = _Progress(runs, subnets=lambda r: space.num_subnets if r.method in _SANDWICH else 1,
                         log_period=cfg["train"]["log_period"])
    val = _ValBatches(val_set, batch_size=cfg["data"]["val_batch_size"] or cfg["data"]["batch_size"],
                      num_workers=cfg["data"]["num_workers"], max_bytes=val_cache_mb << 20)
    ctx = _Context(cfg=cfg, output_dir=Path(output_dir), space=space, configs=configs, base_iters=base, table=table,
                   train_sets=train_sets, val=val, progress=progress, boost_min_width=boost_min_width,
                   on_train_start=on_train_start)
    logger.info("comparing %s on %d configurations (%s), seeds %s, budget %s: %d models to train",
                ", ".join(methods), len(configs), ", ".join(c.tag for c in configs), seeds, budget, len(runs))
    records: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    for index, run in enumerate(runs):
        run_records, run_training = _execute(ctx, run, index)
        records += run_records
        training.append(run_training)
    meta = {"methods": methods, "seeds": seeds, "configs": [c.tag for c in configs], "budget": budget,
            "base_iters": base, "clips_per_iter": cfg["data"]["batch_size"], "finetune_fraction": finetune_fraction,
            "boost_min_width": boost_min_width, "max_iters_factor": max_iters_factor, "command": command,
            "config_file": config_file, "config": json.loads(json.dumps(_yaml_tree(cfg)))}
    comparison = Comparison(records=records, training=training, meta=meta)
    comparison.paths = write_comparison(comparison, output_dir)
    return comparison


def _yaml_tree(cfg: Mapping[str, Any]) -> Any:
    import yaml

    return yaml.safe_load(dump_config(cfg))


# -- outputs --------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _grouped(records: Sequence[Mapping[str, Any]], key: str = "top1") -> dict[tuple[str, str], list[float]]:
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        groups.setdefault((r["method"], r["config"]), []).append(float(r[key]))
    return groups


def _methods_of(records: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {r["method"] for r in records}
    return [m for m in METHODS if m in present]


def format_accuracy_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Top-1 (%) per configuration (rows, most GFLOPs first) and method (columns);
    ``mean±std`` over seeds when there is more than one; ``-`` where not evaluated."""
    methods = _methods_of(records)
    groups = _grouped(records)
    gflops = {r["config"]: r["gflops"] for r in records}
    seeds = len({r["seed"] for r in records})
    width = max([11] + [len(m) + 1 for m in methods])
    lines = [f"top-1 (%), one view, {'mean±std over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}",
             f"{'config':<14} {'GFLOPs':>9}" + "".join(f"{m:>{width}}" for m in methods)]
    for tag in sorted(gflops, key=lambda t: -gflops[t]):
        cells = []
        for m in methods:
            values = groups.get((m, tag))
            if not values:
                cells.append("-")
                continue
            mean, std = _mean_std(values)
            cells.append(f"{mean:.2f}" if std is None else f"{mean:.1f}±{std:.1f}")
        lines.append(f"{tag:<14} {gflops[tag]:>9.4f}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def format_training_table(training: Sequence[Mapping[str, Any]]) -> str:
    """Training cost per method (models, iterations, wall time and training GFLOPs per seed,
    summed over the method's models), and mutual (one run) vs independent (K runs)."""
    seeds = max(1, len({t["seed"] for t in training}))
    per: dict[str, dict[str, float]] = {}
    for t in training:
        row = per.setdefault(t["method"], {"models": 0, "iters": 0, "wall_s": 0.0, "train_gflops": 0.0})
        for key in ("iters", "wall_s", "train_gflops"):
            row[key] += t[key] / seeds
        row["models"] += 1 / seeds
    lines = [f"training cost per seed{' (mean over ' + str(seeds) + ' seeds)' if seeds > 1 else ''}",
             f"{'method':<12} {'models':>6} {'iters':>8} {'wall (s)':>9} {'train GFLOPs':>13}"]
    for method in [m for m in METHODS if m in per]:
        row = per[method]
        lines.append(f"{method:<12} {row['models']:>6.0f} {row['iters']:>8.0f} {row['wall_s']:>9.1f} "
                     f"{row['train_gflops']:>13.4g}")
    if "mutual" in per and "independent" in per:
        m, ind = per["mutual"], per["independent"]
        lines.append(f"mutual (1 run) vs independent ({ind['models']:.0f} runs): wall {m['wall_s']:.1f} s vs "
                     f"{ind['wall_s']:.1f} s (independent/mutual {ind['wall_s'] / max(m['wall_s'], 1e-9):.2f}x), "
                     f"training GFLOPs {m['train_gflops']:.4g} vs {ind['train_gflops']:.4g} "
                     f"({ind['train_gflops'] / max(m['train_gflops'], 1e-12):.2f}x)")
    if "finetune" in per:
        lines.append("finetune: the fine-tune only; it starts from the single run (add its cost)")
    capped = [t for t in training if t.get("uncapped_iters") is not None and t["uncapped_iters"] > t["iters"]]
    if capped:
        lines.append("FLOPs budget capped at " + ", ".join(
            f"{t['iters']} iters for {t['method']}{' ' + t['config'] if t['config'] else ''} seed {t['seed']} "
            f"(asked {t['uncapped_iters']})" for t in capped))
    return "\n".join(lines)


_STYLE = {"mutual": ("crimson", "o"), "width_only": ("tab:blue", "s"), "independent": ("tab:gray", "D"),
          "single": ("black", "*"), "boost": ("tab:orange", "P"), "finetune": ("tab:green", "^")}


def plot_comparison(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Top-1 against GFLOPs (log x), one curve per method, error bars over seeds (PNG, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure or backend state
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if not records:
        raise ValueError("no record to plot")
    groups = _grouped(records)
    gflops = {r["config"]: r["gflops"] for r in records}
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method in _methods_of(records):
        tags = sorted((t for m, t in groups if m == method), key=lambda t: gflops[t])
        stats = [_mean_std(groups[method, t]) for t in tags]
        color, marker = _STYLE[method]
        ax.errorbar([gflops[t] for t in tags], [s[0] for s in stats], yerr=[s[1] or 0.0 for s in stats],
                    color=color, marker=marker, markersize=9 if marker == "*" else 6, capsize=3,
                    linestyle="-" if len(tags) > 1 else "none", linewidth=2 if method == "mutual" else 1.3,
                    label=method, zorder=3 if method == "mutual" else 2)
    ax.set_xscale("log")
    # Ticks at the evaluated configurations' costs (log-scale minor labels overlap on short spans).
    ax.set_xticks(sorted(set(gflops.values())))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("GFLOPs per clip")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "top-1 vs GFLOPs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_comparison(comparison: Comparison, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``comparison.json`` (``{"version", "records", "training", **meta}``),
    ``comparison.csv`` (the records, :data:`RECORD_KEYS`), ``comparison.txt`` (both
    tables) and ``comparison.png`` into ``output_dir``; returns the paths by suffix."""
    out = Path(output_dir)
    paths = {s: out / f"comparison.{s}" for s in ("json", "csv", "txt", "png")}
    payload = {"version": _FORMAT_VERSION, "records": comparison.records, "training": comparison.training,
               **comparison.meta}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RECORD_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in comparison.records:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in RECORD_KEYS})
    atomic_write_text(paths["csv"], buffer.getvalue())
    text = format_accuracy_table(comparison.records) + "\n\n" + format_training_table(comparison.training) + "\n"
    atomic_write_text(paths["txt"], text)
    plot_comparison(comparison.records, paths["png"])
    return paths

