"""Lightning 2.x: train a slimmable model with the sandwich rule from a Lightning ``Trainer``.

* :class:`MutualNetModule`: a ``LightningModule`` whose ``training_step`` is one
  :func:`~mutualnet_video.engine.mutual_step` (the full configuration, the smallest and
  random sub-networks, in-place distillation) with ONE optimizer step per iteration.
  Manual optimization: every backward goes through ``manual_backward`` (so Lightning's
  precision plugin scales the loss), the step through the ``LightningOptimizer`` (so the
  plugin unscales, skips non-finite steps and the step counts as ``global_step``). Under
  Lightning's DDP strategy the backward passes of all but the last configuration run
  inside ``strategy.block_backward_sync()``: the gradients are all-reduced once per
  iteration, in the last backward.
* :class:`CalibrateBN`: a callback that, at the end of fit, recalibrates the BN statistics
  of each evaluated configuration on training batches
  (:func:`~mutualnet_video.evaluation.calibrate_bn`), scores them on the validation data
  (:func:`~mutualnet_video.evaluation.evaluate_configs`: top-1/top-5 and GFLOPs) and logs
  the table (:func:`~mutualnet_video.evaluation.format_table`).
* :class:`SlimLayerSync`: synchronized BN, ``Trainer(plugins=[SlimLayerSync()])`` in place of
  ``sync_batchnorm=True``, whose ``torch.nn.SyncBatchNorm`` would replace the slimmable BN
  layers and drop their width switching.

Precision (``"bf16-mixed"``, ``"16-mixed"``) and the strategy are Lightning's settings;
the module passes neither ``amp`` nor a ``GradScaler`` to ``mutual_step``. Needs the
``[lightning]`` extra; ``import mutualnet_video`` never imports Lightning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

try:
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.layer_sync import LayerSync
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mutualnet_video.integrations.lightning needs Lightning 2.x, which is not installed: "
        'pip install -e ".[lightning]"'
    ) from exc

import torch
from torch import nn

from ..core import SubnetConfig, convert_slim_sync_batchnorm, get_space, use_config
from ..engine.config import SCHEMA, instantiate
from ..engine.distributed import all_reduce_sum
from ..engine.mutual import SandwichSampler, SingleSampler, mutual_step
from ..engine.optim import build_lr_scheduler, build_optimizer
from ..engine.task import ClassificationTask
from ..engine.trainer import default_eval_configs, eval_batches
from ..evaluation import BudgetRecord, calibrate_bn, evaluate_configs, format_table

__all__ = ["MutualNetModule", "CalibrateBN", "SlimLayerSync"]

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _plain(node: Any) -> Any:
    """An OmegaConf node (Hydra hands them over with ``_recursive_=False``) as plain dicts and lists."""
    if type(node).__module__.split(".")[0] == "omegaconf":
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)
    return node


def _build(node: Any, path: str) -> Any:
    """A ``_target_`` mapping (or OmegaConf node) built with the project's ``instantiate``;
    anything else as it is."""
    node = _plain(node)
    return instantiate(node, _path=path) if isinstance(node, Mapping) and "_target_" in node else node


_OPTIMIZER_KEYS = ("name", "lr", "momentum", "nesterov", "betas", "weight_decay", "wd_exclude_bn_bias",
                   "wd_exclude_depthwise")
_SCHEDULE_KEYS = ("warmup_iters", "warmup_factor", "min_lr_factor")


def _optim_section(values: Mapping[str, Any], keys: Sequence[str], path: str) -> dict[str, Any]:
    """``values`` over the defaults of the ``optim`` schema; keys outside ``keys`` raise naming ``path``."""
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; expected some of {list(keys)}")
    spec = SCHEMA["optim"]
    return {key: spec[key].default for key in spec} | dict(values)


class MutualNetModule(pl.LightningModule):
    """Sandwich-rule training of a slimmable model (one ``mutual_step`` per training step).

    Args:
        model: the slimmable model with its ``ConfigSpace`` attached (our builders, or
            ``convert``), or a ``_target_`` mapping that builds it (also an OmegaConf node:
            Hydra passes them with ``instantiate(cfg.module, _recursive_=False)``, as
            pytorchvideo_trainer does).
        optim: the optimizer: a mapping with the optimizer keys of the ``optim`` section of
            our YAML configs (``name``, ``lr``, ``momentum``, ``nesterov``, ``betas``,
            ``weight_decay``, ``wd_exclude_bn_bias``, ``wd_exclude_depthwise``; missing
            keys take their defaults), or ``optim(params) -> Optimizer`` (e.g. a Hydra
            node with ``_partial_: true``).
        lr_scheduler: ``None`` (constant LR); a mapping with the schedule keys of that
            section (``warmup_iters``, ``warmup_factor``, ``min_lr_factor``; ``max_iters``,
            default ``trainer.estimated_stepping_batches``): the per-iteration warm-up +
            cosine of the built-in trainer; or ``lr_scheduler(optimizer) -> scheduler``.
            Resuming mid-epoch with a resumable dataloader (``state_dict`` /
            ``load_state_dict``) needs ``max_iters``: reading ``estimated_stepping_batches``
            makes Lightning drop the dataloader's state (Lightning issue #20550; warned).
        lr_interval: step the scheduler after every iteration (``"step"``) or every
            epoch (``"epoch"``); a mapping schedule is per iteration.
        loss: the full configuration's loss ``loss(logits, labels)`` (a callable or a
            ``_target_`` mapping such as ``torch.nn.CrossEntropyLoss``); default: the task's.
        task: what is task-specific (:class:`~mutualnet_video.engine.task.ClassificationTask`).
        mode: ``"mutual"`` (sandwich rule) or ``"single"`` (the full configuration only).
        temperature: distillation temperature.
        clip_grad_norm: clip the summed gradients to this total norm, after Lightning's
            precision plugin unscaled them (``on_before_optimizer_step``).
        seed: seeds the sandwich sampler's generator (``seed + 1``, as the built-in
            trainer); the same on every rank, so the ranks train the same sub-networks.

    Batches are ``{"video": (B, C, T, S, S), "label": (B,)}`` dicts or ``(video, label)``
    pairs holding the full configuration's clips. ``training_step`` logs ``train/loss_full``,
    ``train/loss_distill`` (mean over the sub-networks) and ``train/lr``, ``validation_step``
    ``val/top1`` (the full configuration, training BN statistics); ``step_losses``
    holds the last step's ``{configuration tag: loss}``. The sampler's generator is saved in
    the checkpoint (``mutualnet_sampler``), so a resumed run draws the same sub-networks.
    """

    def __init__(self, model: nn.Module | Mapping[str, Any], *,
                 optim: Mapping[str, Any] | OptimizerFactory | None = None,
                 lr_scheduler: Mapping[str, Any] | SchedulerFactory | None = None,
                 lr_interval: Literal["step", "epoch"] = "step",
                 loss: Callable[[Any, Any], torch.Tensor] | Mapping[str, Any] | None = None,
                 task: ClassificationTask | None = None, mode: Literal["mutual", "single"] = "mutual",
                 temperature: float = 1.0, clip_grad_norm: float | None = None, seed: int = 0) -> None:
        super().__init__()
        self.automatic_optimization = False
        if lr_interval not in ("step", "epoch"):
            raise ValueError(f"lr_interval: 'step' or 'epoch', got {lr_interval!r}")
        if mode not in ("mutual", "single"):
            raise ValueError(f"mode: 'mutual' or 'single', got {mode!r}")
        self.model = _build(model, "model")
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model: an nn.Module or a _target_ mapping, got {type(self.model).__name__}")
        space = get_space(self.model)
        if space is None:
            raise ValueError("model: has no ConfigSpace (build it with mutualnet_video's builders or attach_space)")
        self.space = space
        self.task = task if task is not None else ClassificationTask()
        self.criterion = _build(loss, "loss")
        # a _target_ node with _partial_: true becomes the factory; a plain mapping stays a mapping
        self.optim, self.lr_scheduler = _build(optim, "optim"), _build(lr_scheduler, "lr_scheduler")
        self.lr_interval = lr_interval
        if isinstance(self.lr_scheduler, Mapping) and lr_interval != "step":
            raise ValueError("lr_interval: a mapping lr_scheduler is per iteration; use lr_interval='step'")
        self.temperature, self.clip_grad_norm = temperature, clip_grad_norm
        input_fn = functools.partial(self.task.inputs, space)
        generator = torch.Generator().manual_seed(seed + 1)
        self.sampler = (SandwichSampler(space, generator=generator, input_fn=input_fn) if mode == "mutual"
                        else SingleSampler(space, input_fn=input_fn))
        self.step_losses: dict[str, float] = {}

    def forward(self, x: Any) -> Any:
        """The model at its active configuration (``use_config(module.model, cfg)`` switches it)."""
        return self.model(x)

    # -- optimization ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if callable(self.optim):
            optimizer = self.optim(self.model.parameters())
        else:
            optimizer = build_optimizer(self.model, _optim_section(self.optim or {}, _OPTIMIZER_KEYS, "optim"))
        if self.lr_scheduler is None:
            return optimizer
        if isinstance(self.lr_scheduler, Mapping):
            ocfg = _optim_section(self.lr_scheduler, (*_SCHEDULE_KEYS, "max_iters"), "lr_scheduler")
            # estimated_stepping_batches sets up the training data before a checkpoint is restored,
            # so Lightning then drops a resumable dataloader's state (Lightning issue #20550)
            max_iters = ocfg["max_iters"] or int(self.trainer.estimated_stepping_batches)
            scheduler = build_lr_scheduler(optimizer, ocfg, max_iters)
        else:
            scheduler = self.lr_scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_interval}}

    def _no_sync(self) -> Callable[[], Any] | None:
        """``strategy.block_backward_sync`` when Lightning wrapped the module in DDP, else None."""
        strategy = self.trainer.strategy
        if isinstance(strategy.model, nn.parallel.DistributedDataParallel):
            return strategy.block_backward_sync
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        task = self.task
        inputs, targets = task.split(batch, self.device)
        optimizer = self.optimizers()
        lr = optimizer.param_groups[0]["lr"]
        task.terms = []

        def distill(output: Any, teacher: Any, *, temperature: float = 1.0) -> torch.Tensor:
            return task.distill(output, teacher, targets, temperature=temperature)

        self.step_losses = mutual_step(
            task.train_view(self.model), self.sampler(inputs), targets,
            criterion=self.criterion or task.criterion, distill=distill, teacher_fn=task.teacher,
            optimizer=optimizer, temperature=self.temperature, iteration=self.global_step,
            backward=self.manual_backward, no_sync=self._no_sync(),
        )
        if self.lr_interval == "step":
            self._step_schedulers()
        values = list(self.step_losses.values())
        batch_size = targets.shape[0] if isinstance(targets, torch.Tensor) else len(targets)
        self.log_dict({"train/loss_full": values[0],
                       "train/loss_distill": sum(values[1:]) / max(len(values) - 1, 1),
                       "train/lr": lr}, on_step=True, prog_bar=True, batch_size=batch_size)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Top-1 (%) of the full configuration with the training BN statistics (``val/top1``)."""
        inputs, targets = self.task.split(batch, self.device)
        full = self.space.full()
        with use_config(self.model, full):
            logits = self.model(self.task.inputs(self.space, inputs, full))
        self.log("val/top1", 100.0 * (logits.argmax(1) == targets).float().mean(), prog_bar=True,
                 batch_size=targets.shape[0], sync_dist=True)

    def on_train_epoch_end(self) -> None:
        if self.lr_interval == "epoch":
            self._step_schedulers()

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # called inside LightningOptimizer.step, after the precision plugin unscaled the gradients
        if self.clip_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.clip_grad_norm, gradient_clip_algorithm="norm")

    # -- checkpoints ----------------------------------------------------------------------
    def on_train_start(self) -> None:
        if getattr(self.trainer.fit_loop, "_combined_loader_states_to_load", None):
            rank_zero_warn("the checkpoint's dataloader state was not restored (Lightning issue #20550, after "
                           "estimated_stepping_batches): the resumed epoch replays its first batches; give the "
                           "lr_scheduler mapping its max_iters")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if hasattr(self.sampler, "state_dict"):
            checkpoint["mutualnet_sampler"] = self.sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if hasattr(self.sampler, "load_state_dict") and "mutualnet_sampler" in checkpoint:
            self.sampler.load_state_dict(checkpoint["mutualnet_sampler"])


