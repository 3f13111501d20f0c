"""The MutualNet trainer: config -> model, data, optimizer, schedule, checkpoints, logs.

``Trainer(cfg).train()`` runs ``optim.max_iters`` (or ``optim.epochs``) iterations of
:func:`mutual_step`, on one process or under ``torchrun`` (DDP, env:// init). Every piece
can be injected (``model=``, ``train_dataset=``, ``sampler=``, ``criterion=``) so the
loop runs on tiny in-memory data in tests.

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
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..core import SubnetConfig, clip_for_config, distillation_loss, get_space, use_config
from ..evaluation import topk_correct
from ..io import atomic_write_text
from .checkpoint import MutualCheckpointer, capture_rng_state, restore_rng_state
from .config import ConfigError, accepts_kwarg, build_model, dump_config, instantiate, resolve_target
from .distributed import (
    all_reduce_sum,
    barrier,
    check_sync_bn,
    get_rank,
    get_world_size,
    init_distributed,
    resolve_device,
)
from .metrics import MetricsWriter
from .mutual import SandwichSampler, SingleSampler, mutual_step
from .optim import build_lr_scheduler, build_optimizer

__all__ = ["Trainer", "seed_everything", "final_evaluation", "split_batch", "default_eval_configs",
           "build_dataset", "make_synthetic_data"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(video, label)`` from a collated dict (``{"video", "label"}``) or a ``(video, label)`` pair."""
    if isinstance(batch, Mapping):
        if "video" not in batch or "label" not in batch:
            raise KeyError(f"a batch dict needs 'video' and 'label' keys, got {sorted(batch)}")
        return batch["video"], torch.as_tensor(batch["label"])
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise TypeError(f"cannot read (video, label) from a batch of type {type(batch).__name__}")


def _to_device(video: Any, device: torch.device) -> Any:
    if isinstance(video, (list, tuple)):
        return [v.to(device, non_blocking=True) for v in video]
    return video.to(device, non_blocking=True)


