"""Slimmable PyTorchVideo models: equivalence to stock, sub-networks, shapes, registry."""

from __future__ import annotations

import copy

import pytest
import torch
from pytorchvideo.models.resnet import create_resnet
from pytorchvideo.models.slowfast import create_slowfast
from pytorchvideo.models.x3d import create_x3d
from torch import nn

import mutualnet_video  # noqa: F401  (compat aliases before pytorchvideo)
from mutualnet_video.core import (
    ConfigSpace,
    SlimBatchNorm3d,
    SlimConv3d,
    SlimLinear,
    SubnetConfig,
    dummy_input,
    get_space,
    scale_channels,
    slimmable_modules,
    use_config,
)
from mutualnet_video.models import (
    UnsupportedModuleError,
    create_model,
    create_slimmable_resnet,
    create_slimmable_slowfast,
    create_slimmable_x3d,
    get_model_entrypoint,
    list_models,
    register_model,
    slimmable,
)

# Tiny versions of the three families: small inputs, head pools sized for them.
X3D_KW = dict(input_clip_length=2, input_crop_size=32, model_num_class=10, dropout_rate=0.0, depth_factor=1.0)
SLOW_R50_KW = dict(
    model_depth=50, model_num_class=10, dropout_rate=0.0, stem_conv_kernel_size=(1, 7, 7),
    head_pool_kernel_size=(2, 2, 2),
)
SLOWFAST_R50_KW = dict(
    model_depth=50, model_num_class=10, dropout_rate=0.0, head_pool_kernel_sizes=((2, 2, 2), (8, 2, 2)),
)
# Narrow versions (stem 8 or 16 channels) for the default suite.
SLOW_TINY_KW = dict(SLOW_R50_KW, stem_dim_out=8, head_pool_kernel_size=(2, 1, 1))
SLOWFAST_TINY_KW = dict(
    model_depth=18, model_num_class=10, dropout_rate=0.0, stem_dim_outs=(16, 2),
    head_pool_kernel_sizes=((2, 1, 1), (8, 1, 1)),
)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine and running stats, so eval-mode checks see every slice."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def _clip(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- equivalence to the stock model at full width -------------------------------------
def _slowfast_clip(crop: int):
    return lambda: [_clip(1, 3, 2, crop, crop), _clip(1, 3, 8, crop, crop, seed=2)]


STOCK_CASES = {
    "x3d": (create_x3d, create_slimmable_x3d, dict(X3D_KW, head_activation=None), lambda: _clip(2, 3, 2, 32, 32)),
    "slow_tiny": (create_resnet, create_slimmable_resnet, SLOW_TINY_KW, lambda: _clip(2, 3, 2, 32, 32)),
    "slowfast_tiny": (create_slowfast, create_slimmable_slowfast, SLOWFAST_TINY_KW, _slowfast_clip(32)),
    "slow_r50": (create_resnet, create_slimmable_resnet, SLOW_R50_KW, lambda: _clip(1, 3, 2, 64, 64)),
    "slowfast_r50": (create_slowfast, create_slimmable_slowfast, SLOWFAST_R50_KW, _slowfast_clip(64)),
}
_SLOW_CASES = ("slow_r50", "slowfast_r50")


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.slow) if f in _SLOW_CASES else f for f in sorted(STOCK_CASES)]
)
def test_full_width_equals_stock(family):
    stock_builder, slim_builder, kwargs, make_input = STOCK_CASES[family]
    torch.manual_seed(0)
    stock = _randomize(stock_builder(**kwargs)).eval()
    slim = slim_builder(**kwargs).eval()
    stock_sd = stock.state_dict()
    assert list(slim.state_dict()) == list(stock_sd), "state-dict keys differ from the stock model"
    slim.load_state_dict(stock_sd, strict=True)
    space = get_space(slim)
    x = make_input()
    with torch.no_grad():
        expected = stock([t.clone() for t in x] if isinstance(x, list) else x)
        with use_config(slim, space.full()):
            got = slim([t.clone() for t in x] if isinstance(x, list) else x)
        got_unset = slim([t.clone() for t in x] if isinstance(x, list) else x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_unset, expected)