class CalibrateBN(pl.Callback):
    """At the end of fit: BN statistics recalibrated per configuration, then the final table.

    Args:
        configs: the configurations (default: full, a middle one and the smallest of the
            model's space, as the built-in trainer's final evaluation).
        num_batches: training batches the statistics are averaged over (9 in the paper).
        val_dataloader: the data the configurations are scored on (default: the trainer's
            validation dataloader); without any, only the calibration runs.
        max_batches: score on at most this many validation batches.

    Runs in ``on_train_end`` of a finished fit (every rank: each calibrates on its own
    training batches and scores its shard; the hits are summed over the ranks). Rank 0
    logs :func:`~mutualnet_video.evaluation.format_table` and writes ``final/<tag>/top1``,
    ``top5`` and ``gflops`` to the trainer's loggers. ``records`` holds the
    :class:`~mutualnet_video.evaluation.BudgetRecord` rows and ``table`` the text.
    """

    def __init__(self, *, configs: Sequence[SubnetConfig] | None = None, num_batches: int = 9,
                 val_dataloader: Iterable[Any] | None = None, max_batches: int | None = None) -> None:
        if num_batches < 1:
            raise ValueError(f"num_batches: must be positive, got {num_batches}")
        self.configs = None if configs is None else list(configs)
        self.num_batches, self.val_dataloader, self.max_batches = num_batches, val_dataloader, max_batches
        self.calibrated = 0
        self.records: list[BudgetRecord] = []
        self.table = ""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:
            return
        model, task, device = pl_module.model, getattr(pl_module, "task", ClassificationTask()), pl_module.device
        space = get_space(model)
        configs = list(dict.fromkeys(self.configs if self.configs is not None else default_eval_configs(space)))
        batches = []
        for batch in trainer.train_dataloader:
            if len(batches) == self.num_batches:
                break
            batches.append(task.split(batch, device)[0])
        self.calibrated = calibrate_bn(task.calibration_view(model), batches, configs, num_batches=self.num_batches,
                                       device=device, input_fn=task.calibration_input)
        loader = self.val_dataloader if self.val_dataloader is not None else trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        if loader is None:
            if trainer.is_global_zero:
                logger.info("calibrated BN statistics of %d configurations on %d batches (no validation data "
                            "to score them)", len(configs), self.calibrated)
            return
        local = evaluate_configs(model, eval_batches(loader, device), configs, device=device, progress=False,
                                 require_calibrated=True, max_batches=self.max_batches)
        self.records = []
        for r in local:
            top1, top5, videos = all_reduce_sum(
                [r.top1 * r.num_videos / 100.0, r.top5 * r.num_videos / 100.0, float(r.num_videos)], device)
            self.records.append(replace(r, top1=100.0 * top1 / videos, top5=100.0 * top5 / videos,
                                        num_videos=int(round(videos)), pareto=False))
        self.table = format_table(self.records, sort=False)
        if trainer.is_global_zero:
            logger.info("calibrated BN statistics of %d configurations on %d batches\n%s", len(configs),
                        self.calibrated, self.table)
            metrics = {f"final/{r.config.tag}/{k}": getattr(r, attr) for r in self.records
                       for k, attr in (("top1", "top1"), ("top5", "top5"), ("gflops", "gflops_per_view"))}
            for lightning_logger in trainer.loggers:
                lightning_logger.log_metrics(metrics, step=trainer.global_step)


class SlimLayerSync(LayerSync):
    """``Trainer(plugins=[SlimLayerSync()])`` (instead of ``sync_batchnorm=True``): synchronized BN that keeps
    the slimmable layers (:func:`~mutualnet_video.core.convert_slim_sync_batchnorm`: each
    ``SlimBatchNorm`` becomes a ``SlimSyncBatchNorm``, the state-dict keys stay)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_slim_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        """Kept as they are (Lightning reverts at teardown): without a process group, or in
        eval mode, a ``SlimSyncBatchNorm`` computes what the ``SlimBatchNorm`` did."""
        return model
