"""``torch.compile`` of a slimmable model, with dynamo's recompile limit sized to its space.

A slimmable model's layers read, in a compiled forward, the active channel counts from the
shapes of small tensors set with the configuration (``core.layers._size_carriers``) and
BatchNorm's calibrated statistics from the tensors kept with it, not from Python ints or
the configuration's tag, and hint dynamo that those sizes change
(:func:`~mutualnet_video.core.hint_dynamic_sizes`): the first graph already has every
channel count dynamic. The input's frames and crop become dynamic at their first change
(dynamo's automatic dynamic shapes). So with dynamo's defaults a handful of graphs serve the
whole space: on the toy networks, 4 for training (static input, then the crop, then the
frames dynamic, and inputs that are views of another tensor or not), one more for
evaluation without autograd, under dynamo's limit of 8 even for one plain
``torch.compile(model)`` used for both. Switching back to a configuration already run
reuses its graph.

With ``dynamic=False`` (:func:`compile_slimmable` turns the layers' hints off for it, since a
hint overrides it) every size is a constant, and the number of graphs is bounded by
:func:`graph_budget`:

* training: the distinct channel patterns over the width range (widths are drawn
  uniformly, but the layers round their channels to multiples of 8, so many widths share
  one pattern) x frames x crops;
* evaluation: the distinct channel patterns of the evaluation widths x frames x crops.

The full-size models have many patterns: X3D-XS over width [0.5, 1] has 198 (up to 1,782
static training graphs over its 9 frames x crops), Slow and SlowFast R50 253, so static
shapes suit a small evaluation grid, not training (:func:`compile_slimmable` warns).
Dynamo stops compiling a function after ``recompile_limit`` (8) graphs and runs it eagerly
from then on: :func:`compile_slimmable` raises the limit to the static bound and logs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core import (
    ConfigSpace,
    SlimConv2d,
    SlimConv3d,
    SlimLinear,
    get_space,
    hint_dynamic_sizes,
    scale_channels,
    slimmable_modules,
)

__all__ = ["compile_slimmable", "graph_budget", "GraphBudget"]

logger = logging.getLogger(__name__)

# above this many channel patterns compile_slimmable(dynamic=False) warns that training keeps
# compiling (the toy net has 2; X3D-XS over width [0.5, 1] has 198, Slow / SlowFast R50 253)
MANY_PATTERNS = 16


@dataclass(frozen=True)
class GraphBudget:
    """The most graphs a compiled slimmable model needs (see the module docstring)."""

    channel_patterns: int  # distinct channel counts of the layers over the width range
    inputs: int  # frames x crops
    train: int  # channel_patterns x inputs
    eval: int  # distinct (channel pattern, frames, crop) of the evaluation grid

    @property
    def total(self) -> int:
        return self.train + self.eval


def _slimmed_channels(model: nn.Module) -> list[int]:
    """The full channel counts that follow the width: each slimmed layer's outputs and
    each slimmed part of an ``in_splits`` input."""
    counts: set[int] = set()
    for _, module in slimmable_modules(model):
        if isinstance(module, (SlimConv2d, SlimConv3d)) and module.slim_out:
            counts.add(module.out_channels)
        elif isinstance(module, SlimLinear) and module.slim_out:
            counts.add(module.out_features)
        for channels, slim in getattr(module, "in_splits", None) or ():
            if slim:
                counts.add(channels)
    return sorted(counts)


def _pattern(w: float, counts: list[int]) -> tuple:
    """The channel pattern of width ``w``: each count's active channels (a compiled forward
    runs the same code at full width, so a width that keeps every channel shares its graph)."""
    return tuple(scale_channels(c, w) for c in counts)


def _channel_patterns(lo: float, hi: float, counts: list[int]) -> int:
    """Distinct :func:`_pattern` over ``w in [lo, hi]``: each count is non-decreasing in
    ``w``, so an interval whose ends give the same pattern has no other inside; bisect the
    others down to 1e-9."""
    seen = {_pattern(lo, counts), _pattern(hi, counts)}
    stack = [(lo, hi, _pattern(lo, counts), _pattern(hi, counts))]
    while stack:
        a, b, ka, kb = stack.pop()
        if ka == kb or b - a < 1e-9:
            continue
        mid = (a + b) / 2
        km = _pattern(mid, counts)
        seen.add(km)
        stack += [(a, mid, ka, km), (mid, b, km, kb)]
    return len(seen)


def graph_budget(model: nn.Module, space: ConfigSpace | None = None) -> GraphBudget:
    """The most graphs ``torch.compile(model, dynamic=False)`` builds over ``space``
    (default: the model's); dynamo's default dynamic shapes build far fewer."""
    space = get_space(model) if space is None else space
    if space is None:
        raise TypeError(f"{type(model).__name__} has no ConfigSpace (attach_space / our builders)")
    counts = _slimmed_channels(model)
    patterns = _channel_patterns(*space.width_range, counts)
    inputs = len(space.frames) * len(space.crops)
    return GraphBudget(channel_patterns=patterns, inputs=inputs, train=patterns * inputs,
                       eval=len({(_pattern(c.width, counts), c.frames, c.crop) for c in space.grid()}))


def compile_slimmable(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile(model, **compile_kwargs)``, after raising dynamo's recompile limits
    to :func:`graph_budget`'s total, so no configuration of the space falls back to eager.

    ``torch._dynamo.config.recompile_limit`` (graphs per compiled function) becomes at
    least the budget and ``accumulated_recompile_limit`` (all functions) at least twice
    it; both are process-wide and only ever raised, and the change is logged (INFO). The
    compiled module shares ``model``'s parameters and switches with it
    (:func:`~mutualnet_video.core.use_config` on either); save ``model``'s state dict,
    whose keys have no ``_orig_mod.`` prefix. ``model`` may be a DDP wrapper (the budget
    is its module's): compile DDP's wrapper, not the module DDP wraps, or DDP runs the
    plain forward; :func:`~mutualnet_video.engine.mutual_step` takes the compiled wrapper.
    ``dynamic=False`` turns the layers' hints of dynamic channel counts off
    (:func:`~mutualnet_video.core.hint_dynamic_sizes`), any other value on.
    """
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    budget = graph_budget(model.module if ddp else model)
    config = torch._dynamo.config
    before = (config.recompile_limit, config.accumulated_recompile_limit)
    config.recompile_limit = max(config.recompile_limit, budget.total)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 2 * budget.total)
    logger.info(
        "compile_slimmable: at most %d graphs with static shapes (training: %d channel patterns x %d inputs; "
        "evaluation: %d); torch._dynamo recompile_limit %d -> %d, accumulated_recompile_limit %d -> %d",
        budget.total, budget.channel_patterns, budget.inputs, budget.eval,
        before[0], config.recompile_limit, before[1], config.accumulated_recompile_limit,
    )
    static = compile_kwargs.get("dynamic") is False
    # the layers' hints of dynamic sizes would override dynamic=False; on otherwise
    hint_dynamic_sizes(model, not static)
    if static and budget.channel_patterns > MANY_PATTERNS:
        space = get_space(model.module if ddp else model)
        logger.warning(
            "compile_slimmable: with dynamic=False, width_range %s gives %d channel patterns, so training "
            "compiles up to %d graphs (%d patterns x %d frames-and-crops), one on the first use of each: most "
            "early iterations draw a new pattern and wait for the compiler. Leave dynamic at its default "
            "(channel counts then become dynamic sizes: a handful of graphs)",
            space.width_range, budget.channel_patterns, budget.train, budget.channel_patterns, budget.inputs,
        )
    return torch.compile(model, **compile_kwargs)