def test_x3d_train_mode_equals_stock_and_updates_same_stats():
    torch.manual_seed(0)
    stock = create_x3d(**X3D_KW, head_activation=None)
    slim = create_slimmable_x3d(**X3D_KW)
    slim.load_state_dict(stock.state_dict(), strict=True)
    x = _clip(2, 3, 2, 32, 32)
    with use_config(slim, get_space(slim).full()):
        got = slim(x)
    torch.testing.assert_close(got, stock(x))
    torch.testing.assert_close(slim.state_dict(), stock.state_dict())


def test_slimmable_converts_in_place_keeping_tensors_and_attributes():
    torch.manual_seed(0)
    model = _randomize(create_x3d(**X3D_KW, head_activation=None)).eval()
    x = _clip(1, 3, 2, 32, 32)
    with torch.no_grad():
        before = model(x)
    weight = model.blocks[1].res_blocks[0].branch2.conv_a.weight
    final_bn = [n for n, m in model.named_modules() if getattr(m, "block_final_bn", False)]
    assert final_bn
    out = slimmable(model, space=ConfigSpace(width_range=(0.5, 1.0), frames=(2, 1), crops=(32, 16)))
    assert out is model
    conv_a = model.blocks[1].res_blocks[0].branch2.conv_a
    assert isinstance(conv_a, SlimConv3d) and conv_a.weight is weight
    assert final_bn == [n for n, m in model.named_modules() if getattr(m, "block_final_bn", False)]
    for name, m in model.named_modules():
        assert type(m) not in (nn.Conv3d, nn.BatchNorm3d, nn.Linear), f"{name} was not converted"
    assert isinstance(model.blocks[-1].pool.pool, nn.AdaptiveAvgPool3d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


# -- a sub-network equals a dense network built from the sliced weights ---------------
def _sliced_index(module, width: float, in_active: int) -> torch.Tensor:
    """Active input indices, computed here from in_splits (independent of the layer code)."""
    if module.in_splits is None:
        return torch.arange(in_active)
    parts, offset = [], 0
    for channels, slim in module.in_splits:
        parts.append(torch.arange(offset, offset + (scale_channels(channels, width) if slim else channels)))
        offset += channels
    return torch.cat(parts)


def _dense_copy(model: nn.Module, cfg: SubnetConfig, x) -> nn.Module:
    """A copy of ``model`` where each slim layer is a plain nn layer of its active shape."""
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: shapes.__setitem__(
            name, (args[0].shape[1] if not isinstance(mod, nn.Linear) else args[0].shape[-1],
                   out.shape[1] if not isinstance(mod, nn.Linear) else out.shape[-1])))
        for name, m in slimmable_modules(model)
    ]
    with torch.no_grad(), use_config(model, cfg):
        model([t.clone() for t in x] if isinstance(x, list) else x)
    for h in hooks:
        h.remove()
    dense = copy.deepcopy(model)
    for name, m in list(slimmable_modules(dense)):
        c_in, c_out = shapes[name]
        with torch.no_grad():
            if isinstance(m, SlimConv3d):
                depthwise = m.groups > 1
                new = nn.Conv3d(c_in, c_out, m.kernel_size, stride=m.stride, padding=m.padding,
                                dilation=m.dilation, groups=c_out if depthwise else 1, bias=m.bias is not None)
                w = m.weight[:c_out]
                if not depthwise:
                    w = w.index_select(1, _sliced_index(m, cfg.width, c_in))
                new.weight.copy_(w)
                if m.bias is not None:
                    new.bias.copy_(m.bias[:c_out])
            elif isinstance(m, SlimLinear):
                new = nn.Linear(c_in, c_out, bias=m.bias is not None)
                new.weight.copy_(m.weight[:c_out].index_select(1, _sliced_index(m, cfg.width, c_in)))
                new.bias.copy_(m.bias[:c_out])
            else:
                new = nn.BatchNorm3d(c_in, eps=m.eps, momentum=m.momentum)
                new.weight.copy_(m.weight[:c_in])
                new.bias.copy_(m.bias[:c_in])
                new.running_mean.copy_(m.running_mean[:c_in])
                new.running_var.copy_(m.running_var[:c_in])
        parent, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent) if parent else dense, child, new)
    assert not list(slimmable_modules(dense))
    return dense.eval()