class _GeneratorState:
    """Checkpointable view of a ``torch.Generator`` (for samplers without ``state_dict``)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def _is_map_style(dataset: Dataset) -> bool:
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


class _BatchStream:
    """Batches of the training data, epoch after epoch, from a given (epoch, batch) position.

    Map-style datasets: a seeded permutation per epoch (same on all ranks), sharded
    ``perm[rank::world_size]`` (padded like ``DistributedSampler``), cut into batches; a
    position is reached by skipping indices. Iterable datasets: sharded by the dataset
    itself (rank/world_size given to its builder), ``set_epoch(epoch)`` if it has one; a
    position is reached by replaying batches.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, num_workers: int, drop_last: bool, seed: int,
                 rank: int, world_size: int, pin_memory: bool) -> None:
        self.dataset = dataset
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.pin_memory = pin_memory
        self.map_style = _is_map_style(dataset)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_rng: dict | None = None  # global RNG states when this epoch's iterator was made
        self._iter: Iterator | None = None

    # -- epoch layout -----------------------------------------------------------------
    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def _shard(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        perm = torch.randperm(n, generator=self._generator(epoch)).tolist()
        per_rank = math.ceil(n / self.world_size)
        perm += perm[: per_rank * self.world_size - n]
        return perm[self.rank :: self.world_size]

    def batches_per_epoch(self) -> int | None:
        if not self.map_style:
            return len(self.dataset) // self.batch_size if hasattr(self.dataset, "__len__") else None
        per_rank = math.ceil(len(self.dataset) / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _loader(self, epoch: int, skip: int) -> Iterator:
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory, generator=self._generator(epoch))
        if self.map_style:
            shard = self._shard(epoch)
            batches = [shard[i : i + self.batch_size] for i in range(0, len(shard), self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches.pop()
            return iter(DataLoader(self.dataset, batch_sampler=batches[skip:], **common))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        it = iter(DataLoader(self.dataset, batch_size=self.batch_size, drop_last=self.drop_last, **common))
        for _ in range(skip):
            next(it)
        return it

    def seek(self, epoch: int, batch_in_epoch: int, *, epoch_rng: dict | None = None) -> None:
        """Position the stream. Replaying an iterable dataset needs the RNG states the
        epoch started with (``epoch_rng`` from :meth:`state`): they are restored first."""
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        if epoch_rng is not None and batch_in_epoch > 0:
            restore_rng_state(epoch_rng)
        self.epoch_rng = epoch_rng if batch_in_epoch > 0 and epoch_rng is not None else capture_rng_state()
        self._iter = self._loader(epoch, batch_in_epoch)

    def next(self) -> Any:
        if self._iter is None:
            self.seek(self.epoch, self.batch_in_epoch)
        for _ in range(2):
            try:
                batch = next(self._iter)
            except StopIteration:
                if self.batch_in_epoch == 0:
                    break
                self.seek(self.epoch + 1, 0)
                continue
            self.batch_in_epoch += 1
            return batch
        raise RuntimeError(
            f"the training dataset yielded no batch in epoch {self.epoch} (batch_size={self.batch_size}, "
            "drop_last): check data.train (paths, decoder) and the dataset size"
        )

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "epoch_rng": self.epoch_rng}


def make_synthetic_data(cfg: Mapping[str, Any]) -> None:
    """``data.synthetic``: write the dataset (``_target_(root, **kwargs)``, default
    ``make_synthetic_kinetics``) if ``root/train.csv`` is absent. Call it on one process."""
    node = cfg["data"].get("synthetic")
    if not node or os.path.isfile(os.path.join(node["root"], "train.csv")):
        return
    target = node.get("_target_", "mutualnet_video.data.make_synthetic_kinetics")
    kwargs = {k: v for k, v in node.items() if k not in ("_target_", "root")}
    logger.info("data.synthetic: writing a synthetic dataset to %s", node["root"])
    resolve_target(target, path="data.synthetic._target_")(node["root"], **kwargs)


def build_dataset(cfg: Mapping[str, Any], split: str, *, space: Any, seed: int, rank: int = 0,
                  world_size: int = 1) -> Dataset | None:
    """``data.<split>`` of ``cfg`` (``None`` if not configured), given the keywords its
    callable accepts: ``space`` (if not None), ``seed`` (unless the node sets it) and
    ``rank``/``world_size``. Raises ConfigError if an iterable dataset that takes no
    rank/world_size would have to be sharded over several processes."""
    node = cfg["data"].get(split)
    if node is None:
        return None
    fn = resolve_target(node["_target_"], path=f"data.{split}._target_")
    extra: dict[str, Any] = {}
    if accepts_kwarg(fn, "space") and space is not None:
        extra["space"] = space
    if "seed" not in node and accepts_kwarg(fn, "seed"):  # e.g. kinetics_dataset's per-epoch shuffle
        extra["seed"] = seed
    if accepts_kwarg(fn, "rank") and accepts_kwarg(fn, "world_size"):
        extra.update(rank=rank, world_size=world_size)
    elif world_size > 1:
        dataset = instantiate(node, _path=f"data.{split}", **extra)
        if not _is_map_style(dataset):
            raise ConfigError(
                f"data.{split}._target_: {node['_target_']} takes no rank/world_size, so an iterable dataset "
                "cannot be sharded over the DDP processes"
            )
        return dataset
    return instantiate(node, _path=f"data.{split}", **extra)


class Trainer:
    """Train a slimmable model with the sandwich rule from a validated config tree.

    Args:
        cfg: a config from :func:`mutualnet_video.engine.config.load_config`.
        model: use this model instead of ``build_model(cfg)``.
        train_dataset / val_dataset: use these instead of building ``data.train`` / ``data.val``.
        sampler: ``sampler(video_batch) -> [(cfg, input), ...]`` (full first); default
            :class:`SandwichSampler` (``mutual.mode: mutual``) or :class:`SingleSampler`.
        criterion: loss of the full configuration (default cross-entropy).
        distill: loss of the other configurations (default from ``mutual.distill``).
    """

    def __init__(self, cfg: Mapping[str, Any], *, model: nn.Module | None = None,
                 train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
                 sampler: Callable | None = None, criterion: Callable | None = None,
                 distill: Callable | None = None) -> None:
        self.cfg = cfg
        tcfg, ocfg = cfg["train"], cfg["optim"]
        if tcfg.get("cpu_threads"):
            torch.set_num_threads(tcfg["cpu_threads"])
        self.device = resolve_device(tcfg["device"])
        self._owns_process_group = init_distributed(self.device)
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        self.output_dir = cfg["output_dir"]
        seed_everything(tcfg["seed"])

        if cfg["data"].get("synthetic") and train_dataset is None:
            if self.is_main:
                make_synthetic_data(cfg)
            barrier()
        model = build_model(cfg) if model is None else model
        self.space = get_space(model)
        if cfg["mutual"]["mode"] == "mutual" and self.space is None:
            raise ConfigError("mutual.mode: 'mutual' needs a model with a ConfigSpace (attach_space / our builders)")
        model.to(self.device)
        if tcfg["sync_bn"]:
            model = check_sync_bn(model, self.device)
        self.model = model
        self.train_model: nn.Module = model
        if self.world_size > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=tcfg["find_unused_parameters"],
            )

        self.train_dataset = train_dataset if train_dataset is not None else self._build_dataset("train")
        self.val_dataset = val_dataset if val_dataset is not None else self._build_dataset("val")
        if self.train_dataset is None:
            raise ConfigError("data.train: required (a dataset _target_ node)")
        dcfg = cfg["data"]
        self.stream = _BatchStream(
            self.train_dataset, batch_size=dcfg["batch_size"], num_workers=dcfg["num_workers"],
            drop_last=dcfg["drop_last"], seed=tcfg["seed"], rank=self.rank, world_size=self.world_size,
            pin_memory=self.device.type == "cuda",
        )
        self.max_iters = self._max_iters()

        self.optimizer = build_optimizer(model, ocfg)
        self.scheduler = build_lr_scheduler(self.optimizer, ocfg, self.max_iters)
        self.amp = tcfg["amp"] and self.device.type == "cuda"
        if tcfg["amp"] and not self.amp and self.is_main:
            logger.info("train.amp ignored: AMP runs on CUDA only (device %s)", self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

        if sampler is None:
            generator = torch.Generator().manual_seed(tcfg["seed"] + 1)
            sampler = (SandwichSampler(self.space, generator=generator) if cfg["mutual"]["mode"] == "mutual"
                       else SingleSampler(self.space))
        self.sampler = sampler
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.distill = distill if distill is not None else distillation_loss

        checkpointables: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.scaler is not None:
            checkpointables["scaler"] = self.scaler
        if hasattr(sampler, "state_dict") and hasattr(sampler, "load_state_dict"):
            checkpointables["sampler"] = sampler
        elif isinstance(getattr(sampler, "generator", None), torch.Generator):
            checkpointables["sampler"] = _GeneratorState(sampler.generator)
        self.checkpointer = MutualCheckpointer(
            model, self.output_dir, save_to_disk=self.is_main, keep=tcfg["keep_checkpoints"], **checkpointables
        )
        self.writer = MetricsWriter(self.output_dir, tensorboard=tcfg["tensorboard"], enabled=self.is_main)
        self.iteration = 0
        self._rng_to_restore: dict | None = None

    # -- building -------------------------------------------------------------------------
    def _build_dataset(self, split: str) -> Dataset | None:
        return build_dataset(self.cfg, split, space=self.space, seed=self.cfg["train"]["seed"], rank=self.rank,
                             world_size=self.world_size)

    def _max_iters(self) -> int:
        ocfg = self.cfg["optim"]
        if ocfg["max_iters"] is not None:
            return ocfg["max_iters"]
        per_epoch = self.stream.batches_per_epoch()
        if per_epoch is None:
            raise ConfigError("optim.epochs: the training dataset has no length; set optim.max_iters instead")
        if per_epoch == 0:
            raise ConfigError(f"data.batch_size: {self.cfg['data']['batch_size']} is larger than a process's shard")
        if ocfg["warmup_iters"] >= per_epoch * ocfg["epochs"]:
            raise ConfigError(
                f"optim.warmup_iters: must be < the {per_epoch * ocfg['epochs']} training iterations, "
                f"got {ocfg['warmup_iters']}"
            )
        return per_epoch * ocfg["epochs"]

    # -- checkpoints ------------------------------------------------------------------------
    def resume_or_load(self) -> bool:
        """Continue from ``output_dir/last_checkpoint`` if ``train.resume``; True if resumed."""
        if not self.cfg["train"]["resume"] or not self.checkpointer.has_checkpoint():
            if self.cfg["train"]["resume"]:
                logger.info("train.resume: no checkpoint in %s, starting from scratch", self.output_dir)
            return False
        path = self.checkpointer.get_checkpoint_file()
        extra = self.checkpointer.load(path)
        self.iteration = int(extra["iteration"])
        data = extra.get("data", {"epoch": 0, "batch_in_epoch": 0})
        self.stream.epoch, self.stream.batch_in_epoch = int(data["epoch"]), int(data["batch_in_epoch"])
        self.stream.epoch_rng = data.get("epoch_rng")
        self._rng_to_restore = extra.get("rng")
        if self.is_main:
            logger.info("resumed from %s at iteration %d", path, self.iteration)
        return True

    def save_checkpoint(self, name: str) -> None:
        self.checkpointer.save(
            name, iteration=self.iteration, data=self.stream.state(), rng=capture_rng_state(),
        )

    # -- training --------------------------------------------------------------------------
    def run_step(self, batch: Any) -> dict[str, float]:
        video, labels = split_batch(batch)
        video, labels = _to_device(video, self.device), labels.to(self.device, non_blocking=True)
        sub_inputs = self.sampler(video)
        self.train_model.train()
        return mutual_step(
            self.train_model, sub_inputs, labels, criterion=self.criterion, distill=self.distill,
            optimizer=self.optimizer, scaler=self.scaler, clip_grad_norm=self.cfg["optim"]["clip_grad_norm"],
            temperature=self.cfg["mutual"]["temperature"], amp=self.amp, iteration=self.iteration,
        )

    def train(self) -> dict[str, Any]:
        """Run to ``max_iters``; returns the last validation metrics (if any).

        Raises ``FloatingPointError`` on a NaN/inf loss, after logging it; no checkpoint is
        written then, so ``last_checkpoint`` still names the last good one.
        """
        tcfg = self.cfg["train"]
        self.resume_or_load()
        if self.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(dump_config(self.cfg))
        self.stream.seek(self.stream.epoch, self.stream.batch_in_epoch, epoch_rng=self.stream.epoch_rng)
        if self._rng_to_restore is not None:  # after re-positioning the data, as in the uninterrupted run
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        clips_per_iter = self.cfg["data"]["batch_size"] * self.world_size
        progress = _progress(self.max_iters, self.iteration, enabled=self.is_main and tcfg["progress"])
        metrics: dict[str, Any] = {}
        window: list[dict[str, float]] = []
        try:
            while self.iteration < self.max_iters:
                start = time.perf_counter()
                batch = self.stream.next()
                data_time = time.perf_counter() - start
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    losses = self.run_step(batch)
                except FloatingPointError as exc:
                    last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else "none"
                    message = f"training stopped: {exc}. Last good checkpoint: {last}"
                    self.writer.write(self.iteration, {}, error=message)
                    logger.error(message)
                    raise FloatingPointError(message) from exc
                self.scheduler.step()
                self.iteration += 1
                step_time = time.perf_counter() - start
                values = list(losses.values())
                window.append({
                    "loss_full": values[0],
                    "loss_distill": float(np.mean(values[1:])) if len(values) > 1 else 0.0,
                    "loss_total": float(sum(values)),
                    "lr": lr,
                    "clips_per_s": clips_per_iter / step_time,
                    "data_time": data_time,
                    "iter_time": step_time,
                })
                progress.update(1)
                progress.set_postfix(loss=f"{values[0]:.3f}", lr=f"{lr:.3g}", clips_s=f"{clips_per_iter / step_time:.1f}")
                if self.iteration % tcfg["log_period"] == 0 or self.iteration == self.max_iters:
                    avg = {k: float(np.median([w[k] for w in window])) for k in window[0]}
                    avg["lr"], avg["loss_full"] = window[-1]["lr"], window[-1]["loss_full"]
                    self.writer.write(self.iteration, {f"train/{k}": v for k, v in avg.items()},
                                      losses=losses, epoch=self.stream.epoch)
                    if self.is_main and not tcfg["progress"]:
                        logger.info("iter %d/%d  loss_full %.4f  loss_distill %.4f  lr %.4g  clips/s %.2f  data %.3fs",
                                    self.iteration, self.max_iters, avg["loss_full"], avg["loss_distill"], avg["lr"],
                                    avg["clips_per_s"], avg["data_time"])
                    window.clear()
                if self.iteration % tcfg["checkpoint_period"] == 0 and self.iteration < self.max_iters:
                    self.save_checkpoint(f"model_{self.iteration:07d}")
                if tcfg["eval_period"] and self.iteration % tcfg["eval_period"] == 0 and self.val_dataset is not None:
                    metrics = self._validate()
            if self.iteration >= self.max_iters:
                self.save_checkpoint("model_final")
                if self.val_dataset is not None and not (tcfg["eval_period"] and self.iteration % tcfg["eval_period"] == 0):
                    metrics = self._validate()
        finally:
            progress.close()
            self.writer.close()
        return metrics

    # -- evaluation --------------------------------------------------------------------------
    def _validate(self) -> dict[str, float]:
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
        if _is_map_style(dataset) and self.world_size > 1:
            kwargs["sampler"] = list(range(self.rank, len(dataset), self.world_size))
        return DataLoader(dataset, **kwargs)

    @torch.no_grad()
    def evaluate(self, cfg: SubnetConfig | None = None) -> dict[str, float]:
        """Top-1/top-5 (%) on the validation data at ``cfg`` (default: the full configuration)."""
        if self.val_dataset is None:
            raise ConfigError("data.val: no validation dataset configured")
        cfg = cfg if cfg is not None or self.space is None else self.space.full()
        was_training = self.model.training
        self.model.eval()
        counts = [0.0, 0.0, 0.0]
        max_batches = self.cfg["eval"]["max_batches"]
        switch = contextlib.nullcontext() if cfg is None else use_config(self.model, cfg)
        with switch:
            for i, batch in enumerate(self.val_loader()):
                if max_batches is not None and i >= max_batches:
                    break
                video, labels = split_batch(batch)
                video, labels = _to_device(video, self.device), labels.to(self.device)
                inputs = video if cfg is None else clip_for_config(video, cfg, slowfast_alpha=self.space.slowfast_alpha)
                with torch.autocast(device_type=self.device.type, enabled=self.amp):
                    logits = self.model(inputs)
                correct = topk_correct(logits.float(), labels, (1, 5))
                counts[0] += correct[1]
                counts[1] += correct[5]
                counts[2] += labels.numel()
        top1, top5, total = all_reduce_sum(counts, self.device)
        self.model.train(was_training)
        if total == 0:
            raise RuntimeError("the validation dataset yielded no clip: check data.val")
        return {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total, "clips": int(total)}

    def calibration_batches(self, num_batches: int) -> list[Any]:
        """``num_batches`` training clip batches (on the device) for BN calibration."""
        stream = _BatchStream(
            self.train_dataset, batch_size=self.cfg["data"]["batch_size"], num_workers=self.cfg["data"]["num_workers"],
            drop_last=True, seed=self.cfg["train"]["seed"] + 7, rank=self.rank, world_size=self.world_size,
            pin_memory=False,
        )
        return [_to_device(split_batch(stream.next())[0], self.device) for _ in range(num_batches)]

    def final_evaluation(self, *, configs: Sequence[SubnetConfig] | None = None) -> list[dict[str, Any]]:
        """Calibrate BN and evaluate a few configurations (see :func:`final_evaluation`)."""
        return final_evaluation(self, configs=configs)

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        if self._owns_process_group:
            torch.distributed.destroy_process_group()
            self._owns_process_group = False


def default_eval_configs(space) -> list[SubnetConfig]:
    """Full, a middle one and the smallest configuration of ``space`` (distinct, in that order).

    The middle one: the median evaluation width at the middle frame count and crop
    (rounded towards the larger), e.g. ``(0.75, 4, 48)`` for ``[0.5, 1] x {4, 2} x {48, 32}``.
    """
    widths = sorted(space.widths)
    middle = SubnetConfig(widths[len(widths) // 2], space.frames[(len(space.frames) - 1) // 2],
                          space.crops[(len(space.crops) - 1) // 2])
    return list(dict.fromkeys([space.full(), middle, space.smallest()]))


def _eval_batches(loader: Any, device: torch.device) -> Iterator[dict[str, Any]]:
    """Batches as the evaluator reads them: dicts with ``video``, ``label``, ``video_index``,
    ``clip_index`` and ``aug_index`` (a single-view dataset without the last three gets a
    running video index and view 0)."""
    seen = 0
    for batch in loader:
        video, labels = split_batch(batch)
        n = labels.numel()
        out = dict(batch) if isinstance(batch, Mapping) else {}
        out.update(video=_to_device(video, device), label=labels)
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
    ``eval.calib_batches`` training batches (one decoded batch serves every
    configuration), then ``evaluate_configs`` on the validation data (one view per video,
    at most ``eval.max_batches`` batches), counting GFLOPs with ``count_flops``. Under
    DDP each rank calibrates on its own batches and evaluates its shard; the hits are
    summed over the ranks. Prints the table on rank 0, logs ``final/<tag>/top1|top5``,
    and returns one row per configuration: ``{"config" (tag), "width", "frames", "crop",
    "gflops", "top1", "top5", "videos", "calibrated"}``; rank 0 also writes them to
    ``output_dir/final_evaluation.json`` (``{"rows": [...]}``, atomically). A model without
    a ConfigSpace is evaluated once, as it is (``"calibrated": False``).
    """
    if trainer.val_dataset is None:
        return []
    from ..evaluation import calibrate_bn, evaluate_configs

    space = trainer.space
    rows: list[dict[str, Any]] = []
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
        for cfg in configs:
            space.validate(cfg)
        num = trainer.cfg["eval"]["calib_batches"]
        calibrate_bn(trainer.model, trainer.calibration_batches(num), configs, num_batches=num, device=trainer.device)
        records = evaluate_configs(
            trainer.model, _eval_batches(trainer.val_loader(), trainer.device), configs, views=("1x1",),
            device=trainer.device, progress=False, require_calibrated=True,
            max_batches=trainer.cfg["eval"]["max_batches"],
        )
        for r in records:
            top1, top5, videos = all_reduce_sum(
                [r.top1 * r.num_videos / 100.0, r.top5 * r.num_videos / 100.0, float(r.num_videos)], trainer.device)
            if videos == 0:
                raise RuntimeError("the validation dataset yielded no clip: check data.val")
            rows.append({"config": r.config.tag, "width": r.width, "frames": r.frames, "crop": r.crop,
                         "gflops": r.gflops_per_view, "top1": 100.0 * top1 / videos, "top5": 100.0 * top5 / videos,
                         "videos": int(round(videos)), "calibrated": True})
    if trainer.is_main:
        atomic_write_text(os.path.join(trainer.output_dir, "final_evaluation.json"),
                          json.dumps({"rows": rows}, indent=1) + "\n")
        print(format_table(rows, num_classes=_num_classes(trainer)))
        trainer.writer = MetricsWriter(trainer.output_dir, tensorboard=False, enabled=True)
        for row in rows:
            trainer.writer.write(trainer.iteration, {f"final/{row['config']}/top1": row["top1"],
                                                     f"final/{row['config']}/top5": row["top5"]})
        trainer.writer.close()
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


def format_table(rows: Sequence[Mapping[str, Any]], *, num_classes: int | None = None) -> str:
    """The final-evaluation table: configuration, BN statistics, GFLOPs of one clip and its
    ratio to the most expensive row (``cost``), top-1 and top-5 (%) and videos.

    Top-5 is left out when ``num_classes <= 5``: every prediction is then in the top 5.
    """
    show_top5 = num_classes is None or num_classes > 5
    costs = [r["gflops"] for r in rows if r["gflops"] is not None]
    full = max(costs) if costs else None
    head = f"{'config':<18} {'BN':<10} {'GFLOPs':>9} {'cost':>6} {'top1':>7}"
    lines = [head + (f" {'top5':>7}" if show_top5 else "") + f" {'videos':>7}"]
    for r in rows:
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.4f}"
        cost = "-" if r["gflops"] is None or not full else f"{r['gflops'] / full:.2f}x"
        line = (f"{r['config']:<18} {'calibrated' if r['calibrated'] else 'shared':<10} {gflops:>9} {cost:>6} "
                f"{r['top1']:7.2f}")
        lines.append(line + (f" {r['top5']:7.2f}" if show_top5 else "") + f" {r['videos']:7d}")
    return "\n".join(lines)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, *, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, dynamic_ncols=True, desc="train")
