"""Turn a stock PyTorchVideo 3D network into a slimmable one, in place.

:func:`slimmable` walks a built X3D, SlowFast or ResNet-3D (Slow, C2D, I3D) model and
replaces every ``nn.Conv3d`` / ``nn.BatchNorm3d`` / ``nn.Linear`` by its slimmable
subclass (:class:`SlimConv3d`, :class:`SlimBatchNorm3d`, :class:`SlimLinear`), handing
over the very same parameter and buffer tensors: parameter names, buffer names and
values are unchanged, so a stock state dict loads with ``strict=True`` and the model
computes the stock function at full width.

Width rules (MutualNet):

* every conv slims its outputs (``scale_channels(out, width)``) and reads its active
  inputs from its input; the first conv keeps its 3 input channels by construction;
* the final classifier (the head's ``proj``) keeps its class count;
* residual additions and squeeze-excitation blocks slice consistently because both
  sides of each are built for the same full channel count;
* SlowFast: the Slow pathway slims; the Fast pathway keeps its full width unless
  ``slim_fast``; the lateral fast->slow conv follows the slow width, and every layer
  fed by a concatenation (``[slow, fused]`` or ``[slow_pool, fast_pool]``) slices each
  part on its own through ``in_splits``.

Head pools with a fixed kernel (``AvgPool3d`` in ``ProjectedPool``, ``ResNetBasicHead``
and ``PoolConcatPathway``) become ``AdaptiveAvgPool3d(1)``: the same output at the
nominal input size (where the kernel covers the whole feature map), and any frames /
crop of the space runs. PyTorchVideo's ``Swish`` (X3D) becomes :class:`CompilableSwish`:
the same module in eager, traceable by ``torch.compile`` with autograd on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorchvideo.layers.swish import Swish
from pytorchvideo.models.head import ResNetBasicHead
from pytorchvideo.models.net import MultiPathWayWithFuse
from pytorchvideo.models.resnet import BottleneckBlock, ResBlock, ResStage
from pytorchvideo.models.slowfast import FuseFastToSlow, PoolConcatPathway
from pytorchvideo.models.stem import ResNetBasicStem
from pytorchvideo.models.x3d import ProjectedPool
from torch import nn

from ..core import (
    ConfigSpace,
    SlimBatchNorm3d,
    SlimConv3d,
    SlimLinear,
    SlimmableModule,
    attach_space,
)

__all__ = ["slimmable", "UnsupportedModuleError"]

# Parameter-free modules with no channel semantics are always fine; these hold weights
# and are handled (converted or already slim).
_CONVERTIBLE = (nn.Conv3d, nn.BatchNorm3d, nn.Linear)


class UnsupportedModuleError(TypeError):
    """A module holding weights that cannot be made slimmable."""


@dataclass
class _Role:
    """How a weight layer slices: its output rule and the layout of its input."""

    slim_out: bool = True
    in_splits: tuple[tuple[int, bool], ...] | None = None


def slimmable(model: nn.Module, *, space: ConfigSpace, slim_fast: bool = False) -> nn.Module:
    """Convert a stock PyTorchVideo 3D ``model`` into a slimmable one, in place.

    Args:
        model: a network built by ``create_x3d``, ``create_slowfast`` or
            ``create_resnet`` (possibly with some ``Slim*`` layers already, which are
            kept), or any network made of the same parts.
        space: the configurations the model will run; attached to the model.
            A SlowFast model needs ``space.slowfast_alpha`` equal to its fusion
            conv's temporal stride.
        slim_fast: SlowFast only: slim the Fast pathway too (default: it keeps its
            full width, as in the paper).

    Returns:
        ``model`` itself, converted, with ``space`` attached.

    Raises:
        UnsupportedModuleError: a module holding weights has a type that cannot be
            slimmed (grouped non-depthwise conv, ``Conv2d``, ``LayerNorm``, an
            unknown layer); the message names the module path and type.
        ValueError: ``space`` does not fit the model (video space, SlowFast alpha).
    """
    if not isinstance(space, ConfigSpace):
        raise TypeError(f"space must be a ConfigSpace, got {type(space).__name__}")
    if not space.is_video:
        raise ValueError(f"a 3D network needs a video space (frames), got frames={space.frames}")
    roles = _roles(model, space=space, slim_fast=slim_fast)
    _check_supported(model)
    for name, module in list(model.named_modules()):
        if not name:
            continue
        role = roles.get(name, _Role())
        if isinstance(module, SlimmableModule):
            if name in roles and isinstance(module, (SlimConv3d, SlimLinear)):
                _configure(module, role, name)
            continue
        if type(module) in (nn.Conv3d, nn.Linear, nn.BatchNorm3d):
            _replace(model, name, _convert(module, role, name))
    _adapt_head_pools(model)
    _compilable_swish(model)
    attach_space(model, space)
    return model


class CompilableSwish(Swish):
    """PyTorchVideo's ``Swish`` (X3D) that ``torch.compile`` can trace with autograd on.

    Eager: the same ``SwishFunction`` (same values, same memory). In a compiled region:
    ``x * torch.sigmoid(x)`` in torch ops, the same function: ``SwishFunction``'s backward
    reads ``ctx.saved_variables``, which dynamo cannot trace, so a compiled training
    forward fell back to eager frame by frame (one graph per module, recompiled per width).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return x * torch.sigmoid(x)
        return super().forward(x)