SUBNET_CASES = {
    "x3d": (lambda: create_slimmable_x3d(**X3D_KW, width_range=(0.25, 1.0), frames=(2, 1), crops=(32,)), {}),
    "slow": (lambda: create_slimmable_resnet(**dict(SLOW_TINY_KW, stem_dim_out=16), width_range=(0.25, 1.0),
                                             frames=(2, 1), crops=(32,)), {}),
    "slowfast": (lambda: create_slimmable_slowfast(**SLOWFAST_TINY_KW, width_range=(0.25, 1.0), frames=(2, 1),
                                                   crops=(32,)), {}),
    "slowfast_slim_fast": (lambda: create_slimmable_slowfast(**SLOWFAST_TINY_KW, width_range=(0.25, 1.0),
                                                             frames=(2, 1), crops=(32,), slim_fast=True), {}),
}


@pytest.mark.parametrize("case", sorted(SUBNET_CASES))
@pytest.mark.parametrize("width", [0.25, 0.6])
def test_subnetwork_equals_dense_network_of_sliced_weights(case, width):
    torch.manual_seed(0)
    model = _randomize(SUBNET_CASES[case][0]()).eval()
    space = get_space(model)
    cfg = SubnetConfig(width, space.frames[0], space.crops[-1])
    x = dummy_input(space, cfg)
    x = [t.normal_() for t in x] if isinstance(x, list) else x.normal_()
    dense = _dense_copy(model, cfg, x)
    with torch.no_grad(), use_config(model, cfg):
        got = model([t.clone() for t in x] if isinstance(x, list) else x)
    with torch.no_grad():
        expected = dense([t.clone() for t in x] if isinstance(x, list) else x)
    torch.testing.assert_close(got, expected)
    # the sub-network is really narrower than the full one
    assert sum(p.numel() for p in dense.parameters()) < sum(p.numel() for p in model.parameters())


def test_slowfast_width_rules():
    model = create_slimmable_slowfast(**SLOWFAST_TINY_KW, frames=(2,), crops=(32,)).eval()
    cfg = SubnetConfig(0.5, 2, 32)
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o.shape[1]))
             for n, m in model.named_modules() if isinstance(m, (SlimConv3d,))]
    with torch.no_grad(), use_config(model, cfg):
        model(dummy_input(get_space(model), cfg))
    for h in hooks:
        h.remove()
    slow_stem = "blocks.0.multipathway_blocks.0.conv"
    fast_stem = "blocks.0.multipathway_blocks.1.conv"
    lateral = "blocks.0.multipathway_fusion.conv_fast_to_slow"
    assert outs[slow_stem] == scale_channels(16, 0.5)
    assert outs[fast_stem] == 2  # the Fast pathway keeps its width
    assert outs[lateral] == scale_channels(4, 0.5)  # follows the slow width
    head = model.blocks[-1].proj
    assert head.in_splits == ((512, True), (64, False)) and head.out_features == 10
    first = model.blocks[1].multipathway_blocks[0].res_blocks[0]
    assert first.branch1_conv.in_splits == first.branch2.conv_a.in_splits == ((16, True), (4, True))


def test_slowfast_space_needs_matching_alpha():
    model = create_slowfast(**SLOWFAST_TINY_KW)
    with pytest.raises(ValueError, match="slowfast_alpha=4"):
        slimmable(model, space=ConfigSpace(width_range=(0.5, 1.0), frames=(2,), crops=(64,)))
    with pytest.raises(ValueError, match="slowfast_alpha=4"):
        slimmable(model, space=ConfigSpace(width_range=(0.5, 1.0), frames=(2,), crops=(64,), slowfast_alpha=2))


# -- every registered model, every configuration of a reduced space -------------------
REDUCED = dict(model_num_class=10, frames=(2, 1), crops=(32,), widths=(1.0, 0.5))


VIDEO_MODELS = [
    name for name in list_models()
    if get_model_entrypoint(name).__module__.rsplit(".", 1)[-1] in ("x3d", "slowfast", "resnet")
]  # the 2D entrypoints have their own shape tests (tests/test_2d_models.py)


