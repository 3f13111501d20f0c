"""One registry for the top-level model entrypoints (``mutual_x3d_m``, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["register_model", "list_models", "create_model", "get_model_entrypoint", "UnknownModelError"]

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


class UnknownModelError(KeyError):
    """No model registered under that name (the message lists the known names)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_model(fn: F) -> F:
    """Register ``fn`` under its ``__name__``; a second model of the same name is an error."""
    name = fn.__name__
    if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not fn:
        raise ValueError(f"model {name!r} is already registered by {_ENTRYPOINTS[name].__module__}")
    _ENTRYPOINTS[name] = fn
    return fn


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_ENTRYPOINTS)


def get_model_entrypoint(name: str) -> Callable[..., nn.Module]:
    try:
        return _ENTRYPOINTS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override its defaults.

    Every entrypoint accepts its builder's keywords (e.g. ``model_num_class``) and the
    space keywords ``width_range``, ``frames``, ``crops``, ``num_subnets``, ``widths``.
    """
    return get_model_entrypoint(name)(**kwargs)
