"""Shared plumbing of the slimmable builders: defaults, space, conversion."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..core import ConfigSpace
from .convert import slimmable

__all__ = ["builder_default", "make_space", "build_slimmable", "merge_defaults"]


def builder_default(builder: Callable[..., nn.Module], kwargs: dict[str, Any], name: str) -> Any:
    """``kwargs[name]`` if given, else ``builder``'s own default for ``name``."""
    if name in kwargs:
        return kwargs[name]
    return inspect.signature(builder).parameters[name].default


def make_space(
    *,
    width_range: Sequence[float],
    frames: Sequence[int] | int,
    crops: Sequence[int] | int,
    num_subnets: int,
    widths: Sequence[float],
    slowfast_alpha: int | None = None,
) -> ConfigSpace:
    frames = (frames,) if isinstance(frames, int) else tuple(frames)
    crops = (crops,) if isinstance(crops, int) else tuple(crops)
    return ConfigSpace(
        width_range=tuple(width_range), frames=frames, crops=crops, num_subnets=num_subnets,
        widths=tuple(widths), slowfast_alpha=slowfast_alpha,
    )


def build_slimmable(
    builder: Callable[..., nn.Module], kwargs: dict[str, Any], space: ConfigSpace, *, slim_fast: bool = False
) -> nn.Module:
    """``builder(**kwargs)`` converted by :func:`slimmable` over ``space``."""
    return slimmable(builder(**kwargs), space=space, slim_fast=slim_fast)


def merge_defaults(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """An entrypoint's defaults updated by the caller's keywords."""
    merged = dict(defaults)
    merged.update(overrides)
    return merged