def test_every_video_family_is_registered():
    assert {"mutual_x3d_xs", "mutual_x3d_m", "mutual_slowfast_r50", "mutual_slow_r50"} <= set(VIDEO_MODELS)


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_registered_model_shapes_every_config(name):
    torch.manual_seed(0)
    model = create_model(name, **REDUCED).eval()
    space = get_space(model)
    assert space.frames == (2, 1) and space.crops == (32,)
    configs = space.grid()
    assert len(configs) == 4
    for cfg in configs:
        x = dummy_input(space, cfg)
        with torch.no_grad(), use_config(model, cfg):
            out = model(x)
        assert out.shape == (1, 10), cfg
        assert torch.isfinite(out).all(), cfg


def test_registered_defaults_follow_the_paper():
    expected = {
        "mutual_x3d_m": ((16, 12, 8), (224, 192, 160, 128)),
        "mutual_slowfast_r50": ((8, 6, 4), (224, 192, 160, 128)),
    }
    spaces = {name: get_space(create_model(name, model_num_class=10)) for name in expected}
    for name, (frames, crops) in expected.items():
        space = spaces[name]
        assert space.frames == frames and space.crops == crops and space.width_range == (0.5, 1.0)
    assert spaces["mutual_slowfast_r50"].slowfast_alpha == 4 and spaces["mutual_x3d_m"].slowfast_alpha is None


def test_sandwich_backward_reaches_every_parameter():
    model = create_slimmable_slowfast(**SLOWFAST_TINY_KW, frames=(1,), crops=(32,)).train()
    space = get_space(model)
    for cfg in space.sandwich(torch.Generator().manual_seed(0)):
        with use_config(model, cfg):
            model(dummy_input(space, cfg, batch=2)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# -- registry and errors -------------------------------------------------------------
def test_registry_lists_and_errors():
    names = list_models()
    for name in ("mutual_x3d_xs", "mutual_x3d_s", "mutual_x3d_m", "mutual_x3d_l", "mutual_slowfast_r50",
                 "mutual_slow_r50"):
        assert name in names
    with pytest.raises(KeyError, match="unknown model 'mutual_x3d_q'; known models: .*mutual_x3d_m"):
        create_model("mutual_x3d_q")
    with pytest.raises(TypeError):
        create_model("mutual_x3d_xs", not_a_keyword=1)


def test_register_model_rejects_a_second_model_of_the_same_name():
    def mutual_x3d_m(**kwargs):  # same name as a registered entrypoint
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="'mutual_x3d_m' is already registered"):
        register_model(mutual_x3d_m)


def test_registry_overrides():
    model = create_model("mutual_x3d_xs", model_num_class=7, width_range=(0.25, 1.0), frames=(2,), crops=(32,))
    space = get_space(model)
    assert space.width_range == (0.25, 1.0) and model.blocks[-1].proj.out_features == 7


@pytest.mark.parametrize(
    "bad, kind",
    [
        (nn.Conv3d(8, 16, 3, groups=2), "Conv3d with groups=2"),
        (nn.Conv2d(8, 8, 1), "Conv2d"),
        (nn.LayerNorm(8), "LayerNorm"),
    ],
)
def test_slimmable_rejects_unsupported_modules(bad, kind):
    model = create_x3d(**X3D_KW, head_activation=None)
    model.blocks[1].res_blocks[0].branch2.extra = bad
    with pytest.raises(UnsupportedModuleError, match=rf"blocks\.1\.res_blocks\.0\.branch2\.extra: {kind}"):
        slimmable(model, space=ConfigSpace(width_range=(0.5, 1.0), frames=(2,), crops=(32,)))


def test_slimmable_keeps_already_slim_layers():
    model = create_x3d(**X3D_KW, head_activation=None, norm=SlimBatchNorm3d)
    bn = model.blocks[0].norm
    slimmable(model, space=ConfigSpace(width_range=(0.5, 1.0), frames=(2,), crops=(32,)))
    assert model.blocks[0].norm is bn


def test_slimmable_needs_a_video_space():
    with pytest.raises(ValueError, match="video space"):
        slimmable(create_x3d(**X3D_KW), space=ConfigSpace(width_range=(0.5, 1.0), crops=(64,)))
