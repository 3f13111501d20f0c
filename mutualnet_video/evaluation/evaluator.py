"""Evaluate an adaptive model at many configurations and view counts in one pass.

Each batch of the test loader is decoded once; every configuration gets its input
from that same batch (``clip_for_config``: frames subsampled over the same span, crop
resized), and every view spec (``1x1``, ``10x3``, ...) is scored on its subset of the
loader's views. The result is one :class:`BudgetRecord` per (configuration, views).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..core import SubnetConfig, current_config, get_space, set_config, slimmable_modules
from .budgets import BudgetRecord, mark_pareto, measure_latency
from .calibration import InputFn, check_calibrated, default_input_fn
from .multiview import MultiViewAccumulator, ViewSpec, view_mask

__all__ = ["evaluate_configs", "default_flops_fn", "default_params_fn"]

FlopsFn = Callable[[nn.Module, SubnetConfig], int]


def default_flops_fn() -> FlopsFn:
    """``mutualnet_video.evaluation.flops.count_flops`` (imported lazily)."""
    try:
        from .flops import count_flops  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError(
            "mutualnet_video.evaluation.flops.count_flops is not available; pass flops_fn=(model, cfg) -> FLOPs"
        ) from e
    return count_flops


def default_params_fn() -> FlopsFn:
    """``mutualnet_video.evaluation.flops.count_params`` (imported lazily)."""
    try:
        from .flops import count_params  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError(
            "mutualnet_video.evaluation.flops.count_params is not available; pass params_fn=(model, cfg) -> int"
        ) from e
    return count_params


def _field(batch: Any, key: str) -> torch.Tensor:
    if not isinstance(batch, dict) or key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise KeyError(f"test batches must be dicts with 'video', 'label', 'video_index', 'clip_index', "
                       f"'aug_index'; missing {key!r} (got {keys})")
    return torch.as_tensor(batch[key]).reshape(-1)


def _subset(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The rows of a collated batch where ``keep`` is True (tensors and lists of length N)."""
    n, index = keep.numel(), keep.nonzero().flatten()
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list | tuple) and len(value) == n:
            out[key] = [value[i] for i in index.tolist()]
        else:
            out[key] = value
    return out


