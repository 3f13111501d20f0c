"""Slimmable 2D backbones: torchvision equivalence, width rules, FLOPs, shapes, registry."""

from __future__ import annotations

import copy
import functools
from collections import Counter

import pytest
import torch
import torchvision
from fvcore.nn import FlopCountAnalysis
from model_checks import width_rule
from torch import nn
from torchvision.models.resnet import Bottleneck

from mutualnet_video.core import SlimmableModule, SubnetConfig, get_space, use_config
from mutualnet_video.models import detection, mobilenet, resnet2d, segmentation  # noqa: F401 (registration)
from mutualnet_video.models.registry import create_model, list_models

# Operator-level multiply-adds of conv / linear / matmul (the project convention). fvcore's
# ``set_op_handle(name, None)`` does not drop an op that has a default handle (fvcore
# 0.1.5.post20221221 only adds it to the ignore list, which is checked after the handles),
# so the uncounted ops get a zero handle. The integrator swaps this for ``count_flops``.
_NOT_COUNTED = (
    "aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
    "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d", "aten::grid_sampler",
)


def flops_2d(model: nn.Module, cfg: SubnetConfig) -> int:
    model.eval()
    with use_config(model, cfg), torch.no_grad():
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, cfg.crop, cfg.crop))
        for op in _NOT_COUNTED:
            analysis.set_op_handle(op, lambda inputs, outputs: Counter())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())


@functools.cache
def _paper_model(name: str) -> nn.Module:
    """One ImageNet-shaped model per name for the read-only FLOPs checks."""
    return create_model(name).eval()


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


# -- width-1.0 equivalence with torchvision ----------------------------------------------
@pytest.mark.parametrize("name, reference", [
    ("mutual_mobilenet_v2", lambda: torchvision.models.mobilenet_v2(num_classes=10)),
    ("mutual_resnet50", lambda: torchvision.models.resnet50(num_classes=10)),
])
def test_full_width_equals_torchvision(name, reference, tmp_path):
    torch.manual_seed(0)
    ref = reference().eval()
    _randomize_bn(ref)
    path = tmp_path / "torchvision.pth"
    torch.save(ref.state_dict(), path)  # torchvision's layout: a plain state dict
    model = create_model(name, num_classes=10, weights=str(path)).eval()  # loaded strictly
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(model(x), expected)
        with use_config(model, get_space(model).full()):
            torch.testing.assert_close(model(x), expected)
    # torchvision can read our state dict back (same names, same shapes)
    reference().load_state_dict(model.state_dict(), strict=True)


def test_every_conv_bn_linear_is_slimmable():
    for name in ("mutual_mobilenet_v1", "mutual_mobilenet_v2", "mutual_resnet50"):
        model = create_model(name, num_classes=10)
        plain = [n for n, m in model.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) and not isinstance(m, SlimmableModule)]
        assert plain == [], f"{name}: not converted: {plain}"


# -- a sub-network equals a dense network built from the sliced weights ------------------
_md = width_rule  # the width rule, computed in the tests (REFERENCE.md Sec. 1)


def _mobilenet_v1_rule(name, conv, cur, block_in, width):
    return _md(conv.out_channels, width)


def _mobilenet_v2_rule(name, conv, cur, block_in, width):
    if name == "features.18.0":  # last 1x1 conv keeps its 1280 outputs
        return conv.out_channels
    if name.endswith("conv.0.0") and conv.groups == 1 and conv.out_channels != conv.in_channels:
        ratio = conv.out_channels // conv.in_channels  # expansion: t x the slimmed block input
        return ratio * _md(conv.in_channels, width)
    return _md(conv.out_channels, width)


def _resnet_rule(name, conv, cur, block_in, width):
    if name.endswith(("conv3", "downsample.0")):  # 4 x the slimmed middle width
        return 4 * _md(conv.out_channels // 4, width)
    return _md(conv.out_channels, width)


def _dense_copy(model: nn.Module, width: float, rule) -> nn.Module:
    """Plain nn layers holding the leading slices given by the width rules, walked in order."""
    dense = copy.deepcopy(model)
    cur, block_in = 3, None
    for name, m in model.named_modules():
        if isinstance(m, Bottleneck):
            block_in = cur
        if isinstance(m, nn.Conv2d):
            cin = block_in if name.endswith("downsample.0") else cur
            depthwise = m.groups > 1
            cout = cin if depthwise else rule(name, m, cur, block_in, width)
            new = nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation,
                            groups=cin if depthwise else 1, bias=m.bias is not None)
            new.weight.data.copy_(m.weight[:cout] if depthwise else m.weight[:cout, :cin])
            if m.bias is not None:
                new.bias.data.copy_(m.bias[:cout])
            cur = cout
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(cur, eps=m.eps, momentum=m.momentum)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).data.copy_(getattr(m, key)[:cur])
        elif isinstance(m, nn.Linear):
            new = nn.Linear(cur, m.out_features)
            new.weight.data.copy_(m.weight[:, :cur])
            new.bias.data.copy_(m.bias)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent) if parent else dense, child, new)
    assert not any(isinstance(m, SlimmableModule) for m in dense.modules())
    return dense.eval()


