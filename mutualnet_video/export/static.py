"""Export one configuration of a slimmable model as a plain static network.

:func:`export_subnet` returns a copy of the model in which every slimmable layer is an
ordinary ``nn.Conv2d/3d``, ``nn.BatchNorm2d/3d`` or ``nn.Linear`` of the sliced size,
holding the sliced weights (concatenation inputs selected through ``in_splits``,
depthwise convs with ``groups`` = active channels) and, for BN, the statistics
calibrated for that configuration. Every other module (activations, pooling, the
model's own ``forward``) is kept, and so are the module names: the exported state dict
reads like the original's, with smaller tensors. The copy runs on the configuration's
input and gives the slimmable model's output at that configuration in eval mode.

The active sizes are read from one forward pass at the configuration, with hooks, and
the weights from each layer's public ``active_weight``: the exporter works on any model
made of core slim layers (X3D's depthwise convs and squeeze-excitation, SlowFast's
concatenations) without knowing its architecture. :func:`bn_fold_pairs` names the BN
layers that ``export_subnet(..., fold_bn=True)`` folds.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import SlimBatchNorm, SlimmableModule, SubnetConfig, detach_space, dummy_input, get_space, use_config
from ..io import atomic_path

__all__ = ["export_subnet", "bn_fold_pairs", "example_inputs", "export_torchscript", "export_onnx", "has_slim_layers"]

ModelInput = torch.Tensor | list[torch.Tensor]
_BN = nn.modules.batchnorm._BatchNorm
_CONV = (nn.Conv2d, nn.Conv3d)


@dataclass
class _Trace:
    """What one forward pass at the configuration tells about each module."""

    weights: dict[str, dict[str, Any]] = field(default_factory=dict)   # slim conv/linear: sliced tensors
    bn_channels: dict[str, int] = field(default_factory=dict)          # slim BN: active channels
    conv_out: dict[str, Any] = field(default_factory=dict)             # conv name -> output grad_fn
    bn_in: dict[str, Any] = field(default_factory=dict)                # BN name -> input grad_fn
    calls: dict[str, int] = field(default_factory=dict)


def has_slim_layers(model: nn.Module) -> bool:
    return any(isinstance(m, SlimmableModule) for m in model.modules())


def example_inputs(model: nn.Module, cfg: SubnetConfig, *, batch: int = 1, seed: int = 0,
                   device: torch.device | str | None = None) -> ModelInput:
    """A random input of ``cfg``'s shape for ``model`` (its space decides SlowFast's two pathways)."""
    space = get_space(model)
    if space is None:
        raise ValueError(f"{type(model).__name__} has no ConfigSpace attached: pass example inputs explicitly")
    if device is None:
        device = next(model.parameters()).device
    shape = dummy_input(space, cfg, batch=batch, device=device)
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen).to(device=t.device, dtype=t.dtype)

    return [rand(t) for t in shape] if isinstance(shape, list) else rand(shape)


def _fresh(inputs: ModelInput) -> ModelInput:
    """A new list for a two-pathway input: PyTorchVideo's ``MultiPathWayWithFuse`` (``inplace=True``)
    overwrites the list it is given with its outputs, so a list must never be fed twice."""
    return list(inputs) if isinstance(inputs, list | tuple) else inputs


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, list | tuple):
        return [t for item in x for t in _tensors(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in _tensors(item)]
    return []


def _consumers(outputs: list[torch.Tensor]) -> dict[Any, int]:
    """How many graph edges lead into each autograd node reachable from ``outputs``."""
    counts: dict[Any, int] = {}
    seen, stack = set(), [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            counts[child] = counts.get(child, 0) + 1
            stack.append(child)
    return counts


def _trace(model: nn.Module, cfg: SubnetConfig, inputs: ModelInput) -> tuple[_Trace, ModelInput]:
    trace = _Trace()
    handles = []

    def conv_hook(name: str, module: nn.Module) -> Any:
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            trace.calls[name] = trace.calls.get(name, 0) + 1
            x = args[0]
            trace.conv_out[name] = out.grad_fn
            if not isinstance(module, SlimmableModule):
                return
            in_active = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1]
            weight, bias = module.active_weight(in_active)
            groups = in_active if isinstance(module, _CONV) and module.is_depthwise else 1
            out_channels = out.shape[-1] if isinstance(module, nn.Linear) else out.shape[1]
            if weight.shape[0] != out_channels:
                raise RuntimeError(f"{name}: sliced weight has {weight.shape[0]} outputs, the layer gave {out_channels}")
            record = {"weight": weight.detach().clone(), "bias": None if bias is None else bias.detach().clone(),
                      "groups": groups, "in": in_active}
            previous = trace.weights.setdefault(name, record)
            if previous["in"] != in_active:
                raise RuntimeError(f"{name} is called with {previous['in']} and {in_active} input channels at {cfg}: "
                                   "a shared layer cannot be exported at two sizes")
        return hook

    def bn_hook(name: str, module: nn.Module) -> Any:
        def hook(_m: nn.Module, args: tuple) -> None:
            trace.calls[name] = trace.calls.get(name, 0) + 1
            trace.bn_in[name] = args[0].grad_fn
            if isinstance(module, SlimBatchNorm):
                seen = trace.bn_channels.setdefault(name, args[0].shape[1])
                if seen != args[0].shape[1]:
                    raise RuntimeError(f"{name} is called with {seen} and {args[0].shape[1]} channels at {cfg}")
        return hook

    for name, module in model.named_modules():
        if isinstance(module, _CONV + (nn.Linear,)):
            handles.append(module.register_forward_hook(conv_hook(name, module)))
        elif isinstance(module, _BN):
            handles.append(module.register_forward_pre_hook(bn_hook(name, module)))
    inputs = [t.detach().requires_grad_(True) for t in inputs] if isinstance(inputs, list) \
        else inputs.detach().requires_grad_(True)
    try:
        with torch.enable_grad(), use_config(model, cfg, validate=get_space(model) is not None):
            output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return trace, output


def _fold_pairs(model: nn.Module, trace: _Trace, output: Any) -> dict[str, str]:
    """Pairs conv -> BN where the BN's input is the conv's output and nothing else reads it."""
    consumers = _consumers(_tensors(output))
    producers = {fn: name for name, fn in trace.conv_out.items() if fn is not None and trace.calls[name] == 1}
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    for bn_name, fn in trace.bn_in.items():
        conv_name = producers.get(fn)
        bn = modules[bn_name]
        if (conv_name is not None and isinstance(modules[conv_name], _CONV) and trace.calls[bn_name] == 1
                and consumers.get(fn, 0) == 1 and bn.track_running_stats and bn.running_mean is not None):
            pairs[conv_name] = bn_name
    return pairs


def bn_fold_pairs(model: nn.Module, cfg: SubnetConfig, *, inputs: ModelInput | None = None) -> dict[str, str]:
    """The BatchNorm layers ``export_subnet(model, cfg, fold_bn=True)`` folds: ``{conv name: BN name}``.

    Read from one forward pass of ``model`` at ``cfg`` in eval mode (``inputs`` as in
    :func:`export_subnet`; the pairs depend on the graph, not on the values). In the
    exported copy each folded BN is ``nn.Identity`` under its name. ``model`` is left unchanged.
    """
    with _eval_trace(model, cfg, inputs) as (trace, output, _):
        return _fold_pairs(model, trace, output)


@contextlib.contextmanager
def _eval_trace(model: nn.Module, cfg: SubnetConfig, inputs: ModelInput | None):
    """``(trace, output, inputs)`` of one eval-mode forward of ``model`` at ``cfg`` (validated
    against its space; ``inputs`` default to :func:`example_inputs`); the mode is restored after."""
    space = get_space(model)
    if space is not None:
        space.validate(cfg)
    if inputs is None:
        inputs = example_inputs(model, cfg)
    was_training = model.training
    model.eval()
    try:
        trace, output = _trace(model, cfg, inputs)
        yield trace, output, inputs
    finally:
        model.train(was_training)


def _static_conv(module: nn.Module, rec: dict[str, Any]) -> nn.Module:
    weight, bias = rec["weight"], rec["bias"]
    kind = nn.Conv3d if isinstance(module, nn.Conv3d) else nn.Conv2d
    conv = kind(rec["in"], weight.shape[0], module.kernel_size, stride=module.stride, padding=module.padding,
                dilation=module.dilation, groups=rec["groups"], bias=bias is not None,
                padding_mode=module.padding_mode, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _static_linear(rec: dict[str, Any]) -> nn.Linear:
    weight, bias = rec["weight"], rec["bias"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _static_bn(module: SlimBatchNorm, channels: int, cfg: SubnetConfig) -> tuple[nn.Module, bool]:
    """The plain BN of ``channels`` channels; True if calibrated statistics were used."""
    kind = nn.BatchNorm3d if isinstance(module, nn.BatchNorm3d) else nn.BatchNorm2d
    ref = module.weight if module.weight is not None else module.running_mean
    bn = kind(channels, eps=module.eps, momentum=module.momentum, affine=module.affine,
              track_running_stats=module.track_running_stats,
              device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
    stored = module.config_stats.get(cfg.tag)
    with torch.no_grad():
        if module.affine:
            bn.weight.copy_(module.weight[:channels])
            bn.bias.copy_(module.bias[:channels])
        if module.track_running_stats:
            mean, var = stored if stored is not None else (module.running_mean[:channels],
                                                           module.running_var[:channels])
            if mean.numel() != channels:
                raise RuntimeError(f"statistics stored for {cfg} have {mean.numel()} channels, the layer has {channels}")
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(module.num_batches_tracked)
    return bn, stored is not None


def _fold(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """``conv`` with ``bn`` (eval mode, running statistics) folded into its weight and bias."""
    kind = type(conv)
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
        bias = shift if conv.bias is None else conv.bias * scale + shift
        folded = kind(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        folded.weight.copy_(conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        folded.bias.copy_(bias)
    return folded


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def export_subnet(
    model: nn.Module,
    cfg: SubnetConfig,
    *,
    fold_bn: bool = False,
    inputs: ModelInput | None = None,
    check: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
) -> nn.Module:
    """A static copy of ``model`` at ``cfg``: no slim layer, no attached space, eval mode.

    Args:
        model: a model made of core slim layers (left unchanged).
        cfg: the configuration to export (validated against the model's space).
        fold_bn: fold each BatchNorm into the conv that feeds it directly and is read by
            nothing else (checked on the autograd graph of one forward pass); the BN
            becomes ``nn.Identity`` under its name (:func:`bn_fold_pairs` lists them). BNs
            after a residual addition, a concatenation or a pooling stay. A BN computing
            batch statistics in eval mode (``track_running_stats=False``) is never folded.
        inputs: example input of ``cfg``'s shape (default: random, from the model's space).
        check: compare the copy's output with the slimmable model's on ``inputs``
            (``torch.testing.assert_close``; default tolerances 1e-5, or 1e-4 when folding).

    BN statistics are those calibrated for ``cfg`` (``SlimBatchNorm.config_stats``); a
    layer without them gets the shared running buffers' leading slice, with a warning.
    PyTorchVideo's ``Swish`` (X3D; ``x * sigmoid(x)`` as a Python autograd Function,
    which a traced TorchScript module cannot save) becomes the same ``nn.SiLU``.
    """
    with _eval_trace(model, cfg, inputs) as (trace, reference, inputs):
        pairs = _fold_pairs(model, trace, reference) if fold_bn else {}
        reference = [t.detach() for t in _tensors(reference)]

        exported = copy.deepcopy(model)
        uncalibrated, unused = [], []
        originals = dict(model.named_modules(remove_duplicate=False))
        replaced: dict[int, nn.Module] = {}
        for name, module in list(exported.named_modules(remove_duplicate=False)):
            if not name or not isinstance(module, SlimmableModule):
                continue
            if id(module) in replaced:
                _set(exported, name, replaced[id(module)])
                continue
            original = originals[name]
            if isinstance(original, SlimBatchNorm):
                channels = trace.bn_channels.get(name)
                if channels is None:
                    unused.append(name)
                    channels = original.num_features
                new, calibrated = _static_bn(original, channels, cfg)
                if not calibrated and name not in unused:
                    uncalibrated.append(name)
            elif isinstance(original, _CONV + (nn.Linear,)):
                rec = trace.weights.get(name)
                if rec is None:
                    unused.append(name)
                    rec = {"weight": original.weight.detach().clone(), "groups": original.groups
                           if not isinstance(original, nn.Linear) else 1,
                           "bias": None if original.bias is None else original.bias.detach().clone(),
                           "in": original.weight.shape[1] * (1 if isinstance(original, nn.Linear)
                                                             else original.groups)}
                new = _static_linear(rec) if isinstance(original, nn.Linear) else _static_conv(original, rec)
            else:
                raise TypeError(f"{name}: cannot export slimmable module of type {type(original).__name__}")
            replaced[id(module)] = new
            _set(exported, name, new)
        if unused:
            warnings.warn(f"{len(unused)} slim layers were not used at {cfg} and are exported at full size "
                          f"(e.g. {unused[0]!r})", stacklevel=2)
        if uncalibrated:
            warnings.warn(
                f"{len(uncalibrated)} BN layers have no statistics calibrated for {cfg} (e.g. {uncalibrated[0]!r}); "
                "exported with the shared running statistics. Calibrate first (mutualnet_video.evaluation.calibrate_bn)",
                stacklevel=2,
            )
        for conv_name, bn_name in pairs.items():
            _set(exported, conv_name, _fold(exported.get_submodule(conv_name), exported.get_submodule(bn_name)))
            _set(exported, bn_name, nn.Identity())
        for name, module in list(exported.named_modules()):
            if name and _is_pytorchvideo_swish(module):  # a Python autograd Function: TorchScript cannot save it
                _set(exported, name, nn.SiLU())
        detach_space(exported)
        exported.eval()
        if check:
            with torch.no_grad():
                got = _tensors(exported(_fresh(inputs)))
            tol = 1e-4 if fold_bn else 1e-5
            for g, r in zip(got, reference, strict=True):
                torch.testing.assert_close(g, r, rtol=rtol if rtol is not None else tol,
                                           atol=atol if atol is not None else tol,
                                           msg=lambda m: f"exported {cfg} differs from the slimmable model: {m}")
        return exported


def _is_pytorchvideo_swish(module: nn.Module) -> bool:
    """PyTorchVideo's ``Swish`` or a subclass (the converter's ``CompilableSwish``)."""
    return any(cls.__name__ == "Swish" and cls.__module__.startswith("pytorchvideo.")
               for cls in type(module).__mro__)


# -- serialisation ---------------------------------------------------------------------
def _as_args(inputs: ModelInput) -> tuple:
    return (_fresh(inputs),)


def export_torchscript(module: nn.Module, inputs: ModelInput, path: str | os.PathLike) -> Path:
    """Trace a static module (``torch.jit.trace``) on ``inputs`` and save it atomically to ``path``."""
    if has_slim_layers(module):
        raise TypeError("export_torchscript takes a static module: call export_subnet(model, cfg) first")
    path = Path(path)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit deprecation notice
        traced = torch.jit.trace(module, _as_args(inputs), check_trace=False)  # checked below, on fresh lists
        torch.testing.assert_close(_tensors(traced(_fresh(inputs))), _tensors(module(_fresh(inputs))),
                                   msg=lambda m: f"the traced module differs from the module: {m}")
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return path


def export_onnx(module: nn.Module, inputs: ModelInput, path: str | os.PathLike, *, opset: int = 17,
                input_names: Sequence[str] | None = None, dynamic_batch: bool = True) -> Path:
    """Export a static module to ONNX at ``path`` (TorchScript-based exporter, ``dynamo=False``).

    Inputs are named ``input`` (or ``slow``, ``fast`` for two pathways) unless
    ``input_names`` is given; the output is ``logits``; the batch dim is dynamic.
    """
    if has_slim_layers(module):
        raise TypeError("export_onnx takes a static module: call export_subnet(model, cfg) first")
    path = Path(path)
    tensors = _tensors(inputs)
    if input_names is None:
        input_names = ["slow", "fast"] if len(tensors) == 2 else [f"input{i}" if len(tensors) > 1 else "input"
                                                                  for i in range(len(tensors))]
    input_names = list(input_names)
    if len(input_names) != len(tensors):
        raise ValueError(f"{len(input_names)} input names for {len(tensors)} inputs")
    dynamic_axes = {n: {0: "batch"} for n in [*input_names, "logits"]} if dynamic_batch else None
    module.eval()
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=(FutureWarning, DeprecationWarning, UserWarning))
        torch.onnx.export(module, _as_args(inputs), str(tmp), input_names=input_names, output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    return path
