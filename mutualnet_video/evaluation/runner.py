"""What ``tools/test_net.py`` runs, as library functions: weights in, budget table out.

* :func:`load_weights`: a checkpoint into a model, ``weights_only=True``, strict, the
  mismatched keys named.
* :func:`save_weights`: an atomic checkpoint write (temporary file + ``os.replace``).
* :func:`run_budgets`: optional BN calibration, evaluation of every configuration x
  views, ``budgets.json`` / ``budgets.csv`` and the accuracy-vs-cost plots.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import SubnetConfig
from ..io import atomic_path
from .budgets import BudgetRecord, format_table, plot_budgets, save_budgets
from .calibration import calibrate_bn
from .evaluator import FlopsFn, evaluate_configs

__all__ = ["CheckpointMismatchError", "load_weights", "save_weights", "calibrated_path", "run_budgets"]


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes do not match the model (the message names them)."""


_STATE_KEYS = ("model", "model_state", "state_dict", "model_state_dict")


def _state_dict_of(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a plain state dict, a Trainer checkpoint (``"model"``) or a
    PyTorchVideo model-zoo checkpoint (``"model_state"``)."""
    if isinstance(payload, dict):
        for key in _STATE_KEYS:
            inner = payload.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                payload = inner
                break
    if not isinstance(payload, dict) or not payload or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        top = sorted(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: neither a state dict nor a checkpoint holding one under "
                         f"{' / '.join(_STATE_KEYS)} (found {top})")
    if all(k.startswith("module.") for k in payload):  # saved from a DDP wrapper
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return payload


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")


def load_weights(model: nn.Module, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Load ``path`` into ``model``, strictly; ``torch.load(weights_only=True)``.

    ``path`` holds a plain state dict, a Trainer checkpoint (``{"model": ..., "optimizer":
    ..., ...}``, e.g. ``output_dir/model_final.pth``), or a PyTorchVideo model-zoo
    checkpoint (``{"model_state": ...}``). Per-configuration BN statistics
    (``*.config_stats.*``) load when present and are not required.

    Returns the whole checkpoint payload. Raises ``FileNotFoundError`` naming the path and
    :class:`CheckpointMismatchError` naming the missing / unexpected / mis-shaped keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    state = _state_dict_of(payload, path)
    own = model.state_dict()
    expected = {k for k in own if ".config_stats." not in k}
    given = {k for k in state if ".config_stats." not in k}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    shapes = [f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
              for k in sorted(expected & given) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{label}: {_listed(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if keys]
        raise CheckpointMismatchError(f"{path} does not match the model: " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{path}: {e}") from None
    return payload if isinstance(payload, dict) else {"model": state}


def save_weights(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (atomic)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def calibrated_path(checkpoint: str | os.PathLike) -> Path:
    """``model.pth`` -> ``model_calibrated.pth`` (next to it)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_calibrated{checkpoint.suffix or '.pth'}")


def run_budgets(
    model: nn.Module,
    *,
    test_loader: Iterable[dict[str, Any]],
    configs: Sequence[SubnetConfig],
    views: Sequence[str] = ("1x1",),
    output_dir: str | os.PathLike,
    calibration_batches: Iterable[Any] | None = None,
    calibration_num_batches: int = 9,
    device: torch.device | str = "cpu",
    flops_fn: FlopsFn | None = None,
    params_fn: FlopsFn | None = None,
    latency_repeats: int = 0,
    latency_threads: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> list[BudgetRecord]:
    """Calibrate (if ``calibration_batches``), evaluate, and write the budget table.

    Writes ``budgets.json``, ``budgets.csv``, ``top1_vs_gflops.png`` and, with latency,
    ``top1_vs_latency.png`` into ``output_dir``. Without calibration batches the model
    must already hold calibrated statistics for every configuration
    (:class:`NotCalibratedError` otherwise).
    """
    if calibration_batches is not None:
        calibrate_bn(model, calibration_batches, configs, num_batches=calibration_num_batches, device=device)
    records = evaluate_configs(
        model, test_loader, configs, views=views, device=device, progress=progress, flops_fn=flops_fn,
        params_fn=params_fn, require_calibrated=True, latency_repeats=latency_repeats,
        latency_threads=latency_threads, max_batches=max_batches,
    )
    output_dir = Path(output_dir)
    meta = dict(meta or {}, views=list(views), latency_threads=latency_threads,
                torch=torch.__version__, device=str(device))
    save_budgets(records, output_dir, meta=meta)
    plot_budgets(records, output_dir / "top1_vs_gflops.png", cost="gflops_per_video")
    if latency_repeats > 0:
        plot_budgets(records, output_dir / "top1_vs_latency.png", cost="latency_ms")
    (output_dir / "budgets.txt").write_text(format_table(records) + "\n", encoding="utf-8")
    return records
