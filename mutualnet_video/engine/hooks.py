"""Hooks of the training loop (detectron2's ``HookBase``): everything around the step.

:class:`~mutualnet_video.engine.trainer.TrainerBase` runs ``run_step`` and calls, on each
registered hook in order: ``before_train``; ``before_step`` / ``after_step`` around every
iteration (``trainer.iteration`` counts the finished ones); ``on_exception`` if the loop
raises (a hook may raise a more informative error instead); ``after_train`` always. The
:class:`~mutualnet_video.engine.trainer.Trainer` registers, in this order:

* :class:`MetricsLogger`: the training scalars (median over the logging window) to
  ``metrics.jsonl`` / TensorBoard, a log line or the progress bar;
* :class:`DataStats`: the training videos decoded and failed (by reason), once per epoch;
* :class:`PeriodicCheckpointer`: ``model_<iteration>.pth`` every ``train.checkpoint_period``
  iterations and ``model_final.pth`` at the end;
* :class:`PeriodicValidation`: top-1/top-5 of the full configuration every
  ``train.eval_period`` iterations and at the end;
* :class:`NanGuard`: a non-finite loss stops the run with one message naming the
  configuration and the last good checkpoint, also written to ``metrics.jsonl``.

:class:`FinalEvaluation` (BN calibration per configuration, then the final table or the
task's scores) is added by ``tools/train_net.py`` and the 2D projects' ``run_project``.
:class:`RankDump` (every rank's starting and final weights and the samples it trained on,
to check a multi-process run) is added when the environment variable
``MUTUALNET_VIDEO_RANK_DUMP`` names a folder.
These hooks read the :class:`~mutualnet_video.engine.trainer.Trainer`'s writer,
checkpointer, stream and validation; a hook for a bare ``TrainerBase`` uses only the loop's
attributes (``iteration``, ``max_iters``, ``step_losses``, ``step_terms``, timings).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..io import atomic_path

if TYPE_CHECKING:
    from ..core import SubnetConfig
    from .trainer import Trainer

__all__ = ["HookBase", "MetricsLogger", "DataStats", "PeriodicCheckpointer", "PeriodicValidation", "NanGuard",
           "FinalEvaluation", "RankDump", "RANK_DUMP_ENV"]

#: Environment variable: a folder where every rank writes ``rank<RANK>.pt`` (:class:`RankDump`).
RANK_DUMP_ENV = "MUTUALNET_VIDEO_RANK_DUMP"

logger = logging.getLogger(__name__)


class HookBase:
    """Base class: every method is a no-op. ``self.trainer`` is set by ``register_hooks``."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def on_exception(self, exc: BaseException) -> None:
        pass


class MetricsLogger(HookBase):
    """Training scalars every ``period`` iterations (and at the last one).

    Writes ``train/loss_full``, ``train/loss_distill`` (mean over the sub-networks),
    ``train/loss_total``, ``train/lr``, ``train/clips_per_s``, ``train/data_time`` and
    ``train/iter_time`` (medians over the window; the LR and full loss of the last step)
    and every configuration's loss; a tqdm bar on rank 0 if ``progress``, else a log line.
    """

    def __init__(self, period: int, *, progress: bool = False) -> None:
        self.period = period
        self.progress = progress
        self._bar: Any = None
        self._window: list[dict[str, float]] = []

    def before_train(self) -> None:
        t = self.trainer
        if self.progress and t.is_main:
            from tqdm import tqdm

            self._bar = tqdm(total=t.max_iters, initial=t.iteration, dynamic_ncols=True, desc="train")

    def after_step(self) -> None:
        t = self.trainer
        values = list(t.step_losses.values())
        clips_per_s = t.clips_per_iter / t.step_time
        self._window.append({
            "loss_full": values[0],
            "loss_distill": float(np.mean(values[1:])) if len(values) > 1 else 0.0,
            "loss_total": float(sum(values)),
            "lr": t.step_lr,
            "clips_per_s": clips_per_s,
            "data_time": t.data_time,
            "iter_time": t.step_time,
        })
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{t.step_lr:.3g}", clips_s=f"{clips_per_s:.1f}")
        if t.iteration % self.period == 0 or t.iteration == t.max_iters:
            window = self._window
            avg = {k: float(np.median([w[k] for w in window])) for k in window[0]}
            avg["lr"], avg["loss_full"] = window[-1]["lr"], window[-1]["loss_full"]
            t.writer.write(t.iteration, {f"train/{k}": v for k, v in avg.items()}, losses=t.step_losses,
                           epoch=t.stream.epoch)
            if t.is_main and self._bar is None:
                logger.info("iter %d/%d  loss_full %.4f  loss_distill %.4f  lr %.4g  clips/s %.2f  data %.3fs",
                            t.iteration, t.max_iters, avg["loss_full"], avg["loss_distill"], avg["lr"],
                            avg["clips_per_s"], avg["data_time"])
            window.clear()

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class DataStats(HookBase):
    """The training dataset's decode counts, once per epoch: ``data/decoded`` (clips),
    ``data/failed`` (videos) and ``data/failed/<reason>``, summed over the DataLoader workers
    and the ranks, to ``metrics.jsonl`` and the log (rank 0).

    For a dataset with ``reduced_stats(device)`` (``mutualnet_video.data.VideoDataset``). The
    counts, cumulative since the start of the process, are read every ``period`` iterations
    (every rank at the same iteration: the sum over ranks is a collective) and written
    (with ``epoch``: the epochs begun) at the first read after an epoch ended, and at the end.
    """

    def __init__(self, period: int) -> None:
        self.period = period
        self._epoch = 0

    def after_step(self) -> None:
        t = self.trainer
        if t.iteration % self.period == 0 or t.iteration == t.max_iters:
            self._report(final=t.iteration == t.max_iters)

    def _report(self, *, final: bool) -> None:
        t = self.trainer
        reduced = getattr(t.train_dataset, "reduced_stats", None)
        if reduced is None:
            return
        stats = reduced(t.device)
        epoch = t.stream.epoch  # epochs begun: the counts cover the ones before it
        if epoch == self._epoch and not final:
            return
        self._epoch = epoch
        scalars = {"data/decoded": stats["decoded"], "data/failed": stats["failed"]}
        scalars.update({f"data/failed/{k}": v for k, v in stats.get("failed_by_reason", {}).items()})
        t.writer.write(t.iteration, scalars, epoch=epoch)
        if t.is_main:
            reasons = ", ".join(f"{k} {v}" for k, v in stats.get("failed_by_reason", {}).items() if v)
            logger.info("data after %s: %d clips decoded, %d of %d videos failed%s",
                        "training" if final else f"epoch {epoch - 1}", stats["decoded"], stats["failed"],
                        stats.get("videos", 0), f" ({reasons})" if reasons else "")


