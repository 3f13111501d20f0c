"""The 2D projects' run: the video runs' config loader, schema, Trainer and hooks.

``projects/<task>/train_net.py --config FILE [--resume] [key=value ...]`` is
:func:`run_project`: :func:`~mutualnet_video.engine.config.load_config` (the same schema
as the video configs: ``model``, ``task``, ``data``, ``optim``, ``train``), then inside
:func:`~mutualnet_video.engine.launch` the :class:`~mutualnet_video.engine.Trainer` with
the config's ``task`` (optimizer, LR schedule, checkpoints, resume, metrics as for
video), printing the loss terms of every configuration of every iteration. After
training, the :class:`~mutualnet_video.engine.FinalEvaluation` hook over every
configuration of the model's space: post-statistics BN calibration (``calibrate_bn`` on
``eval.calib_batches`` training batches, through the task's calibration view), then the
task's score of each on ``data.val`` (the final table for classification).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core import SubnetConfig
from ..engine import ConfigError, FinalEvaluation, HookBase, Trainer, launch, load_config
from ..engine.cli import ArgumentParser, run_tool, setup_logging

__all__ = ["run_project", "PrintLossTerms"]

Report = list[tuple[SubnetConfig, dict[str, float]]]


class PrintLossTerms(HookBase):
    """Prints ``iter <i> <configuration>: term=value ...`` for every configuration of every
    iteration (unless ``echo=False``) and keeps them in ``history`` (one report per iteration)."""

    def __init__(self, *, echo: bool = True) -> None:
        self.history: list[Report] = []
        self.echo = echo

    def after_step(self) -> None:
        t = self.trainer
        configs = [SubnetConfig.from_tag(tag.split("#")[0]) for tag in t.step_losses]
        report = list(zip(configs, t.step_terms))
        if self.echo:
            for subnet, terms in report:
                print(f"iter {t.iteration - 1} {subnet}: " + " ".join(f"{k}={v:.4f}" for k, v in terms.items()))
        self.history.append(report)


def run_project(argv: Sequence[str] | None = None, *, description: str = "") -> dict[str, Any]:
    """Parse ``--config FILE [--resume] [key=value ...]``, train, calibrate and score.

    Returns ``{"history": [report per iteration], "final": the final evaluation's rows}``.
    Bad input prints one line (``train_net: <key>: <problem>``) and exits with status 2
    (``--debug``: the traceback instead). ``--quiet``: only the final evaluation is printed
    (no per-iteration loss lines, no progress bar, no log line below WARNING).
    """
    parser = ArgumentParser(prog="train_net", description=description.strip().splitlines()[0] if description else None)
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last_checkpoint")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.max_iters=2")
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet)
    printer = PrintLossTerms(echo=not args.quiet)
    overrides = (list(args.overrides) + (["train.resume=true"] if args.resume else [])
                 + (["train.progress=false"] if args.quiet else []))

    def work() -> dict[str, Any]:
        cfg = load_config(args.config, overrides)
        with launch(cfg):
            trainer = Trainer(cfg)
            if trainer.space is None:
                raise ConfigError(f"model._target_: {cfg['model']['_target_']} built a model without a ConfigSpace")
            trainer.register_hooks([printer, FinalEvaluation(configs=trainer.space.grid())])
            trainer.train()
        return {"history": printer.history, "final": trainer.final_rows}

    result = run_tool("train_net", work, debug=args.debug)
    if isinstance(result, int):
        raise SystemExit(result)
    return result