def _compilable_swish(model: nn.Module) -> None:
    """Every PyTorchVideo ``Swish`` becomes a :class:`CompilableSwish`, in place (no state:
    the class changes, the module, its hooks and its sharing stay)."""
    for module in model.modules():
        if type(module) is Swish:
            module.__class__ = CompilableSwish


# -- roles ---------------------------------------------------------------------------
def _roles(model: nn.Module, *, space: ConfigSpace, slim_fast: bool) -> dict[str, _Role]:
    """The role of every weight layer whose rule is not the default (slim_out, no splits)."""
    roles: dict[str, _Role] = {}
    classifier = _classifier_name(model)
    if classifier is not None:
        roles[classifier] = _Role(slim_out=False)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and any(isinstance(b, MultiPathWayWithFuse) for b in blocks):
        roles.update(_slowfast_roles(blocks, space=space, slim_fast=slim_fast))
        if classifier is not None:
            roles[classifier].slim_out = False
    elif space.slowfast_alpha is not None:
        raise ValueError(
            f"space has slowfast_alpha={space.slowfast_alpha} but {type(model).__name__} is not a "
            f"SlowFast network (no MultiPathWayWithFuse block)"
        )
    return roles


def _classifier_name(model: nn.Module) -> str | None:
    """The final classifier: the ``proj`` of the last head, else the last Linear."""
    heads = [n for n, m in model.named_modules() if isinstance(m, ResNetBasicHead)]
    if heads:
        prefix = f"{heads[-1]}." if heads[-1] else ""
        return f"{prefix}proj"
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _slowfast_roles(blocks: nn.ModuleList, *, space: ConfigSpace, slim_fast: bool) -> dict[str, _Role]:
    """Roles in a SlowFast ``Net``: fast pathway, lateral convs, concatenation consumers.

    A pathway's output layout is a list of ``(channels, slim)`` parts: one part after
    a stage, plus the fused part after a fast->slow fusion; a layer fed by more than
    one part gets ``in_splits``.
    """
    roles: dict[str, _Role] = {}
    layouts: list[list[tuple[int, bool]]] | None = None
    concat: list[tuple[int, bool]] | None = None
    for index, block in enumerate(blocks):
        path = f"blocks.{index}"
        if isinstance(block, MultiPathWayWithFuse):
            pathways = block.multipathway_blocks
            if len(pathways) != 2:
                raise UnsupportedModuleError(
                    f"{path}: SlowFast conversion needs 2 pathways (slow, fast), got {len(pathways)}"
                )
            if layouts is None:
                layouts = [[], []]
            for p, pathway in enumerate(pathways):
                slim = True if p == 0 else slim_fast
                ppath = f"{path}.multipathway_blocks.{p}"
                if not slim:
                    for name, module in pathway.named_modules():
                        if isinstance(module, (nn.Conv3d, nn.Linear)):
                            roles[_join(ppath, name)] = _Role(slim_out=False)
                out_channels = _pathway_io(pathway, ppath, layouts[p], roles)
                layouts[p] = [(out_channels, slim)]
            fusion = block.multipathway_fusion
            if isinstance(fusion, FuseFastToSlow):
                conv = fusion.conv_fast_to_slow
                if not isinstance(conv, nn.Conv3d):
                    raise UnsupportedModuleError(
                        f"{path}.multipathway_fusion.conv_fast_to_slow: expected a Conv3d, got {type(conv).__name__}"
                    )
                alpha = int(conv.stride[0])
                if space.slowfast_alpha != alpha:
                    raise ValueError(
                        f"{path}.multipathway_fusion: the fast->slow conv has temporal stride {alpha}, "
                        f"so the space needs slowfast_alpha={alpha}, got {space.slowfast_alpha}"
                    )
                roles[f"{path}.multipathway_fusion.conv_fast_to_slow"] = _Role(slim_out=True)
                layouts[0] = layouts[0] + [(conv.out_channels, True)]
            elif fusion is not None and not isinstance(fusion, nn.Identity):
                raise UnsupportedModuleError(
                    f"{path}.multipathway_fusion: unsupported fusion {type(fusion).__name__} "
                    f"(expected FuseFastToSlow or Identity)"
                )
        elif isinstance(block, PoolConcatPathway):
            if layouts is None:
                raise UnsupportedModuleError(f"{path}: PoolConcatPathway before any pathway block")
            concat = layouts[0] + layouts[1]
        elif isinstance(block, ResNetBasicHead):
            if concat is not None and len(concat) > 1:
                roles[f"{path}.proj"] = _Role(slim_out=False, in_splits=tuple(concat))
        else:
            raise UnsupportedModuleError(
                f"{path}: unsupported block {type(block).__name__} in a SlowFast network"
            )
    if space.slowfast_alpha is None:
        raise ValueError("a SlowFast network needs a space with slowfast_alpha (the fast/slow frame ratio)")
    return roles


