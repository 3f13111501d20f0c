"""Slimmable PyTorchVideo models: equivalence to stock, sub-networks, shapes, registry."""

from __future__ import annotations

import functools

import pytest
import torch
from fvcore.nn.squeeze_excitation import SqueezeExcitation
from model_checks import assert_full_width_equals, width_rule
from pytorchvideo.models.head import create_res_basic_head
from pytorchvideo.models.net import MultiPathWayWithFuse, Net
from pytorchvideo.models.resnet import create_bottleneck_block, create_res_stage, create_resnet
from pytorchvideo.models.slowfast import FuseFastToSlow, PoolConcatPathway, create_slowfast
from pytorchvideo.models.stem import create_res_basic_stem
from pytorchvideo.models.x3d import (
    create_x3d,
    create_x3d_bottleneck_block,
    create_x3d_head,
    create_x3d_res_stage,
    create_x3d_stem,
)
from torch import nn

from mutualnet_video.core import (
    ConfigSpace,
    SlimBatchNorm3d,
    SlimConv3d,
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
    assert_full_width_equals(stock, slim, make_input())


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


def test_x3d_swish_is_traceable_with_autograd_and_unchanged_in_eager():
    """The converter's CompilableSwish: PyTorchVideo's Swish in eager (same values and gradient),
    and one graph without a break under torch.compile with autograd on (the original's backward
    reads ctx.saved_variables, which dynamo cannot trace: it fell back to eager)."""
    from pytorchvideo.layers.swish import Swish
    from torch._dynamo.testing import CompileCounter

    from mutualnet_video.models.convert import CompilableSwish

    slim = create_slimmable_x3d(**X3D_KW)
    swishes = [m for m in slim.modules() if isinstance(m, Swish)]
    assert swishes and all(type(m) is CompilableSwish for m in swishes)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    CompilableSwish()(x).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    Swish()(x2).sum().backward()
    assert torch.equal(CompilableSwish()(x), Swish()(x)) and torch.equal(x.grad, x2.grad)
    torch._dynamo.reset()
    counter = CompileCounter()
    torch._dynamo.utils.counters.clear()
    out = torch.compile(CompilableSwish(), backend=counter)(x)
    out.sum().backward()
    counters = torch._dynamo.utils.counters  # Swish: "unimplemented", its forward compiled alone
    assert counter.frame_count == 1 and not counters["graph_break"] and not counters["unimplemented"]
    torch.testing.assert_close(out, Swish()(x))


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
# The dense reference is built from stock PyTorchVideo parts with channel counts computed
# HERE from the width rule of REFERENCE.md Sec. 1 (never read from the model): a layer of c
# channels keeps make_divisible(c * w, 8) -- the nearest multiple of 8, at least 8, never
# below 90% of c * w -- capped at c, and exactly c at width 1; the classifier keeps its
# classes; SlowFast's Fast pathway keeps its width unless slim_fast. A wrong rule in the
# library gives a different network here, so a shape or value mismatch.
_rule = width_rule


def _part_index(parts: list[tuple[int, int]]) -> torch.Tensor:
    """Input channels of a layer fed by a concatenation: the leading ``active`` of each ``full`` part."""
    index, offset = [], 0
    for full, active in parts:
        index.append(torch.arange(offset, offset + active))
        offset += full
    return torch.cat(index)


def _res_stage(depth: int, dim_in: int, dim_inner: int, dim_out: int, kernel_a: tuple, stride: int) -> nn.Module:
    """PyTorchVideo's ResNet stage as ``create_resnet`` / ``create_slowfast`` build it."""
    return create_res_stage(
        depth=depth, dim_in=dim_in, dim_inner=dim_inner, dim_out=dim_out, bottleneck=create_bottleneck_block,
        conv_a_kernel_size=kernel_a, conv_a_stride=(1, 1, 1), conv_a_padding=tuple(k // 2 for k in kernel_a),
        conv_b_kernel_size=(1, 3, 3), conv_b_stride=(1, stride, stride), conv_b_padding=(0, 1, 1),
    )


def _res_stem(out_channels: int, kernel: tuple) -> nn.Module:
    return create_res_basic_stem(
        in_channels=3, out_channels=out_channels, conv_kernel_size=kernel, conv_stride=(1, 2, 2),
        conv_padding=tuple(k // 2 for k in kernel), pool=nn.MaxPool3d, pool_kernel_size=(1, 3, 3),
        pool_stride=(1, 2, 2), pool_padding=(0, 1, 1),
    )


# X3D of X3D_KW (width factor 2, depth factor 1, bottleneck 2.25, SE 1/16 on every other block):
# stem 24; per stage (depth, dim_out, dim_inner, SE channels); head dim_inner -> 2048 -> classes.
_X3D_STEM, _X3D_HEAD = 24, 2048
_X3D_STAGES = ((1, 24, 54, 8), (2, 48, 108, 8), (5, 96, 216, 16), (3, 192, 432, 32))


def _x3d_bottleneck(*, se_channels: int, se_ratio: float, dim_inner: int, **kwargs) -> nn.Module:
    """``create_x3d_bottleneck_block`` whose SE block has ``se_channels`` (the slimmed count)."""
    block = create_x3d_bottleneck_block(dim_inner=dim_inner, se_ratio=0.0, **kwargs)
    if se_ratio > 0:
        block.norm_b[1] = SqueezeExcitation(num_channels=dim_inner, num_channels_reduced=se_channels, is_3d=True)
    return block


def _dense_x3d(width: float, *, slim_fast: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    a = functools.partial(_rule, width=width)
    blocks = [create_x3d_stem(in_channels=3, out_channels=a(_X3D_STEM), conv_kernel_size=(5, 3, 3),
                              conv_stride=(1, 2, 2), conv_padding=(2, 1, 1))]
    dim_in = a(_X3D_STEM)
    for depth, dim_out, dim_inner, se in _X3D_STAGES:
        blocks.append(create_x3d_res_stage(
            depth=depth, dim_in=dim_in, dim_inner=a(dim_inner), dim_out=a(dim_out),
            bottleneck=functools.partial(_x3d_bottleneck, se_channels=a(se)), conv_stride=(1, 2, 2),
        ))
        dim_in = a(dim_out)
    blocks.append(create_x3d_head(dim_in=dim_in, dim_inner=a(_X3D_STAGES[-1][2]), dim_out=a(_X3D_HEAD),
                                  num_classes=10, pool_kernel_size=(2, 1, 1), dropout_rate=0.0, activation=None))
    return Net(blocks=nn.ModuleList(blocks)), {}


# Slow R50 of SLOW_TINY_KW with stem 16: per stage (depth, conv_a kernel, spatial stride);
# stage i has inner 16 * 2^i and output 4 x inner channels.
_SLOW_STAGES = ((3, (1, 1, 1), 1), (4, (1, 1, 1), 2), (6, (3, 1, 1), 2), (3, (3, 1, 1), 2))


def _dense_slow(width: float, *, slim_fast: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    a = functools.partial(_rule, width=width)
    blocks, dim_in, inner = [_res_stem(a(16), (1, 7, 7))], a(16), 16
    for depth, kernel_a, stride in _SLOW_STAGES:
        blocks.append(_res_stage(depth, dim_in, a(inner), a(4 * inner), kernel_a, stride))
        dim_in, inner = a(4 * inner), 2 * inner
    blocks.append(create_res_basic_head(in_features=dim_in, out_features=10, pool=nn.AdaptiveAvgPool3d,
                                        output_size=(1, 1, 1), dropout_rate=0.0))
    return Net(blocks=nn.ModuleList(blocks)), {}


def _dense_slowfast(width: float, *, slim_fast: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """SlowFast of SLOWFAST_TINY_KW (depth 18, stems 16 / 2, beta 1/8, lateral 2x fast channels,
    alpha 4); the layers fed by a concatenation read the leading active channels of each part."""
    a = functools.partial(_rule, width=width)
    f = a if slim_fast else (lambda channels: channels)
    in_index: dict[str, torch.Tensor] = {}

    def fusion(fast_channels: int) -> tuple[nn.Module, int]:
        lateral = 2 * fast_channels
        conv = nn.Conv3d(f(fast_channels), a(lateral), (7, 1, 1), stride=(4, 1, 1), padding=(3, 0, 0), bias=False)
        return FuseFastToSlow(conv_fast_to_slow=conv, norm=nn.BatchNorm3d(a(lateral)), activation=nn.ReLU()), lateral

    fuse, lateral = fusion(2)
    stems = nn.ModuleList([_res_stem(a(16), (1, 7, 7)), _res_stem(f(2), (5, 7, 7))])
    blocks = [MultiPathWayWithFuse(multipathway_blocks=stems, multipathway_fusion=fuse)]
    slow_in, fast_in, inner = 16, 2, 16
    for idx, (kernel_a, stride) in enumerate(zip(((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)), (1, 2, 2, 2))):
        first = f"blocks.{idx + 1}.multipathway_blocks.0.res_blocks.0"
        parts = [(slow_in, a(slow_in)), (lateral, a(lateral))]
        in_index[f"{first}.branch1_conv"] = in_index[f"{first}.branch2.conv_a"] = _part_index(parts)
        slow = _res_stage(1, a(slow_in) + a(lateral), a(inner), a(4 * inner), kernel_a, stride)
        fast = _res_stage(1, f(fast_in), f(inner // 8), f(4 * inner // 8), (3, 1, 1), stride)
        fuse, lateral = fusion(4 * inner // 8) if idx < 3 else (nn.Identity(), 0)
        blocks.append(MultiPathWayWithFuse(multipathway_blocks=nn.ModuleList([slow, fast]), multipathway_fusion=fuse))
        slow_in, fast_in, inner = 4 * inner, 4 * inner // 8, 2 * inner
    blocks.append(PoolConcatPathway(retain_list=False, pool=nn.ModuleList([nn.AdaptiveAvgPool3d(1)] * 2)))
    in_index["blocks.6.proj"] = _part_index([(slow_in, a(slow_in)), (fast_in, f(fast_in))])
    blocks.append(create_res_basic_head(in_features=a(slow_in) + f(fast_in), out_features=10, pool=None,
                                        dropout_rate=0.0))
    return Net(blocks=nn.ModuleList(blocks)), in_index


def _load_sliced(dense: nn.Module, model: nn.Module, in_index: dict[str, torch.Tensor]) -> nn.Module:
    """``dense`` loaded strictly with the leading slices of ``model``'s tensors (the inputs of the
    layers in ``in_index`` picked part by part)."""
    source = model.state_dict()
    sliced = {}
    for key, target in dense.state_dict().items():
        tensor = source[key]
        if tensor.dim() > 0:
            tensor = tensor[: target.shape[0]]
            layer = key.rpartition(".")[0]
            if tensor.dim() > 1:
                tensor = tensor.index_select(1, in_index[layer]) if layer in in_index else tensor[:, : target.shape[1]]
        sliced[key] = tensor
    dense.load_state_dict(sliced, strict=True)
    return dense.eval()


SUBNET_CASES = {
    "x3d": (lambda: create_slimmable_x3d(**X3D_KW, width_range=(0.25, 1.0), frames=(2, 1), crops=(32,)),
            _dense_x3d, False),
    "slow": (lambda: create_slimmable_resnet(**dict(SLOW_TINY_KW, stem_dim_out=16), width_range=(0.25, 1.0),
                                             frames=(2, 1), crops=(32,)), _dense_slow, False),
    "slowfast": (lambda: create_slimmable_slowfast(**SLOWFAST_TINY_KW, width_range=(0.25, 1.0), frames=(2, 1),
                                                   crops=(32,)), _dense_slowfast, False),
    "slowfast_slim_fast": (lambda: create_slimmable_slowfast(**SLOWFAST_TINY_KW, width_range=(0.25, 1.0),
                                                             frames=(2, 1), crops=(32,), slim_fast=True),
                           _dense_slowfast, True),
}
_STOCK_OF_CASE = {
    "x3d": lambda: create_x3d(**X3D_KW, head_activation=None),
    "slow": lambda: create_resnet(**dict(SLOW_TINY_KW, stem_dim_out=16)),
    "slowfast": lambda: create_slowfast(**SLOWFAST_TINY_KW),
}


@pytest.mark.parametrize("case", sorted(_STOCK_OF_CASE))
def test_dense_reference_at_full_width_is_the_stock_network(case):
    """The architectures written out above are the stock builders' (so the rule is all that changes)."""
    dense, _ = SUBNET_CASES[case][1](1.0)
    stock = _STOCK_OF_CASE[case]()
    assert {k: v.shape for k, v in dense.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}


@pytest.mark.parametrize("case", sorted(SUBNET_CASES))
@pytest.mark.parametrize("width", [0.25, 0.6])
def test_subnetwork_equals_dense_network_of_sliced_weights(case, width):
    torch.manual_seed(0)
    build, build_dense, slim_fast = SUBNET_CASES[case]
    model = _randomize(build()).eval()
    space = get_space(model)
    cfg = SubnetConfig(width, space.frames[0], space.crops[-1])
    x = dummy_input(space, cfg)
    x = [t.normal_() for t in x] if isinstance(x, list) else x.normal_()
    dense, in_index = build_dense(width, slim_fast=slim_fast)
    dense = _load_sliced(dense, model, in_index)
    assert not list(slimmable_modules(dense))
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
