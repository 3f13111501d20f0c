"""Test time from a config: checkpoint in, calibrated checkpoint and budget table out.

What ``tools/test_net.py`` and ``tools/export_net.py`` run, as library functions:

* :func:`load_model`: ``build_model(cfg)`` then the checkpoint (a Trainer checkpoint
  ``output_dir/model_final.pth``, a plain state dict or a PyTorchVideo zoo
  ``{"model_state": ...}``), strict, ``weights_only``.
* :func:`eval_grid` / :func:`eval_views`: the configurations and view specs to test
  (command line, else the config's ``eval`` section, else the model's space).
* :func:`build_test_loader`: ``data.val``'s dataset with ``split="test"`` and the views.
* :func:`build_calibration_loader`: ``data.train``'s dataset (training transforms).
* :func:`run_test`: calibrate (optional; the calibrated checkpoint is saved atomically
  before the evaluation starts), evaluate every configuration x views, write
  ``budgets.json`` / ``budgets.csv`` / ``budgets.txt`` / plots.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_weights, save_weights
from ..core import ConfigSpace, SubnetConfig, get_space
from ..evaluation import BudgetRecord, ViewSpec, calibrate_bn, check_calibrated, evaluate_configs, write_report
from .config import ConfigError, build_dataset, build_model

__all__ = [
    "TestResult",
    "calibrated_path",
    "load_model",
    "eval_grid",
    "eval_views",
    "build_test_loader",
    "build_calibration_loader",
    "run_test",
]


@dataclass(frozen=True)
class TestResult:
    """What :func:`run_test` produced."""

    __test__ = False  # not a pytest class

    records: list[BudgetRecord]
    output_dir: Path
    calibrated_checkpoint: Path | None


def load_model(cfg: Mapping[str, Any], checkpoint: str | os.PathLike, *,
               device: str | torch.device = "cpu") -> tuple[nn.Module, ConfigSpace, dict]:
    """The config's model with ``checkpoint`` loaded (``model.weights`` is skipped: the
    checkpoint replaces it). Returns ``(model in eval mode, its space, checkpoint payload)``."""
    cfg = copy.deepcopy(dict(cfg))
    cfg["model"] = {**cfg["model"], "weights": None}
    model = build_model(cfg)
    space = get_space(model)
    if space is None:
        raise ConfigError(f"model._target_: {cfg['model']['_target_']} built a model without a ConfigSpace; "
                          "test_net evaluates MutualNet models (mutualnet_video.models builders)")
    payload = load_weights(model, checkpoint, source="checkpoint")
    return model.to(device).eval(), space, payload


def eval_grid(cfg: Mapping[str, Any], space: ConfigSpace, *, widths: Sequence[float] | None = None,
              frames: Sequence[int] | None = None, crops: Sequence[int] | None = None) -> list[SubnetConfig]:
    """widths x frames x crops: the arguments, else ``eval.widths/frames/crops``, else the
    space's evaluation widths, frames and crops. Each configuration is validated against
    the space (``ValueError`` naming the value outside it)."""
    ecfg = cfg["eval"]
    widths = list(widths or ecfg["widths"] or space.widths)
    frames = list(frames or ecfg["frames"] or space.frames)
    crops = list(crops or ecfg["crops"] or space.crops)
    grid = [SubnetConfig(float(w), f, c) for w in widths for f in frames for c in crops]
    for c in grid:
        try:
            space.validate(c)
        except ValueError as e:
            raise ValueError(f"test configuration {c.tag}: {e}") from None
    return list(dict.fromkeys(grid))


def eval_views(cfg: Mapping[str, Any], views: Sequence[str] | str | None = None) -> list[ViewSpec]:
    """View specs from ``views`` (``"1x1,3x1"`` or a list), else ``eval.views``."""
    if isinstance(views, str):
        views = [v for v in views.split(",") if v.strip()]
    specs = list(dict.fromkeys(ViewSpec.parse(v) for v in (views or cfg["eval"]["views"])))
    spatial = max(s.spatial for s in specs)
    if spatial not in (1, 3):
        raise ValueError(f"views {', '.join(map(str, specs))}: the test loader takes 1 or 3 spatial crops "
                         f"per clip, not {spatial}")
    return specs


def calibrated_path(checkpoint: str | os.PathLike) -> Path:
    """``model.pth`` -> ``model_calibrated.pth`` (next to it)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_calibrated{checkpoint.suffix or '.pth'}")


