"""The MutualNet trainer: a minimal loop with hooks, and the config-driven trainer.

* :class:`TrainerBase` is the loop (detectron2's ``SimpleTrainer``): ``run_step`` reads one
  batch from the stream, builds the sandwich inputs with the sampler and runs
  :func:`~mutualnet_video.engine.mutual.mutual_step` (one optimizer step); hooks
  (:mod:`mutualnet_video.engine.hooks`) do everything around it.
* :class:`Trainer` builds the pieces from a validated config (model, data stream,
  optimizer, LR schedule, sampler, checkpointer, metrics writer) and registers the
  default hooks: metrics, checkpoints, periodic validation, the NaN guard. Every piece
  can be injected (``model=``, ``train_dataset=``, ``sampler=``, ``criterion=``) so the
  loop runs on tiny in-memory data in tests.

The Trainer changes no process-global state: the thread count, the process group, the
seeds and the synthetic dataset are set up once per process, before it is built, by
:func:`mutualnet_video.engine.launch` (the tools call it). The one exception is opt-in:
``train.compile: true`` raises dynamo's recompile limits to the model's graph budget
(:func:`~mutualnet_video.engine.compile_slimmable`, logged).

Reproducibility: the seed is the same on every rank (the data is sharded, the sandwich
configurations are shared by the ranks). A checkpoint holds the model, optimizer,
LR scheduler (and GradScaler), the iteration, the data position (epoch, batch), the RNG
states (torch, CUDA, numpy, python) and the sandwich sampler's generator; resuming an
interrupted CPU run reproduces the uninterrupted run's weights exactly (map-style
datasets are re-positioned by index; iterable datasets are replayed up to the position
from the RNG states their epoch started with). One caveat: a map-style dataset whose
transforms draw random numbers inside DataLoader workers (``num_workers > 0``) sees its
remaining batches on other workers after a mid-epoch resume, so its augmentations differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import CheckpointError, CorruptCheckpointError, MutualCheckpointer, load_checkpoint_file
from ..core import SubnetConfig, get_space, use_config
from ..evaluation import BudgetRecord, calibrate_bn, evaluate_configs, format_table
from ..io import atomic_write_text
from .compile import compile_slimmable
from .config import ConfigError, build_dataset, build_model, dump_config, instantiate
from .distributed import all_reduce_sum, convert_sync_bn, get_rank, get_world_size, resolve_device
from .hooks import (
    RANK_DUMP_ENV,
    DataStats,
    HookBase,
    MetricsLogger,
    NanGuard,
    PeriodicCheckpointer,
    PeriodicValidation,
    RankDump,
)
from .launch import check_writable
from .metrics import MetricsWriter
from .mutual import SandwichSampler, SingleSampler, mutual_step
from .optim import build_lr_scheduler, build_optimizer
from .stream import (
    BatchStream,
    GeneratorState,
    capture_rng_state,
    is_map_style,
    restore_rng_state,
    split_batch,
    to_device,
)
from .task import ClassificationTask

__all__ = ["TrainerBase", "Trainer", "final_evaluation", "default_eval_configs", "eval_batches"]

logger = logging.getLogger(__name__)


class TrainerBase:
    """The training loop: ``max_iters`` calls of :meth:`run_step`, with hooks around them.

    Args:
        model: the (slimmable) model; ``train_model`` (default ``model``) is what runs
            forward, e.g. its DDP wrapper or its ``torch.compile`` (``train.compile``).
        stream: ``stream.next()`` returns the next training batch (a ``{"video",
            "label"}`` dict or a ``(video, label)`` pair), e.g. a :class:`BatchStream`.
        optimizer / scheduler: stepped once per iteration (the scheduler after the optimizer).
        sampler: ``sampler(inputs) -> [(cfg, input), ...]``, the full configuration first.
        task: what is task-specific (:class:`~mutualnet_video.engine.task.ClassificationTask`
            by default): how a batch splits into inputs and targets, the module
            ``mutual_step`` runs, the losses and the teacher.
        criterion / distill: replace the task's losses (``criterion(output, targets)``,
            ``distill(output, teacher, temperature=T)``).
        temperature / clip_grad_norm / scaler / amp: handed to :func:`mutual_step`.
        max_iters: iterations of :meth:`train`.

    After each step: ``step_losses`` (``{cfg tag: loss}``), ``step_terms`` (the task's named
    loss terms per configuration, in execution order), ``step_lr``, ``data_time``,
    ``step_time`` and ``clips_per_iter``; ``iteration`` counts the finished iterations.
    """

    def __init__(self, model: nn.Module, stream: Any, optimizer: torch.optim.Optimizer, sampler: Callable, *,
                 max_iters: int, scheduler: Any = None, task: ClassificationTask | None = None,
                 criterion: Callable | None = None,
                 distill: Callable | None = None, train_model: nn.Module | None = None,
                 device: torch.device | str = "cpu", scaler: torch.amp.GradScaler | None = None, amp: bool = False,
                 clip_grad_norm: float | None = None, temperature: float = 1.0, world_size: int = 1) -> None:
        self.model = model
        self.train_model = model if train_model is None else train_model
        self.stream, self.optimizer, self.scheduler, self.sampler = stream, optimizer, scheduler, sampler
        self.task = task if task is not None else ClassificationTask()
        self.criterion, self.distill = criterion, distill
        self.device = torch.device(device)
        self.scaler, self.amp = scaler, amp
        self.clip_grad_norm, self.temperature = clip_grad_norm, temperature
        self.max_iters = max_iters
        self.world_size = world_size
        self.is_main = True
        self.iteration = 0
        self.failed = False
        self.metrics: dict[str, Any] = {}
        self.hooks: list[HookBase] = []
        self.step_losses: dict[str, float] = {}
        self.step_terms: list[dict[str, float]] = []
        self.step_lr = self.data_time = self.step_time = 0.0
        self.clips_per_iter = 0

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        """Append hooks (``None`` entries are skipped); they run in registration order."""
        for hook in hooks:
            if hook is None:
                continue
            if not isinstance(hook, HookBase):
                raise TypeError(f"hooks must be HookBase instances, got {type(hook).__name__}")
            hook.trainer = self
            self.hooks.append(hook)

    def train(self) -> dict[str, Any]:
        """Run from ``iteration`` to ``max_iters``; returns ``metrics`` (the last validation)."""
        self.failed = False
        try:
            for hook in self.hooks:
                hook.before_train()
            while self.iteration < self.max_iters:
                for hook in self.hooks:
                    hook.before_step()
                self.run_step()
                self.iteration += 1
                for hook in self.hooks:
                    hook.after_step()
        except BaseException as exc:
            self.failed = True
            for hook in self.hooks:
                hook.on_exception(exc)
            raise
        finally:
            for hook in self.hooks:
                hook.after_train()
        return self.metrics

    def run_step(self) -> None:
        """One sandwich-rule iteration on the next batch."""
        start = time.perf_counter()
        batch = self.stream.next()
        self.data_time = time.perf_counter() - start
        task = self.task
        inputs, targets = task.split(batch, self.device)
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        task.terms = []
        distill = self.distill
        if distill is None:
            def distill(output: Any, teacher: Any, *, temperature: float = 1.0) -> torch.Tensor:
                return task.distill(output, teacher, targets, temperature=temperature)
        self.train_model.train()
        self.step_losses = mutual_step(
            task.train_view(self.train_model), self.sampler(inputs), targets,
            criterion=self.criterion or task.criterion, distill=distill, teacher_fn=task.teacher,
            optimizer=self.optimizer, scaler=self.scaler, clip_grad_norm=self.clip_grad_norm,
            temperature=self.temperature, amp=self.amp, iteration=self.iteration,
        )
        self.step_terms = task.terms
        if self.scheduler is not None:
            self.scheduler.step()
        self.step_time = time.perf_counter() - start
        self.clips_per_iter = (targets.shape[0] if isinstance(targets, torch.Tensor) else len(targets)) * self.world_size


class Trainer(TrainerBase):
    """Train a slimmable model with the sandwich rule from a validated config tree.

    Args:
        cfg: a config from :func:`mutualnet_video.engine.config.load_config`.
        model: use this model instead of ``build_model(cfg)``.
        train_dataset / val_dataset: use these instead of building ``data.train`` / ``data.val``.
        sampler: ``sampler(inputs) -> [(cfg, input), ...]`` (full first); default
            :class:`SandwichSampler` (``mutual.mode: mutual``) or :class:`SingleSampler`,
            with the task's per-configuration inputs.
        task: default: the config's ``task`` node, else classification.
        criterion: loss of the full configuration (default: the task's; cross-entropy).
        distill: loss of the other configurations (default: the task's; KL to the teacher).

    Under ``torchrun`` the process group must exist (:func:`~mutualnet_video.engine.launch`).
    """

    def __init__(self, cfg: Mapping[str, Any], *, model: nn.Module | None = None,
                 train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
                 sampler: Callable | None = None, task: ClassificationTask | None = None,
                 criterion: Callable | None = None, distill: Callable | None = None) -> None:
        tcfg, ocfg, dcfg = cfg["train"], cfg["optim"], cfg["data"]
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("WORLD_SIZE > 1 but no process group: build the Trainer inside "
                               "mutualnet_video.engine.launch(cfg)")
        device = resolve_device(tcfg["device"])
        rank, world_size = get_rank(), get_world_size()
        if task is None:
            task = instantiate(cfg["task"], _path="task") if cfg.get("task") else ClassificationTask()
        if world_size > 1 and not task.supports_ddp:
            raise ConfigError(f"task._target_: {type(task).__name__} does not train under DDP yet; run one process")
        model = build_model(cfg) if model is None else model
        space = get_space(model)
        if cfg["mutual"]["mode"] == "mutual" and space is None:
            raise ConfigError("mutual.mode: 'mutual' needs a model with a ConfigSpace (attach_space / our builders)")
        model.to(device)
        if tcfg["sync_bn"]:
            model = convert_sync_bn(model, device)
        train_model: nn.Module = model
        if world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=tcfg["find_unused_parameters"],
            )
        if tcfg["compile"]:
            # only the training forward is compiled, DDP wrapper included (dynamo splits its graphs
            # at DDP's buckets; mutual_step finds no_sync through the compiled wrapper): self.model,
            # which checkpoints, calibration and evaluation use, stays the plain module (state-dict
            # keys without an _orig_mod. prefix)
            train_model = compile_slimmable(train_model) if space is not None else torch.compile(train_model)

        def dataset(split: str) -> Dataset | None:
            return build_dataset(cfg, split, space=space, seed=tcfg["seed"], rank=rank, world_size=world_size)

        train_dataset = train_dataset if train_dataset is not None else dataset("train")
        if train_dataset is None:
            raise ConfigError("data.train: required (a dataset _target_ node)")
        stream = BatchStream(
            train_dataset, batch_size=dcfg["batch_size"], num_workers=dcfg["num_workers"],
            drop_last=dcfg["drop_last"], seed=tcfg["seed"], rank=rank, world_size=world_size,
            pin_memory=device.type == "cuda",
        )
        max_iters = _max_iters(cfg, stream)
        optimizer = build_optimizer(model, ocfg)
        amp = tcfg["amp"] and device.type == "cuda"
        if tcfg["amp"] and not amp and rank == 0:
            logger.info("train.amp ignored: AMP runs on CUDA only (device %s)", device)
        if sampler is None and space is not None:
            generator = torch.Generator().manual_seed(tcfg["seed"] + 1)
            input_fn = functools.partial(task.inputs, space)
            sampler = (SandwichSampler(space, generator=generator, input_fn=input_fn)
                       if cfg["mutual"]["mode"] == "mutual" else SingleSampler(space, input_fn=input_fn))
        elif sampler is None:
            sampler = SingleSampler(None)
        super().__init__(
            model, stream, optimizer, sampler, max_iters=max_iters,
            scheduler=build_lr_scheduler(optimizer, ocfg, max_iters), task=task, criterion=criterion, distill=distill,
            train_model=train_model, device=device, scaler=torch.amp.GradScaler("cuda") if amp else None, amp=amp,
            clip_grad_norm=ocfg["clip_grad_norm"], temperature=cfg["mutual"]["temperature"], world_size=world_size,
        )
        self.cfg = cfg
        self.space = space
        self.rank = rank
        self.is_main = rank == 0
        self.output_dir = cfg["output_dir"]
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset if val_dataset is not None else dataset("val")
        self.final_rows: list[dict[str, Any]] = []

        checkpointables: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.scaler is not None:
            checkpointables["scaler"] = self.scaler
        if hasattr(sampler, "state_dict") and hasattr(sampler, "load_state_dict"):
            checkpointables["sampler"] = sampler
        elif isinstance(getattr(sampler, "generator", None), torch.Generator):
            checkpointables["sampler"] = GeneratorState(sampler.generator)
        self.checkpointer = MutualCheckpointer(
            model, self.output_dir, save_to_disk=self.is_main, keep=tcfg["keep_checkpoints"], **checkpointables
        )
        self.writer = MetricsWriter(self.output_dir, tensorboard=tcfg["tensorboard"], enabled=self.is_main)
        self._rng_to_restore: dict | None = None
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> list[HookBase]:
        """The default hooks (see :mod:`mutualnet_video.engine.hooks`; :class:`RankDump` if the
        environment variable ``MUTUALNET_VIDEO_RANK_DUMP`` is set); override to change them."""
        tcfg = self.cfg["train"]
        dump = os.environ.get(RANK_DUMP_ENV)
        return [
            MetricsLogger(tcfg["log_period"], progress=tcfg["progress"]),
            DataStats(tcfg["log_period"]),
            PeriodicCheckpointer(tcfg["checkpoint_period"]),
            PeriodicValidation(tcfg["eval_period"]) if self.val_dataset is not None and self.task.logits else None,
            NanGuard(),
            RankDump(dump) if dump else None,
        ]

    # -- checkpoints ------------------------------------------------------------------------
    def resume_or_load(self) -> bool:
        """Continue from the newest loadable checkpoint of ``output_dir`` if ``train.resume``;
        True if resumed.

        Candidates, newest first: the file ``last_checkpoint`` names, ``model_final.pth``, then
        ``model_<iteration>.pth`` by iteration. A missing, truncated or unreadable one is
        skipped with a warning naming it; none left: :class:`CheckpointError`. A checkpoint
        written for another model or configuration space is refused, naming what differs
        (:class:`ConfigError`), unless ``train.resume_check`` is false.
        """
        if not self.cfg["train"]["resume"]:
            return False
        candidates, tagged = _resume_candidates(self.output_dir)
        if not candidates:
            logger.info("train.resume: no checkpoint in %s, starting from scratch", self.output_dir)
            return False
        for path in candidates:
            try:
                payload = load_checkpoint_file(path)
                if not isinstance(payload, dict) or "model" not in payload or "iteration" not in payload:
                    raise CorruptCheckpointError(f"{path}: not a Trainer checkpoint (no model / iteration entry)")
            except (FileNotFoundError, CorruptCheckpointError) as exc:
                why = f"{path}, named by last_checkpoint, is missing" if path == tagged and not os.path.exists(path) \
                    else str(exc)
                logger.warning("train.resume: %s; trying the next older checkpoint", why)
                continue
            self._check_same_run(path, payload.get("run"))
            break
        else:
            raise CheckpointError(f"train.resume: no loadable checkpoint in {self.output_dir} (tried "
                                  f"{', '.join(os.path.basename(p) for p in candidates)})")
        extra = self.checkpointer.load(path)
        self.iteration = int(extra["iteration"])
        if self.is_main:
            self._forget_after(self.iteration)
        data = extra.get("data", {"epoch": 0, "batch_in_epoch": 0})
        self.stream.epoch, self.stream.batch_in_epoch = int(data["epoch"]), int(data["batch_in_epoch"])
        self.stream.epoch_rng = data.get("epoch_rng")
        self._rng_to_restore = extra.get("rng")
        if self.is_main:
            logger.info("resumed from %s at iteration %d", path, self.iteration)
        return True

    def _forget_after(self, iteration: int) -> None:
        """After a resume at ``iteration``: remove the partial files an interrupted write left
        (``.<name>.*.tmp``) and the ``metrics.jsonl`` rows of the iterations that will run
        again (and a last line cut by the kill), so each iteration is logged once."""
        stale = [f for f in os.listdir(self.output_dir) if f.startswith(".") and f.endswith(".tmp")]
        for name in stale:
            os.remove(os.path.join(self.output_dir, name))
        if stale:
            logger.info("train.resume: removed %d partial file(s) of an interrupted write: %s", len(stale),
                        ", ".join(stale))
        metrics = self.writer.path
        if not os.path.isfile(metrics):
            return
        with open(metrics, encoding="utf-8") as f:
            lines = f.read().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # cut by the kill
            if isinstance(row, dict) and row.get("iteration", 0) <= iteration:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(metrics, "".join(f"{line}\n" for line in kept))

    def run_identity(self) -> dict[str, Any]:
        """What a checkpoint of this run records of it and a resume must match: the ``model``
        node (without ``weights``) and the configuration space."""
        model = {k: v for k, v in self.cfg["model"].items() if k != "weights"}
        space = None if self.space is None else dataclasses.asdict(self.space)
        return json.loads(json.dumps({"model": model, "space": space}, default=str))

    def _check_same_run(self, path: str, saved: Any) -> None:
        if saved is None or not self.cfg["train"]["resume_check"]:
            return
        differences = _differences(saved, self.run_identity())
        if differences:
            shown = "; ".join(differences[:5]) + (f"; ... ({len(differences)} in all)" if len(differences) > 5 else "")
            raise ConfigError(f"train.resume: {path} was written for another run ({shown}); use another output_dir, "
                              "or set train.resume_check=false to load it anyway")

    def save_checkpoint(self, name: str) -> None:
        self.checkpointer.save(name, iteration=self.iteration, data=self.stream.state(), rng=capture_rng_state(),
                               run=self.run_identity())

    def check_output_dir(self) -> None:
        """Fail before training if ``output_dir`` cannot be written or has no room for a checkpoint."""
        if not self.is_main:
            return
        path = self.output_dir
        check_writable(path, key="output_dir")
        need = 3 * sum(t.numel() * t.element_size() for t in self.model.state_dict().values()) + (1 << 20)
        free = shutil.disk_usage(path).free
        if free < need:
            raise ConfigError(f"output_dir: {path}: {free / 2**20:.1f} MiB free, a checkpoint needs about "
                              f"{need / 2**20:.1f} MiB")

    # -- training ---------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Resume if asked, save ``config.yaml``, run to ``max_iters``; returns the last
        validation metrics (if any).

        Raises ``FloatingPointError`` on a NaN/inf loss, after logging it; no checkpoint is
        written then, so ``last_checkpoint`` still names the last good one.
        """
        self.check_output_dir()
        self.resume_or_load()
        if self.is_main:
            atomic_write_text(os.path.join(self.output_dir, "config.yaml"), dump_config(self.cfg))
        self.stream.seek(self.stream.epoch, self.stream.batch_in_epoch, epoch_rng=self.stream.epoch_rng)
        if self._rng_to_restore is not None:  # after re-positioning the data, as in the uninterrupted run
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        try:
            return super().train()
        finally:
            self.writer.close()

    # -- evaluation ---------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """:meth:`evaluate` at the full configuration, logged and written as ``val/*``."""
        metrics = self.evaluate()
        self.writer.write(self.iteration, {f"val/{k}": v for k, v in metrics.items()})
        if self.is_main:
            logger.info("iter %d  val (full config): top1 %.2f  top5 %.2f  (%d clips)",
                        self.iteration, metrics["top1"], metrics["top5"], metrics["clips"])
        return metrics

    def val_loader(self) -> DataLoader:
        dataset = self.val_dataset
        batch = self.cfg["data"]["val_batch_size"] or self.cfg["data"]["batch_size"]
        kwargs: dict[str, Any] = dict(num_workers=self.cfg["data"]["num_workers"], batch_size=batch)
        if is_map_style(dataset) and self.world_size > 1:
            kwargs["sampler"] = list(range(self.rank, len(dataset), self.world_size))
        return DataLoader(dataset, collate_fn=getattr(dataset, "collate_fn", None), **kwargs)

    def evaluate(self, subnet: SubnetConfig | None = None) -> dict[str, float]:
        """Top-1/top-5 (%) on the validation data at ``subnet`` (default: the full
        configuration; a model without a space runs as it is), with the BN statistics
        of training: ``evaluate_configs`` on one view per video, hits summed over ranks."""
        if self.val_dataset is None:
            raise ConfigError("data.val: no validation dataset configured")
        subnet = subnet if subnet is not None or self.space is None else self.space.full()
        input_fn = None
        if subnet is None:  # no space: the model's own input, as the dataset yields it
            subnet, input_fn = SubnetConfig(1.0, None, 1), (lambda batch, _subnet: batch["video"])
        autocast = torch.autocast(device_type=self.device.type) if self.amp else contextlib.nullcontext()
        with autocast:
            (record,) = evaluate_configs(
                self.model, eval_batches(self.val_loader(), self.device), [subnet], device=self.device, progress=False,
                input_fn=input_fn, count_costs=False, max_batches=self.cfg["eval"]["max_batches"],
            )
        top1, top5, total = _sum_hits(record, self.device)
        return {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total, "clips": int(round(total))}

    def calibration_batches(self, num_batches: int) -> list[Any]:
        """``num_batches`` training clip batches (on the device) for BN calibration."""
        stream = BatchStream(
            self.train_dataset, batch_size=self.cfg["data"]["batch_size"], num_workers=self.cfg["data"]["num_workers"],
            drop_last=True, seed=self.cfg["train"]["seed"] + 7, rank=self.rank, world_size=self.world_size,
            pin_memory=False,
        )
        return [self.task.split(stream.next(), self.device)[0] for _ in range(num_batches)]

    def final_evaluation(self, *, configs: Sequence[SubnetConfig] | None = None) -> list[dict[str, Any]]:
        """Calibrate BN and evaluate a few configurations (see :func:`final_evaluation`)."""
        return final_evaluation(self, configs=configs)


def _resume_candidates(output_dir: str) -> tuple[list[str], str | None]:
    """The checkpoints a resume tries, newest first, and the path ``last_checkpoint`` names."""
    if not os.path.isdir(output_dir):
        return [], None
    tagged = None
    tag = os.path.join(output_dir, "last_checkpoint")
    if os.path.isfile(tag):
        with open(tag, encoding="utf-8") as f:
            name = f.read().strip()
        tagged = os.path.join(output_dir, name) if name else None
    periodic = sorted((f for f in os.listdir(output_dir) if re.fullmatch(r"model_\d+\.pth", f)), reverse=True)
    names = (["model_final.pth"] if os.path.isfile(os.path.join(output_dir, "model_final.pth")) else []) + periodic
    candidates = [tagged] if tagged else []
    candidates += [p for p in (os.path.join(output_dir, n) for n in names) if p not in candidates]
    return candidates, tagged


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``key: checkpoint X vs config Y`` for every leaf where two JSON trees differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            out += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if saved != current:
        return [f"{prefix.rstrip('.')}: checkpoint {saved!r} vs config {current!r}"]
    return []


def _max_iters(cfg: Mapping[str, Any], stream: BatchStream) -> int:
    ocfg = cfg["optim"]
    if ocfg["max_iters"] is not None:
        return ocfg["max_iters"]
    per_epoch = stream.batches_per_epoch()
    if per_epoch is None:
        raise ConfigError("optim.epochs: the training dataset has no length; set optim.max_iters instead")
    if per_epoch == 0:
        raise ConfigError(f"data.batch_size: {cfg['data']['batch_size']} is larger than a process's shard")
    if ocfg["warmup_iters"] >= per_epoch * ocfg["epochs"]:
        raise ConfigError(
            f"optim.warmup_iters: must be < the {per_epoch * ocfg['epochs']} training iterations, "
            f"got {ocfg['warmup_iters']}"
        )
    return per_epoch * ocfg["epochs"]


def _sum_hits(record: BudgetRecord, device: torch.device) -> tuple[float, float, float]:
    """(top-1 hits, top-5 hits, videos) of ``record`` summed over the ranks."""
    top1, top5, videos = all_reduce_sum(
        [record.top1 * record.num_videos / 100.0, record.top5 * record.num_videos / 100.0, float(record.num_videos)],
        device)
    if videos == 0:
        raise RuntimeError("the validation dataset yielded no clip: check data.val")
    return top1, top5, videos


def default_eval_configs(space) -> list[SubnetConfig]:
    """Full, a middle one and the smallest configuration of ``space`` (distinct, in that order).

    The middle one: the median evaluation width at the middle frame count and crop
    (rounded towards the larger), e.g. ``(0.75, 4, 48)`` for ``[0.5, 1] x {4, 2} x {48, 32}``.
    """
    widths = sorted(space.widths)
    middle = SubnetConfig(widths[len(widths) // 2], space.frames[(len(space.frames) - 1) // 2],
                          space.crops[(len(space.crops) - 1) // 2])
    return list(dict.fromkeys([space.full(), middle, space.smallest()]))


def eval_batches(loader: Any, device: torch.device) -> Iterator[dict[str, Any]]:
    """Batches as the evaluator reads them: dicts with ``video``, ``label``, ``video_index``,
    ``clip_index`` and ``aug_index`` (a single-view dataset without the last three gets a
    running video index and view 0)."""
    seen = 0
    for batch in loader:
        video, labels = split_batch(batch)
        n = labels.numel()
        out = dict(batch) if isinstance(batch, Mapping) else {}
        out.update(video=to_device(video, device), label=labels)
        if "video_index" not in out:
            out["video_index"] = torch.arange(seen, seen + n)
        for key in ("clip_index", "aug_index"):
            out.setdefault(key, torch.zeros(n, dtype=torch.long))
        seen += n
        yield out


def final_evaluation(trainer: Trainer, *, configs: Sequence[SubnetConfig] | None = None) -> list[dict[str, Any]]:
    """After training: calibrate BN per configuration, evaluate a few configurations.

    ``configs`` default to ``eval.configs`` (tags), else full / middle / smallest
    (:func:`default_eval_configs`). Runs ``mutualnet_video.evaluation.calibrate_bn`` on
    ``eval.calib_batches`` training batches (one decoded batch serves every configuration;
    through the task's ``calibration_view`` / ``calibration_input``), then scores each
    configuration on the validation data:

    * a task whose model returns logits (classification): ``evaluate_configs`` (one view
      per video, at most ``eval.max_batches`` batches, GFLOPs from ``count_flops``); under
      DDP each rank calibrates on its own batches and evaluates its shard, the hits are
      summed over the ranks; rank 0 prints ``evaluation.format_table``. A row:
      ``{"config" (tag), "width", "frames", "crop", "gflops", "top1", "top5", "videos",
      "calibrated"}``;
    * another task (detection, segmentation): ``task.score`` on the validation set, one
      line ``eval <configuration>: <text>`` each; a row: ``{"config", "width", "frames",
      "crop", "score", "text", "calibrated"}``.

    Logs ``final/<tag>/...``; rank 0 writes the rows to ``output_dir/final_evaluation.json``
    (``{"rows": [...]}``, atomically). A model without a ConfigSpace is evaluated once, as
    it is (``"calibrated": False``).
    """
    if trainer.val_dataset is None:
        return []
    space, task = trainer.space, trainer.task
    rows: list[dict[str, Any]] = []
    records: list[BudgetRecord] = []
    if space is None:
        result = trainer.evaluate()
        rows.append({"config": "full", "width": None, "frames": None, "crop": None, "gflops": None,
                     "top1": result["top1"], "top5": result["top5"], "videos": result["clips"],
                     "calibrated": False})
    else:
        if configs is None:
            tags = trainer.cfg["eval"]["configs"]
            configs = [SubnetConfig.from_tag(t) for t in tags] if tags else default_eval_configs(space)
        configs = list(dict.fromkeys(configs))
        for subnet in configs:
            space.validate(subnet)
        num = trainer.cfg["eval"]["calib_batches"]
        used = calibrate_bn(task.calibration_view(trainer.model), trainer.calibration_batches(num), configs,
                            num_batches=num, device=trainer.device, input_fn=task.calibration_input)
        if trainer.is_main:
            print(f"calibrated BN statistics of {len(configs)} configurations on {used} batches")
        if task.logits:
            records, rows = _evaluate_logits(trainer, configs)
        else:
            rows = _evaluate_scores(trainer, configs)
    if trainer.is_main:
        atomic_write_text(os.path.join(trainer.output_dir, "final_evaluation.json"),
                          json.dumps({"rows": rows}, indent=1) + "\n")
        if records:
            print(format_table(records, num_classes=_num_classes(trainer), sort=False))
        elif space is None:
            print(f"full (as built, no ConfigSpace): top1 {rows[0]['top1']:.2f}  top5 {rows[0]['top5']:.2f}  "
                  f"({rows[0]['videos']} videos)")
        for row in rows:
            values = {k: row[k] for k in ("top1", "top5", "score") if isinstance(row.get(k), (int, float))}
            trainer.writer.write(trainer.iteration, {f"final/{row['config']}/{k}": v for k, v in values.items()})
    return rows


def _evaluate_logits(trainer: Trainer, configs: list[SubnetConfig]) -> tuple[list[BudgetRecord], list[dict]]:
    local = evaluate_configs(
        trainer.model, eval_batches(trainer.val_loader(), trainer.device), configs, views=("1x1",),
        device=trainer.device, progress=False, require_calibrated=True, max_batches=trainer.cfg["eval"]["max_batches"],
    )
    records, rows = [], []
    for r in local:
        top1, top5, videos = _sum_hits(r, trainer.device)
        record = replace(r, top1=100.0 * top1 / videos, top5=100.0 * top5 / videos, num_videos=int(round(videos)),
                         pareto=False)
        records.append(record)
        rows.append({"config": r.config.tag, "width": r.width, "frames": r.frames, "crop": r.crop,
                     "gflops": r.gflops_per_view, "top1": record.top1, "top5": record.top5,
                     "videos": record.num_videos, "calibrated": True})
    return records, rows


@torch.no_grad()
def _evaluate_scores(trainer: Trainer, configs: list[SubnetConfig]) -> list[dict]:
    """``task.score`` of every configuration on the whole validation set (one batch)."""
    dataset = trainer.val_dataset
    loader = DataLoader(dataset, batch_size=len(dataset), collate_fn=getattr(dataset, "collate_fn", None))
    inputs, targets = trainer.task.split(next(iter(loader)), trainer.device)
    model, rows = trainer.model, []
    was_training = model.training
    model.eval()
    try:
        for subnet in configs:
            with use_config(model, subnet):
                value, text = trainer.task.score(model, subnet, inputs, targets)
            if trainer.is_main:
                print(f"eval {subnet}: {text}")
            rows.append({"config": subnet.tag, "width": subnet.width, "frames": subnet.frames, "crop": subnet.crop,
                         "score": value, "text": text, "calibrated": True})
    finally:
        model.train(was_training)
    return rows


def _num_classes(trainer: Trainer) -> int | None:
    """The classifier's class count: ``model.model_num_class`` / ``num_classes`` of the
    config, else the out_features of the model's last ``nn.Linear``; None if unknown."""
    node = trainer.cfg.get("model") or {}
    for key in ("model_num_class", "num_classes"):
        if isinstance(node.get(key), int):
            return node[key]
    linears = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None