def _pathway_io(pathway: nn.Module, path: str, layout: list[tuple[int, bool]], roles: dict[str, _Role]) -> int:
    """Give the layers reading the pathway input its layout; return the output channels."""
    if isinstance(pathway, ResNetBasicStem):
        conv = _conv_of_stem(pathway, path)
        return conv.out_channels
    if isinstance(pathway, ResStage):
        first = pathway.res_blocks[0]
        if not isinstance(first, ResBlock) or not isinstance(first.branch2, BottleneckBlock):
            raise UnsupportedModuleError(f"{path}.res_blocks.0: expected a ResBlock with a BottleneckBlock")
        if len(layout) > 1:
            if first.branch1_conv is None:
                raise UnsupportedModuleError(
                    f"{path}.res_blocks.0: a concatenated input {layout} needs a projection shortcut"
                )
            for name in ("branch1_conv", "branch2.conv_a"):
                key = f"{path}.res_blocks.0.{name}"
                role = roles.setdefault(key, _Role())
                role.in_splits = tuple(layout)
        last = pathway.res_blocks[-1]
        return last.branch2.conv_c.out_channels
    raise UnsupportedModuleError(f"{path}: unsupported pathway block {type(pathway).__name__}")


def _conv_of_stem(stem: ResNetBasicStem, path: str) -> nn.Conv3d:
    conv = stem.conv
    if not isinstance(conv, nn.Conv3d):
        raise UnsupportedModuleError(f"{path}.conv: expected a Conv3d stem conv, got {type(conv).__name__}")
    return conv


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if name else prefix


