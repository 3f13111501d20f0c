"""The 2D projects' run: the video runs' config loader, schema, Trainer and hooks.

``projects/<task>/train_net.py --config FILE [--resume] [key=value ...]`` is
:func:`run_project`: :func:`~mutualnet_video.engine.config.load_config` (the same schema
as the video configs: ``model``, ``task``, ``data``, ``optim``, ``train``), then inside
:func:`~mutualnet_video.engine.launch` the :class:`~mutualnet_video.engine.Trainer` with
the config's ``task`` (optimizer, LR schedule, checkpoints, resume, metrics as for
video), printing the loss terms of every configuration of every iteration. After
training: post-statistics BN calibration of every evaluation configuration
(``calibrate_bn`` on at most ``eval.calib_batches`` training batches, through the task's
calibration view) and the task's score of each on ``data.val`` (else the training set).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..core import SubnetConfig, use_config
from ..engine import ConfigError, HookBase, Trainer, launch, load_config
from ..evaluation import calibrate_bn

__all__ = ["run_project", "evaluate_project", "PrintLossTerms"]

Report = list[tuple[SubnetConfig, dict[str, float]]]


class PrintLossTerms(HookBase):
    """Prints ``iter <i> <configuration>: term=value ...`` for every configuration of every
    iteration and keeps them in ``history`` (one report per iteration)."""

    def __init__(self) -> None:
        self.history: list[Report] = []

    def after_step(self) -> None:
        t = self.trainer
        configs = [SubnetConfig.from_tag(tag.split("#")[0]) for tag in t.step_losses]
        report = list(zip(configs, t.step_terms))
        for subnet, terms in report:
            print(f"iter {t.iteration - 1} {subnet}: " + " ".join(f"{k}={v:.4f}" for k, v in terms.items()))
        self.history.append(report)


def _whole(dataset: Any) -> Any:
    """Every item of ``dataset`` as one collated batch (the toy sets are small)."""
    loader = DataLoader(dataset, batch_size=len(dataset), collate_fn=getattr(dataset, "collate_fn", None))
    return next(iter(loader))


@torch.no_grad()
def evaluate_project(trainer: Trainer) -> dict[SubnetConfig, Any]:
    """Calibrate BN per configuration of the model's space, then the task's score of each."""
    task, model, space = trainer.task, trainer.model, trainer.space
    configs = space.grid()
    loader = DataLoader(trainer.train_dataset, batch_size=trainer.cfg["data"]["batch_size"],
                        collate_fn=getattr(trainer.train_dataset, "collate_fn", None))
    batches = [task.split(b, trainer.device)[0] for _, b in zip(range(trainer.cfg["eval"]["calib_batches"]), loader)]
    used = calibrate_bn(task.calibration_view(model), batches, configs, num_batches=len(batches),
                        input_fn=task.calibration_input, device=trainer.device)
    print(f"calibrated BN statistics of {len(configs)} configurations on {used} batches")
    inputs, targets = task.split(_whole(trainer.val_dataset or trainer.train_dataset), trainer.device)
    was_training = model.training
    model.eval()
    results = {}
    try:
        for subnet in configs:
            with use_config(model, subnet):
                results[subnet], text = task.score(model, subnet, inputs, targets)
            print(f"eval {subnet}: {text}")
    finally:
        model.train(was_training)
    return results


def run_project(argv: Sequence[str] | None = None, *, description: str = "") -> dict[str, Any]:
    """Parse ``--config FILE [--resume] [key=value ...]``, train, calibrate and score.

    Returns ``{"history": [report per iteration], task.score_name: {configuration: score}}``.
    A bad config prints one line (``train_net: <key>: <problem>``) and exits with status 2.
    """
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0] if description else None)
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last_checkpoint")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.max_iters=2")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, list(args.overrides) + (["train.resume=true"] if args.resume else []))
    except ConfigError as exc:
        print(f"train_net: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    with launch(cfg):
        trainer = Trainer(cfg)
        if trainer.space is None:
            raise ConfigError(f"model._target_: {cfg['model']['_target_']} built a model without a ConfigSpace")
        printer = PrintLossTerms()
        trainer.register_hooks([printer])
        trainer.train()
        results = evaluate_project(trainer)
    return {"history": printer.history, trainer.task.score_name: results}
