"""One registry for the top-level model entrypoints (``mutual_x3d_m``, ...).

Each entrypoint is registered with its :class:`DefaultCfg`, the input its network is
built for and its weights expect (nominal frames and crop, normalisation, SlowFast's
alpha), like timm's ``default_cfgs`` or torchvision's weights meta: the one source of
truth for those values. ``get_model_cfg(name)`` reads it without building the model;
a built model carries it as ``model.default_cfg`` (:func:`get_default_cfg`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

from ..core.inputs import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD

__all__ = [
    "DefaultCfg",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "register_model",
    "list_models",
    "create_model",
    "get_model_entrypoint",
    "get_model_cfg",
    "attach_default_cfg",
    "get_default_cfg",
    "UnknownModelError",
]

# KINETICS_MEAN/STD, IMAGENET_MEAN/STD: defined with the inputs in core (data/ reads them too).

_DEFAULT_CFG_ATTR = "default_cfg"


@dataclass(frozen=True, kw_only=True)
class DefaultCfg:
    """The input a registered model is built for.

    Args:
        crop: nominal spatial size (the largest crop of the default space; for detectors
            the resize's shorter side).
        mean, std: per-channel normalisation of inputs in ``[0, 1]``: ``(x - mean) / std``.
            Detectors apply it in their own transform (feed them ``[0, 1]`` images).
        frames: nominal input frames (Slow pathway for SlowFast); ``None`` for 2D networks.
        slowfast_alpha: SlowFast's Fast/Slow frame ratio; ``None`` for one pathway.
    """

    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    frames: int | None = None
    slowfast_alpha: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean/std must have the same length and std > 0, got {self.mean}, {self.std}")
        if self.crop < 1 or (self.frames is not None and self.frames < 1):
            raise ValueError(f"crop and frames must be positive, got crop={self.crop}, frames={self.frames}")
        if self.slowfast_alpha is not None and (self.frames is None or self.slowfast_alpha < 1):
            raise ValueError(f"slowfast_alpha must be a positive int of a video model, got {self.slowfast_alpha!r}")


_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_DEFAULT_CFGS: dict[str, DefaultCfg] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


class UnknownModelError(KeyError):
    """No model registered under that name (the message lists the known names)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@overload
def register_model(fn: F, *, default_cfg: DefaultCfg | Mapping[str, Any] | None = None) -> F: ...
@overload
def register_model(fn: None = None, *, default_cfg: DefaultCfg | Mapping[str, Any] | None = None
                   ) -> Callable[[F], F]: ...
def register_model(fn=None, *, default_cfg=None):
    """Register ``fn`` under its ``__name__`` with its :class:`DefaultCfg` (or the mapping
    of its fields); a second model of the same name is an error.

    ``@register_model(default_cfg=DefaultCfg(...))`` or ``register_model(fn, default_cfg=...)``.
    The entrypoint itself attaches the cfg to the model it builds (:func:`attach_default_cfg`).
    """
    cfg = default_cfg if default_cfg is None or isinstance(default_cfg, DefaultCfg) else DefaultCfg(**default_cfg)

    def register(entrypoint: F) -> F:
        name = entrypoint.__name__
        if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not entrypoint:
            raise ValueError(f"model {name!r} is already registered by {_ENTRYPOINTS[name].__module__}")
        _ENTRYPOINTS[name] = entrypoint
        if cfg is not None:
            _DEFAULT_CFGS[name] = cfg
        return entrypoint

    return register if fn is None else register(fn)


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_ENTRYPOINTS)


def get_model_entrypoint(name: str) -> Callable[..., nn.Module]:
    try:
        return _ENTRYPOINTS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def get_model_cfg(name: str) -> DefaultCfg:
    """The :class:`DefaultCfg` the model ``name`` was registered with (no model is built)."""
    get_model_entrypoint(name)  # an unknown name raises UnknownModelError
    try:
        return _DEFAULT_CFGS[name]
    except KeyError:
        raise LookupError(f"model {name!r} was registered without a default_cfg") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override its defaults.

    Every entrypoint takes the space keywords (``width_range``, ``crops``, ``num_subnets``,
    ``widths``; ``frames`` for video models), its class count (``model_num_class`` for the
    PyTorchVideo families, ``num_classes`` for the torchvision ones) and ``weights`` (a
    path or URL of a checkpoint, loaded strictly); see each entrypoint for the rest.
    """
    return get_model_entrypoint(name)(**kwargs)


def attach_default_cfg(model: nn.Module, default_cfg: DefaultCfg) -> nn.Module:
    """Record ``default_cfg`` on ``model`` as ``model.default_cfg``; returns ``model``."""
    if not isinstance(default_cfg, DefaultCfg):
        raise TypeError(f"default_cfg must be a DefaultCfg, got {type(default_cfg).__name__}")
    setattr(model, _DEFAULT_CFG_ATTR, default_cfg)
    return model


def get_default_cfg(model: nn.Module) -> DefaultCfg | None:
    """The :class:`DefaultCfg` of a model built by an entrypoint (unwrapping DDP), or None."""
    model = getattr(model, "module", model) if not hasattr(model, _DEFAULT_CFG_ATTR) else model
    found = getattr(model, _DEFAULT_CFG_ATTR, None)
    return found if isinstance(found, DefaultCfg) else None