# -- conversion ----------------------------------------------------------------------
def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False)) + [b for b in module.buffers(recurse=False)]
        if isinstance(module, SlimmableModule):
            continue
        if type(module) in _CONVERTIBLE:
            if isinstance(module, nn.Conv3d):
                depthwise = module.groups == module.in_channels == module.out_channels
                if module.groups > 1 and not depthwise:
                    raise UnsupportedModuleError(
                        f"{name or type(model).__name__}: {type(module).__name__} with groups={module.groups} "
                        f"({module.in_channels}->{module.out_channels} channels) cannot be slimmed: only dense "
                        f"and depthwise convolutions can"
                    )
            continue
        if own:
            raise UnsupportedModuleError(
                f"{name or type(model).__name__}: {type(module).__name__} holds weights but cannot be slimmed "
                f"(supported: Conv3d, BatchNorm3d, Linear)"
            )


def _transfer(old: nn.Module, new: nn.Module) -> nn.Module:
    """Hand the tensors, mode, hooks and extra attributes of ``old`` over to ``new``."""
    for key, param in old._parameters.items():
        new._parameters[key] = param
    for key, buf in old._buffers.items():
        new._buffers[key] = buf
    new._non_persistent_buffers_set = set(old._non_persistent_buffers_set)
    new.train(old.training)
    fresh = vars(new)
    for key, value in vars(old).items():
        if key not in fresh:
            fresh[key] = value  # e.g. block_final_bn, xavier_init
        elif "hook" in key and isinstance(value, dict) and isinstance(fresh[key], dict):
            fresh[key].update(value)  # hooks registered on the stock module
    return new


def _convert(module: nn.Module, role: _Role, name: str) -> nn.Module:
    try:
        if isinstance(module, nn.Conv3d):
            new = SlimConv3d(
                module.in_channels, module.out_channels, module.kernel_size,
                stride=module.stride, padding=module.padding, dilation=module.dilation,
                groups=module.groups, bias=module.bias is not None, padding_mode=module.padding_mode,
                device="meta", slim_out=role.slim_out,
                in_splits=None if module.groups > 1 else role.in_splits,
            )
        elif isinstance(module, nn.Linear):
            new = SlimLinear(
                module.in_features, module.out_features, bias=module.bias is not None,
                device="meta", slim_out=role.slim_out, in_splits=role.in_splits,
            )
        else:
            new = SlimBatchNorm3d(
                module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                track_running_stats=module.track_running_stats, device="meta",
            )
    except ValueError as error:
        raise UnsupportedModuleError(f"{name}: {error}") from error
    return _transfer(module, new)


def _configure(module: SlimConv3d | SlimLinear, role: _Role, name: str) -> None:
    """Give an already slim layer the role the structure needs (SlowFast roles)."""
    try:  # refuses in_splits that do not add up to the layer's inputs, naming both
        module.configure_slicing(slim_out=role.slim_out, in_splits=role.in_splits)
    except ValueError as error:
        raise UnsupportedModuleError(f"{name}: {error}") from error


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _adapt_head_pools(model: nn.Module) -> None:
    """Fixed-kernel head pools -> ``AdaptiveAvgPool3d(1)`` (same output at the nominal size)."""
    for module in model.modules():
        if isinstance(module, (ProjectedPool, ResNetBasicHead)) and _is_fixed_avg_pool(module.pool):
            module.pool = nn.AdaptiveAvgPool3d(1)
        elif isinstance(module, PoolConcatPathway) and module.pool is not None:
            for i, pool in enumerate(module.pool):
                if _is_fixed_avg_pool(pool):
                    module.pool[i] = nn.AdaptiveAvgPool3d(1)


def _is_fixed_avg_pool(pool: nn.Module | None) -> bool:
    if not isinstance(pool, nn.AvgPool3d):
        return False
    stride = pool.stride if isinstance(pool.stride, tuple) else (pool.stride,) * 3
    padding = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,) * 3
    return all(s == 1 for s in stride) and all(p == 0 for p in padding)

