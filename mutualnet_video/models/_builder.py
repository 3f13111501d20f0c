"""Shared plumbing of the slimmable builders and entrypoints: defaults, space, conversion, weights."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..checkpoint import load_weights
from ..core import ConfigSpace
from .convert import slimmable
from .registry import DefaultCfg, attach_default_cfg

__all__ = ["builder_default", "default_input", "make_space", "build_slimmable", "finish_entrypoint", "forwards_kwargs"]


def builder_default(builder: Callable[..., nn.Module], kwargs: dict[str, Any], name: str) -> Any:
    """``kwargs[name]`` if given, else ``builder``'s own default for ``name``."""
    if name in kwargs:
        return kwargs[name]
    return inspect.signature(builder).parameters[name].default


def default_input(
    frames: Sequence[int] | int | None,
    crops: Sequence[int] | int | None,
    nominal: Callable[[], tuple[int, int] | None],
) -> tuple[Sequence[int] | int, Sequence[int] | int]:
    """``(frames, crops)`` with a missing one taken from ``nominal()``, the input the
    builder's fixed head pool is sized for (``None``: no fixed pool, both are required)."""
    if frames is not None and crops is not None:
        return frames, crops
    found = nominal()
    if found is None:
        raise ValueError("frames and crops are required when head_pool is not a fixed nn.AvgPool3d")
    return (found[0] if frames is None else frames), (found[1] if crops is None else crops)


def make_space(
    *,
    width_range: Sequence[float],
    frames: Sequence[int] | int,
    crops: Sequence[int] | int,
    num_subnets: int,
    widths: Sequence[float],
    slowfast_alpha: int | None = None,
) -> ConfigSpace:
    def as_tuple(value: Any) -> Any:  # anything else reaches ConfigSpace, whose error names the field
        return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value

    frames = (frames,) if isinstance(frames, int) else as_tuple(frames)
    crops = (crops,) if isinstance(crops, int) else as_tuple(crops)
    return ConfigSpace(
        width_range=as_tuple(width_range), frames=frames, crops=crops, num_subnets=num_subnets,
        widths=as_tuple(widths), slowfast_alpha=slowfast_alpha,
    )


def forwards_kwargs(target: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare that a builder passes its ``**kwargs`` on to ``target``.

    Sets ``fn.forwards_to = target``: config validation (``engine.config``) then checks a
    ``model`` node's keys against the builder's parameters and ``target``'s (recursively),
    so a misspelt PyTorchVideo keyword fails at load time naming the key.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.forwards_to = target  # type: ignore[attr-defined]
        return fn

    return decorate


def build_slimmable(
    builder: Callable[..., nn.Module], kwargs: dict[str, Any], space: ConfigSpace, *, slim_fast: bool = False
) -> nn.Module:
    """``builder(**kwargs)`` converted by :func:`slimmable` over ``space``."""
    return slimmable(builder(**kwargs), space=space, slim_fast=slim_fast)


def finish_entrypoint(model: nn.Module, *, default_cfg: DefaultCfg, weights: str | None) -> nn.Module:
    """The last step of every registered entrypoint: attach ``default_cfg``
    (``model.default_cfg``), then load ``weights`` (a path or URL) strictly if given
    (:func:`mutualnet_video.checkpoint.load_weights`: ``weights_only``, every layout of a
    stock PyTorchVideo / torchvision / our checkpoint)."""
    attach_default_cfg(model, default_cfg)
    if weights is not None:
        load_weights(model, weights, source="weights")
    return model
