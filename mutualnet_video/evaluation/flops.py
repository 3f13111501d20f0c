"""FLOPs and parameters of one sub-network, counted at the operator level.

Convention (X3D, MobileNet and MutualNet papers): one multiply-add is one FLOP,
counted for convolutions, linear layers and matrix products only; BatchNorm (folded
into the preceding conv at deployment), normalisations, activations, pooling and
resampling are not counted. The model is traced at the configuration in eval mode
with batch 1, so a slimmed layer is counted at its sliced shape (never from module
attributes).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from ..core import SlimmableModule, SubnetConfig, dummy_input, get_space, use_config
from ..core.inputs import ModelInput

__all__ = ["count_flops", "count_params", "UNCOUNTED_OPS"]

# fvcore's default handles that are not multiply-adds of conv/linear/matmul.
UNCOUNTED_OPS = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)


@contextmanager
def _at_config(model: nn.Module, cfg: SubnetConfig) -> Iterator[nn.Module]:
    """Eval mode at ``cfg``; training mode and configuration restored after."""
    was_training = model.training
    model.eval()
    try:
        with use_config(model, cfg):
            yield model
    finally:
        model.train(was_training)


def _uncounted(inputs, outputs) -> Counter:
    return Counter()


def _input(model: nn.Module, cfg: SubnetConfig, inputs: ModelInput | None) -> ModelInput:
    if inputs is not None:
        return inputs
    space = get_space(model)
    if space is None:
        raise ValueError(f"{type(model).__name__} has no ConfigSpace attached: pass inputs= explicitly")
    return dummy_input(space, cfg, device=_device(model))


def _device(model: nn.Module) -> torch.device | None:
    param = next(model.parameters(), None)
    return None if param is None else param.device


def count_flops(model: nn.Module, cfg: SubnetConfig, *, inputs: ModelInput | None = None) -> int:
    """Multiply-adds of ``model`` at ``cfg`` (conv, linear, matmul, einsum, bmm, addmm).

    Args:
        model: a slimmable model with its ``ConfigSpace`` attached.
        cfg: the configuration (validated against the space).
        inputs: the model input (default: zeros of the shape of ``cfg``, batch 1,
            ``[slow, fast]`` for SlowFast).

    Returns:
        The count for one clip (batch 1).
    """
    with _at_config(model, cfg), torch.no_grad():
        x = _input(model, cfg, inputs)
        analysis = FlopCountAnalysis(model, (x,))
        # A None handle does not remove fvcore's default handle: map them to nothing.
        analysis.set_op_handle(**{op: _uncounted for op in UNCOUNTED_OPS})
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        logger = logging.getLogger("fvcore.nn.jit_analysis")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return int(analysis.total())
        finally:
            logger.setLevel(level)


def count_params(model: nn.Module, cfg: SubnetConfig, *, inputs: ModelInput | None = None) -> int:
    """Parameters ``model`` uses at ``cfg``: the sliced weight shapes of its slim layers.

    One forward at ``cfg`` records, for every slimmable conv / linear / BatchNorm, the
    active input and output channels; the count is what a static network of those
    shapes would hold (weights, biases, BN affine). Layers that are not slimmable
    count in full. Parameters of modules not called in the forward are not counted.
    """
    used: dict[str, int] = {}
    called: set[str] = set()
    hooks = []

    def make_hook(name: str, module: nn.Module):
        def hook(mod, args, output):
            called.add(name)
            if isinstance(mod, SlimmableModule):
                used[name] = _active_params(mod, args[0], output)
        return hook

    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            hooks.append(module.register_forward_hook(make_hook(name, module)))
    try:
        with _at_config(model, cfg), torch.no_grad():
            model(_input(model, cfg, inputs))
    finally:
        for handle in hooks:
            handle.remove()
    total = 0
    for name, module in model.named_modules():
        if name not in called:
            continue
        if name in used:
            total += used[name]
        else:
            total += sum(p.numel() for p in module.parameters(recurse=False))
    return total


def _active_params(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        c_in, c_out = x.shape[1], y.shape[1]
        depthwise = module.groups > 1
        per_out = (1 if depthwise else c_in // module.groups) * int(torch.tensor(module.kernel_size).prod())
        return c_out * per_out + (c_out if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        c_in, c_out = x.shape[-1], y.shape[-1]
        return c_out * c_in + (c_out if module.bias is not None else 0)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        c = x.shape[1]
        return (c if module.weight is not None else 0) + (c if module.bias is not None else 0)
    return sum(p.numel() for p in module.parameters(recurse=False))