def build_test_loader(cfg: Mapping[str, Any], space: ConfigSpace, *, views: Sequence[ViewSpec]):
    """``data.val``'s dataset as ``split="test"`` with the most views any spec uses
    (``temporal_clips`` x ``spatial_crops``; ``eval.clip_duration`` if set), batched by
    ``eval.batch_size`` (default ``data.val_batch_size`` / ``data.batch_size``)."""
    from ..data import build_loader

    temporal, spatial = max(v.temporal for v in views), max(v.spatial for v in views)
    optional: dict[str, Any] = {"split": "test"}
    if cfg["eval"]["clip_duration"] is not None:
        optional["clip_duration"] = cfg["eval"]["clip_duration"]
    required = {k: v for k, v in (("temporal_clips", temporal), ("spatial_crops", spatial)) if v > 1}
    dataset = build_dataset(cfg, "val", space=space, options=optional, required=required, optional_node=False)
    dcfg = cfg["data"]
    batch = cfg["eval"]["batch_size"] or dcfg["val_batch_size"] or dcfg["batch_size"]
    return build_loader(dataset, batch_size=batch, num_workers=dcfg["num_workers"])


def build_calibration_loader(cfg: Mapping[str, Any], space: ConfigSpace):
    """``data.train``'s dataset (training transforms, ``train.seed``) in batches of
    ``data.batch_size``: the batches BN calibration averages over."""
    from ..data import build_loader

    dataset = build_dataset(cfg, "train", space=space, seed=cfg["train"]["seed"], optional_node=False)
    return build_loader(dataset, batch_size=cfg["data"]["batch_size"], num_workers=cfg["data"]["num_workers"])


def run_test(
    cfg: Mapping[str, Any],
    *,
    checkpoint: str | os.PathLike,
    calibrate: bool = False,
    widths: Sequence[float] | None = None,
    frames: Sequence[int] | None = None,
    crops: Sequence[int] | None = None,
    views: Sequence[str] | str | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    latency_repeats: int = 0,
    latency_threads: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> TestResult:
    """Evaluate ``checkpoint`` over widths x frames x crops x views; write the budget table.

    With ``calibrate``, BN statistics are recomputed for every configuration on
    ``eval.calib_batches`` training batches (each decoded batch serves every
    configuration) and the model is saved, atomically, as ``<checkpoint>_calibrated.pth``
    next to the input before the evaluation starts. Without it the checkpoint must
    already hold calibrated statistics for every configuration
    (:class:`~mutualnet_video.evaluation.NotCalibratedError`, saying how to calibrate,
    raised before any video is decoded).

    ``output_dir`` defaults to ``<checkpoint folder>/budgets``. ``max_batches`` defaults
    to ``eval.max_batches``.
    """
    specs = eval_views(cfg, views)  # a bad view spec fails before anything is loaded
    model, space, _ = load_model(cfg, checkpoint, device=device)
    configs = eval_grid(cfg, space, widths=widths, frames=frames, crops=crops)
    saved = None
    if calibrate:
        num = cfg["eval"]["calib_batches"]
        calibrate_bn(model, build_calibration_loader(cfg, space), configs, num_batches=num, device=device)
        saved = save_weights({"model": model.state_dict(), "calibrated": [c.tag for c in configs],
                              "calibration_batches": num, "source": str(checkpoint)}, calibrated_path(checkpoint))
    else:
        check_calibrated(model, configs)
    output = Path(output_dir) if output_dir is not None else Path(checkpoint).parent / "budgets"
    records = evaluate_configs(
        model, build_test_loader(cfg, space, views=specs), configs, views=[str(v) for v in specs], device=device,
        progress=progress, require_calibrated=True, latency_repeats=latency_repeats, latency_threads=latency_threads,
        max_batches=max_batches if max_batches is not None else cfg["eval"]["max_batches"],
    )
    meta = {"checkpoint": str(checkpoint), "calibrated_checkpoint": None if saved is None else str(saved),
            "model": cfg["model"]["_target_"], "views": [str(v) for v in specs], "latency_threads": latency_threads,
            "torch": torch.__version__, "device": str(device)}
    write_report(records, output, meta=meta)
    return TestResult(records=records, output_dir=output, calibrated_checkpoint=saved)