class PeriodicCheckpointer(HookBase):
    """``model_<iteration:07d>.pth`` every ``period`` iterations; ``model_final.pth`` at the end."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        t = self.trainer
        if t.iteration % self.period == 0 and t.iteration < t.max_iters:
            t.save_checkpoint(f"model_{t.iteration:07d}")

    def after_train(self) -> None:
        t = self.trainer
        if t.iteration >= t.max_iters and not t.failed:
            t.save_checkpoint("model_final")


class PeriodicValidation(HookBase):
    """``trainer.validate()`` every ``period`` iterations (0: never during training) and
    once at the end (unless the last iteration just validated). The last result is
    ``trainer.metrics``."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        t = self.trainer
        if self.period and t.iteration % self.period == 0:
            t.metrics = t.validate()

    def after_train(self) -> None:
        t = self.trainer
        if t.iteration >= t.max_iters and not t.failed and not (self.period and t.iteration % self.period == 0):
            t.metrics = t.validate()


class NanGuard(HookBase):
    """Turns a non-finite loss (``FloatingPointError`` from ``mutual_step``: the optimizer
    step was not taken, no checkpoint is written after it) into one message naming the
    configuration and the last good checkpoint, logged and written to ``metrics.jsonl``."""

    def on_exception(self, exc: BaseException) -> None:
        if not isinstance(exc, FloatingPointError):
            return
        t = self.trainer
        last = t.checkpointer.get_checkpoint_file() if t.checkpointer.has_checkpoint() else "none"
        message = f"training stopped: {exc}. Last good checkpoint: {last}"
        t.writer.write(t.iteration, {}, error=message)
        logger.error(message)
        raise FloatingPointError(message) from exc


class FinalEvaluation(HookBase):
    """After a finished run: BN calibration per configuration and the final table
    (:func:`~mutualnet_video.engine.trainer.final_evaluation`); the rows are
    ``trainer.final_rows``."""

    def __init__(self, configs: list[SubnetConfig] | None = None) -> None:
        self.configs = configs

    def after_train(self) -> None:
        from .trainer import final_evaluation

        t = self.trainer
        if t.iteration >= t.max_iters and not t.failed:
            t.final_rows = final_evaluation(t, configs=self.configs)


class RankDump(HookBase):
    """A debugging aid for multi-process runs: at the end of training every rank writes
    ``<folder>/rank<RANK>.pt`` (``torch.load(..., weights_only=True)``-able)::

        {"rank", "world_size", "iteration": int,
         "env": {name: str},                  # torchrun's RANK, LOCAL_RANK, GROUP_RANK, ... as set
         "initial_model": state_dict,         # this rank's weights when the loop started
         "model": state_dict,                 # this rank's weights at the end (compare them across ranks)
         "indices": {epoch: [int, ...]}}      # the samples of its batches (BatchStream.record_indices)

    Registered by :meth:`~mutualnet_video.engine.trainer.Trainer.build_hooks` when the
    environment variable ``MUTUALNET_VIDEO_RANK_DUMP`` names the folder; it costs nothing
    otherwise. ``before_train`` creates the folder and checks it is writable (a
    ``ConfigError`` naming the variable, before the first iteration); the file is written
    whether or not the run finished (``iteration`` says).
    """

    ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._indices: dict[int, list[int]] = {}
        self._initial: dict[str, torch.Tensor] | None = None  # set once the folder is known writable

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.trainer.model.state_dict().items()}

    def before_train(self) -> None:
        from .launch import check_writable

        check_writable(self.folder, key=RANK_DUMP_ENV)
        self._indices = self.trainer.stream.record_indices()
        self._initial = self._weights()

    def after_train(self) -> None:
        if self._initial is None:  # before_train failed (or never ran): nothing to compare with
            return
        t = self.trainer
        state = {
            "rank": t.rank, "world_size": t.world_size, "iteration": t.iteration,
            "env": {k: os.environ[k] for k in self.ENV_KEYS if k in os.environ},
            "initial_model": self._initial,
            "model": self._weights(),
            "indices": {int(e): list(v) for e, v in self._indices.items()},
        }
        with atomic_path(os.path.join(self.folder, f"rank{t.rank}.pt")) as tmp:
            torch.save(state, tmp)
