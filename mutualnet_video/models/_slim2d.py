"""Turning a torchvision 2D network into a slimmable one, module by module.

Every ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` is replaced, in place, by its
slimmable subclass from :mod:`mutualnet_video.core` holding the *same* parameter and
buffer tensors under the *same* names: stock state dicts load strict and the output at
width 1.0 is unchanged. Rules that differ per layer (a layer that keeps its outputs,
a bottleneck output that keeps a channel ratio) are given by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..core import ConfigSpace, SlimBatchNorm2d, SlimConv2d, SlimLinear, SlimmableModule, scale_channels

__all__ = ["RatioSlimConv2d", "convert_2d", "slim_conv_like", "space_2d"]

class RatioSlimConv2d(SlimConv2d):
    """A :class:`SlimConv2d` whose active outputs keep a fixed ratio to a narrower layer.

    ``active outputs = channel_ratio * scale_channels(out_channels // channel_ratio, w)``:
    a MobileNetV2 expansion (ratio t: ``t`` times the slimmed block input) or a ResNet
    bottleneck output (ratio 4: four times the slimmed middle width), as in the MutualNet
    code. ``channel_ratio=1`` is a plain :class:`SlimConv2d`.
    """

    def __init__(self, *args, channel_ratio: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if channel_ratio < 1 or self.out_channels % channel_ratio:
            raise ValueError(
                f"RatioSlimConv2d: channel_ratio {channel_ratio} does not divide out_channels {self.out_channels}"
            )
        self.channel_ratio = int(channel_ratio)

    def active_out(self) -> int:
        if not self.slim_out:
            return self._full_out
        return self.channel_ratio * scale_channels(self._full_out // self.channel_ratio, self.width)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channel_ratio={self.channel_ratio}"


KeepOut = Callable[[str], bool]
ConvRule = Callable[[str], int]


def slim_conv_like(conv: nn.Conv2d, *, cls: type[SlimConv2d] = SlimConv2d, slim_out: bool = True, **extra) -> SlimConv2d:
    """A ``cls`` with ``conv``'s hyper-parameters, sharing its weight and bias tensors."""
    new = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, device="meta", slim_out=slim_out, **extra,
    )
    new.load_state_dict(conv.state_dict(), strict=True, assign=True)
    return new.train(conv.training)


def _slim_bn_like(bn: nn.BatchNorm2d) -> SlimBatchNorm2d:
    new = SlimBatchNorm2d(
        bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats, device="meta",
    )
    new.load_state_dict(bn.state_dict(), strict=True, assign=True)
    return new.train(bn.training)


def _slim_linear_like(fc: nn.Linear, *, slim_out: bool) -> SlimLinear:
    new = SlimLinear(fc.in_features, fc.out_features, bias=fc.bias is not None, device="meta", slim_out=slim_out)
    new.load_state_dict(fc.state_dict(), strict=True, assign=True)
    return new.train(fc.training)


def convert_2d(
    model: nn.Module,
    *,
    keep_out: KeepOut = lambda name: False,
    channel_ratio: ConvRule = lambda name: 1,
) -> nn.Module:
    """Make every 2D conv / BN / linear layer of ``model`` slimmable, in place; returns ``model``.

    Args:
        model: a network of ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.Linear`` layers
            (``FrozenBatchNorm2d`` is not converted: use trainable BN).
        keep_out: ``keep_out(name)`` True for a conv that keeps all its output channels
            (``slim_out=False``). Linear layers always keep their outputs (classifiers).
        channel_ratio: ``channel_ratio(name)`` > 1 makes the conv ``name`` a
            :class:`RatioSlimConv2d` (outputs keep that ratio to a narrower layer).

    Layers already slimmable are left alone. Names are those of ``model.named_modules()``.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SlimmableModule):
                continue
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Conv2d):
                ratio = channel_ratio(full)
                if ratio == 1:
                    new: nn.Module = slim_conv_like(child, slim_out=not keep_out(full))
                else:
                    new = slim_conv_like(child, cls=RatioSlimConv2d, slim_out=not keep_out(full), channel_ratio=ratio)
            elif isinstance(child, nn.BatchNorm2d):
                new = _slim_bn_like(child)
            elif isinstance(child, nn.Linear):
                new = _slim_linear_like(child, slim_out=False)
            else:
                continue
            setattr(module, child_name, new)
    return model


def space_2d(*, width_range: Sequence[float], crops: Sequence[int], num_subnets: int = 4,
             widths: Sequence[float] = ()) -> ConfigSpace:
    """The :class:`ConfigSpace` of a 2D network: ``frames=(None,)``, ``crops`` = resolutions."""
    return ConfigSpace(width_range=tuple(width_range), frames=(None,), crops=tuple(crops),
                       num_subnets=num_subnets, widths=tuple(widths))