@pytest.mark.parametrize("name, width, rule", [
    ("mutual_mobilenet_v1", 0.25, _mobilenet_v1_rule),
    ("mutual_mobilenet_v2", 0.7, _mobilenet_v2_rule),
    pytest.param("mutual_mobilenet_v2", 0.85, _mobilenet_v2_rule, marks=pytest.mark.slow),
    ("mutual_resnet50", 0.9, _resnet_rule),
    pytest.param("mutual_resnet50", 0.25, _resnet_rule, marks=pytest.mark.slow),
])
def test_subnet_equals_dense_sliced_model(name, width, rule):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width_range=(0.25, 1.0)).eval()
    _randomize_bn(model)
    dense = _dense_copy(model, width, rule)
    x = torch.randn(2, 3, 48, 48)
    cfg = SubnetConfig(width, None, 128)
    with torch.no_grad(), use_config(model, cfg):
        out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(out, dense(x))
    assert out.shape == (2, 10)


# -- FLOPs at the MutualNet configurations (REFERENCE.md Sec. 2) -----------------------------
@pytest.mark.parametrize("name, width, crop, mflops", [
    ("mutual_mobilenet_v1", 1.0, 224, 569), ("mutual_mobilenet_v1", 1.0, 192, 418),
    ("mutual_mobilenet_v1", 0.5, 160, 76), ("mutual_mobilenet_v1", 0.25, 128, 13.6),
    ("mutual_mobilenet_v2", 1.0, 224, 300), ("mutual_mobilenet_v2", 1.0, 192, 221),
    ("mutual_mobilenet_v2", 0.7, 128, 57.6),
])
def test_flops_match_mutualnet_tables(name, width, crop, mflops):
    measured = flops_2d(_paper_model(name), SubnetConfig(width, None, crop)) / 1e6
    assert measured == pytest.approx(mflops, rel=0.03), f"{name} {width}@{crop}: {measured:.2f}M vs {mflops}M"


def test_flops_grow_with_width_and_crop():
    model = create_model("mutual_mobilenet_v1", num_classes=10, crops=(64, 32))
    f = {(w, c): flops_2d(model, SubnetConfig(w, None, c)) for w, c in ((0.25, 32), (0.5, 32), (0.25, 64))}
    assert f[(0.25, 32)] < f[(0.5, 32)]
    assert f[(0.25, 32)] < f[(0.25, 64)]


# -- shapes at every configuration, backward, registry ------------------------------------
@pytest.mark.parametrize("name", [
    "mutual_mobilenet_v1", "mutual_mobilenet_v2", pytest.param("mutual_resnet50", marks=pytest.mark.slow),
])
def test_every_config_runs_forward_backward(name):
    model = create_model(name, num_classes=5, crops=(48, 32), width_range=(0.25, 1.0), widths=(1.0, 0.5, 0.25))
    space = get_space(model)
    assert space.frames == (None,) and space.crops == (48, 32)
    for cfg in space.grid():
        with use_config(model, cfg):
            out = model(torch.randn(2, 3, cfg.crop, cfg.crop))
            assert out.shape == (2, 5) and torch.isfinite(out).all(), cfg
            out.sum().backward()


def test_registry_defaults_follow_the_paper():
    assert {"mutual_mobilenet_v1", "mutual_mobilenet_v2", "mutual_resnet50"} <= set(list_models())
    spaces = {name: get_space(create_model(name, num_classes=10))
              for name in ("mutual_mobilenet_v1", "mutual_mobilenet_v2", "mutual_resnet50")}
    assert spaces["mutual_mobilenet_v1"].width_range == (0.25, 1.0)
    assert spaces["mutual_mobilenet_v2"].width_range == (0.7, 1.0)
    assert spaces["mutual_resnet50"].width_range == (0.9, 1.0)
    for space in spaces.values():
        assert space.crops == (224, 192, 160, 128) and not space.is_video
    with pytest.raises(KeyError, match="mutual_nope"):
        create_model("mutual_nope")


def test_out_of_space_config_is_rejected():
    model = create_model("mutual_mobilenet_v2", num_classes=10)
    with pytest.raises(ValueError, match="width 0.5"):
        with use_config(model, SubnetConfig(0.5, None, 224)):
            pass
    with pytest.raises(ValueError, match="crop=96"):
        with use_config(model, SubnetConfig(1.0, None, 96)):
            pass