@torch.inference_mode()
def evaluate_configs(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    configs: Sequence[SubnetConfig],
    *,
    views: Sequence[str | ViewSpec] = ("1x1",),
    loader_views: str | ViewSpec | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    flops_fn: FlopsFn | None = None,
    params_fn: FlopsFn | None = None,
    input_fn: InputFn | None = None,
    require_calibrated: bool = False,
    latency_repeats: int = 0,
    latency_threads: int | None = None,
    max_batches: int | None = None,
    count_costs: bool = True,
) -> list[BudgetRecord]:
    """Top-1/top-5 of every configuration x view spec, with its cost: the one evaluation loop
    (test_net's budget table, the final evaluation after training, periodic validation and
    compare_methods all run it).

    Args:
        model: a slimmable model with its space attached, on ``device``; or a static
            network (no slimmable layer), evaluated on each configuration's input.
        loader: test batches, dicts with ``video`` ``(N, C, T_full, S, S)``, ``label``,
            ``video_index``, ``clip_index`` (temporal view) and ``aug_index`` (spatial view).
        configs: the configurations to evaluate.
        views: view specs, e.g. ``("1x1", "10x3")``; each is evaluated on a subset of
            the loader's views (see :func:`~mutualnet_video.evaluation.multiview.view_mask`).
        loader_views: the views per video the loader yields (default: the largest
            temporal and spatial counts in ``views``).
        flops_fn / params_fn: ``(model, cfg) -> int`` (default: ``count_flops`` /
            ``count_params`` of ``mutualnet_video.evaluation.flops``); FLOPs are
            multiply-adds of one view at batch 1.
        input_fn: ``(batch, cfg) -> model input``; default ``clip_for_config`` on ``batch["video"]``.
        require_calibrated: raise :class:`NotCalibratedError` (saying how to calibrate) if a
            configuration has no calibrated BN statistics.
        latency_repeats: if > 0, measure the median latency of one view at batch 1
            (``measure_latency``) with that many repeats; ``latency_ms`` is per video.
        max_batches: stop after this many batches (smoke runs).
        count_costs: count FLOPs and parameters (False: ``gflops_*`` are NaN and
            ``params`` 0, for a quick validation during training).

    Returns:
        One record per configuration x view spec (configuration-major), ``pareto``
        marked over GFLOPs per video. The model's mode and configuration are restored.
    """
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise ValueError("configs is empty: nothing to evaluate")
    specs = list(dict.fromkeys(ViewSpec.parse(v) for v in views))
    if not specs:
        raise ValueError("views is empty: pass e.g. ('1x1',)")
    total = ViewSpec.parse(loader_views) if loader_views is not None else ViewSpec(
        max(s.temporal for s in specs), max(s.spatial for s in specs))
    for spec in specs:
        if spec.temporal > total.temporal or spec.spatial > total.spatial:
            raise ValueError(f"views {spec} asks for more views than the loader's {total}")
    space = get_space(model)
    if space is not None:
        for cfg in configs:
            space.validate(cfg)
    switch = next(slimmable_modules(model), None) is not None
    if require_calibrated and switch:
        check_calibrated(model, configs)
    if count_costs:
        flops_fn = flops_fn or default_flops_fn()
        params_fn = params_fn or default_params_fn()
    if input_fn is None:
        input_fn = default_input_fn(model, device)

    accumulators = {(cfg, spec): MultiViewAccumulator() for cfg in configs for spec in specs}
    was_training, previous = model.training, current_config(model) if switch else None
    iterator: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=f"eval {len(configs)} configs x {len(specs)} views", unit="batch")
    try:
        model.eval()
        for step, batch in enumerate(iterator):
            if max_batches is not None and step >= max_batches:
                break
            labels, videos = _field(batch, "label"), _field(batch, "video_index")
            masks = {spec: view_mask(_field(batch, "clip_index"), _field(batch, "aug_index"), spec=spec, total=total)
                     for spec in specs}
            keep = torch.stack(list(masks.values())).any(dim=0)
            if not bool(keep.any()):
                continue
            if not bool(keep.all()):  # views no spec uses are not run
                batch = _subset(batch, keep)
                labels, videos = labels[keep], videos[keep]
                masks = {spec: mask[keep] for spec, mask in masks.items()}
            for cfg in configs:
                if switch:
                    set_config(model, cfg, validate=False)
                inputs = input_fn(batch, cfg)
                logits = model(inputs).float()
                if logits.dim() != 2 or logits.shape[0] != labels.numel():
                    raise RuntimeError(f"the model returned {tuple(logits.shape)} for a batch of {labels.numel()}; "
                                       "expected (batch, classes) logits")
                for spec, mask in masks.items():
                    accumulators[cfg, spec].update(logits[mask.to(logits.device)], labels[mask], videos[mask])
    finally:
        if switch:
            set_config(model, previous, validate=False)
        model.train(was_training)

    records = []
    for cfg in configs:
        gflops = float(flops_fn(model, cfg)) / 1e9 if count_costs else math.nan
        params = int(params_fn(model, cfg)) if count_costs else 0
        latency = None
        if latency_repeats > 0:
            latency = measure_latency(model, cfg, repeats=latency_repeats, warmup=min(3, latency_repeats),
                                      threads=latency_threads)
        for spec in specs:
            result = accumulators[cfg, spec].compute(expected_views=spec.num_views)
            if result["incomplete_videos"]:
                warnings.warn(f"{cfg} at {spec} views: {result['incomplete_videos']} of {result['num_videos']} "
                              "videos had fewer views than expected (decode failures?)", stacklevel=3)
            records.append(BudgetRecord(
                width=cfg.width, frames=cfg.frames, crop=cfg.crop, views=str(spec),
                gflops_per_view=gflops, gflops_per_video=gflops * spec.num_views, params=params,
                top1=float(result["top1"]), top5=float(result["top5"]),
                latency_ms=None if latency is None else latency * spec.num_views,
                num_videos=int(result["num_videos"]),
            ))
    return mark_pareto(records)
