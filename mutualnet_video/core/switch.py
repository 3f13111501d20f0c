"""Switching a model between sub-networks: the one way to change the active width.

A model built for MutualNet carries its :class:`ConfigSpace` (``attach_space``, read
with ``get_space``, removed with ``detach_space``: where it is stored is private);
``set_config`` / ``use_config`` validate a configuration against it and hand it to
every :class:`SlimmableModule`. No global state: the configuration lives in the
model's own modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .config import ConfigSpace, SubnetConfig
from .layers import SlimmableModule

__all__ = [
    "attach_space",
    "detach_space",
    "get_space",
    "slimmable_modules",
    "set_config",
    "use_config",
    "current_config",
]

_SPACE_ATTR = "config_space"


def attach_space(model: nn.Module, space: ConfigSpace) -> nn.Module:
    """Record the configuration space ``model`` is trained over; returns ``model``."""
    if not isinstance(space, ConfigSpace):
        raise TypeError(f"space must be a ConfigSpace, got {type(space).__name__}")
    setattr(model, _SPACE_ATTR, space)
    return model


def get_space(model: nn.Module) -> ConfigSpace | None:
    """The :class:`ConfigSpace` attached to ``model`` (unwrapping DDP), or None."""
    model = getattr(model, "module", model) if not hasattr(model, _SPACE_ATTR) else model
    return getattr(model, _SPACE_ATTR, None)


def detach_space(model: nn.Module) -> nn.Module:
    """Remove the :class:`ConfigSpace` attached to ``model`` and to any of its submodules
    (a view or a wrapper sharing them); returns ``model``. A no-op where none is attached."""
    for module in model.modules():
        module.__dict__.pop(_SPACE_ATTR, None)
    return model


def slimmable_modules(model: nn.Module) -> Iterator[tuple[str, SlimmableModule]]:
    for name, module in model.named_modules():
        if isinstance(module, SlimmableModule):
            yield name, module


def set_config(model: nn.Module, cfg: SubnetConfig | None, *, validate: bool = True) -> None:
    """Switch every slimmable module of ``model`` to ``cfg`` (``None``: full width, no config).

    Raises ``ValueError`` naming the value if ``cfg`` is outside the model's space, and
    ``TypeError`` if the model has no slimmable module.
    """
    if cfg is not None and not isinstance(cfg, SubnetConfig):
        raise TypeError(f"cfg must be a SubnetConfig or None, got {type(cfg).__name__}")
    space = get_space(model)
    if validate and cfg is not None and space is not None:
        space.validate(cfg)
    found = False
    for _, module in slimmable_modules(model):
        module.set_subnet(cfg)
        found = True
    if not found:
        raise TypeError(f"{type(model).__name__} has no slimmable module: convert it first")


def current_config(model: nn.Module) -> SubnetConfig | None:
    """The configuration ``model`` is switched to (None if never switched)."""
    for _, module in slimmable_modules(model):
        return module.subnet
    return None


@contextmanager
def use_config(model: nn.Module, cfg: SubnetConfig, *, validate: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` at ``cfg`` inside the block; the previous configuration is restored after."""
    previous = current_config(model)
    set_config(model, cfg, validate=validate)
    try:
        yield model
    finally:
        set_config(model, previous, validate=False)
