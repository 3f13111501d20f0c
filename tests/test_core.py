"""Core units: width arithmetic, configurations, slimmable layers, switching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mutualnet_video.core import (
    ConfigSpace,
    SlimBatchNorm2d,
    SlimBatchNorm3d,
    SlimConv2d,
    SlimConv3d,
    SlimLinear,
    SubnetConfig,
    attach_space,
    current_config,
    detach_space,
    get_space,
    make_divisible,
    scale_channels,
    set_config,
    use_config,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- width arithmetic ---------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [(12, 16), (20, 24), (35, 32), (36, 40), (90, 88), (3, 8), (0.5, 8), (10, 16), (64, 64)],
)
def test_make_divisible_rounds_to_nearest_multiple_within_10_percent(value, expected):
    out = make_divisible(value, 8)
    assert out == expected and out % 8 == 0 and out >= 8
    assert out >= 0.9 * value


def test_make_divisible_min_value_and_bad_divisor():
    assert make_divisible(3, 8, min_value=16) == 16
    assert make_divisible(5, 4) == 8  # 4 would lose more than 10%
    with pytest.raises(ValueError, match="divisor"):
        make_divisible(10, 0)


def test_scale_channels_rules():
    assert scale_channels(24, 1.0) == 24 and scale_channels(13, 1.0) == 13  # exact at full width
    assert scale_channels(24, 0.9) == 24  # make_divisible(21.6) = 24: capped at the full count
    assert scale_channels(12, 0.9) == 12  # make_divisible(10.8) = 16 > 12: capped
    assert scale_channels(64, 0.05) == 8  # at least 8
    assert scale_channels(256, 0.5) == 128 and scale_channels(432, 0.5) == 216
    for bad in (0.0, -0.5, 1.01, float("nan")):
        with pytest.raises(ValueError, match="width multiplier"):
            scale_channels(64, bad)


# -- configurations -----------------------------------------------------------------
def test_subnet_config_validation_and_tag_round_trip():
    cfg = SubnetConfig(0.5, 8, 160)
    assert cfg.tag == "w0500_f8_c160" and SubnetConfig.from_tag(cfg.tag) == cfg
    image = SubnetConfig(0.875, None, 224)
    assert image.tag == "w0875_fn_c224" and SubnetConfig.from_tag(image.tag) == image
    assert hash(cfg) == hash(SubnetConfig(0.5, 8, 160))
    for kwargs in (dict(width=0.0, frames=8, crop=160), dict(width=1.5, frames=8, crop=160),
                   dict(width=1.0, frames=0, crop=160), dict(width=1.0, frames=8, crop=True),
                   dict(width=1.0, frames=2.5, crop=160)):
        with pytest.raises(ValueError):
            SubnetConfig(**kwargs)
    with pytest.raises(ValueError, match="not a SubnetConfig tag"):
        SubnetConfig.from_tag("w0.5_f8_c160")


def test_config_space_sandwich_structure():
    space = ConfigSpace(width_range=(0.25, 1.0), frames=(8, 16, 4), crops=(160, 224), num_subnets=4)
    assert space.frames == (16, 8, 4) and space.crops == (224, 160)
    assert space.full() == SubnetConfig(1.0, 16, 224) and space.smallest() == SubnetConfig(0.25, 4, 160)
    seen_frames, seen_crops = set(), set()
    for seed in range(20):
        configs = space.sandwich(_gen(seed))
        assert len(configs) == 4
        assert configs[0] == space.full()
        assert configs[1].width == 0.25
        for cfg in configs[1:]:
            assert 0.25 <= cfg.width <= 1.0 and space.contains(cfg)
            seen_frames.add(cfg.frames)
            seen_crops.add(cfg.crop)
    assert seen_frames == {16, 8, 4} and seen_crops == {224, 160}  # resolutions drawn at random
    assert space.sandwich(_gen(3)) == space.sandwich(_gen(3))
    assert ConfigSpace(width_range=(0.5, 1.0), num_subnets=1).sandwich(_gen()) == [
        ConfigSpace(width_range=(0.5, 1.0)).full()]


def test_config_space_widths_grid_and_errors():
    space = ConfigSpace(width_range=(0.5, 1.0), frames=(8,), crops=(224, 160))
    assert space.widths == (1.0, 0.875, 0.75, 0.625, 0.5)
    assert len(space.grid()) == 10 and len(space.grid(widths=(1.0,))) == 2
    with pytest.raises(ValueError, match="width 0.25 is outside"):
        space.validate(SubnetConfig(0.25, 8, 224))
    with pytest.raises(ValueError, match="frames=4"):
        space.validate(SubnetConfig(1.0, 4, 224))
    with pytest.raises(ValueError, match="crop=128"):
        space.validate(SubnetConfig(1.0, 8, 128))
    with pytest.raises(ValueError, match="outside width_range"):
        ConfigSpace(width_range=(0.5, 1.0), widths=(0.25,))
    with pytest.raises(ValueError, match="above max"):
        ConfigSpace(width_range=(1.0, 0.5))


# -- slim layers at full width equal nn layers -------------------------------------
def _pair(stock: nn.Module, slim_cls, **kwargs):
    slim = slim_cls(**kwargs)
    slim.load_state_dict(stock.state_dict(), strict=True)
    assert list(slim.state_dict()) == list(stock.state_dict())
    return slim


def test_slim_layers_equal_nn_layers_at_full_width():
    torch.manual_seed(0)
    conv3 = nn.Conv3d(4, 16, (3, 3, 3), stride=(1, 2, 2), padding=1, bias=True)
    conv2 = nn.Conv2d(4, 16, 3, padding=1)
    linear = nn.Linear(16, 10)
    bn = nn.BatchNorm3d(16)
    x3, x2 = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 8, 8)
    pairs = [
        (conv3, _pair(conv3, SlimConv3d, in_channels=4, out_channels=16, kernel_size=3, stride=(1, 2, 2),
                      padding=1), x3),
        (conv2, _pair(conv2, SlimConv2d, in_channels=4, out_channels=16, kernel_size=3, padding=1), x2),
        (linear, _pair(linear, SlimLinear, in_features=16, out_features=10), torch.randn(3, 16)),
    ]
    for stock, slim, x in pairs:
        torch.testing.assert_close(slim(x), stock(x))
        set_config(slim, SubnetConfig(1.0, 4, 8))
        torch.testing.assert_close(slim(x), stock(x))
    slim_bn = _pair(bn, SlimBatchNorm3d, num_features=16)
    y = torch.randn(4, 16, 2, 4, 4)
    torch.testing.assert_close(slim_bn(y), bn(y))  # train mode, batch stats
    torch.testing.assert_close(slim_bn.running_mean, bn.running_mean)
    slim_bn.eval(), bn.eval()
    torch.testing.assert_close(slim_bn(y), bn(y))


# -- a slimmed layer equals a dense layer built from the sliced weights -------------
@pytest.mark.parametrize("width", [0.25, 0.5, 0.75])
def test_slim_conv3d_equals_dense_conv_of_sliced_weights(width):
    torch.manual_seed(0)
    conv = SlimConv3d(32, 64, (3, 1, 3), stride=(1, 2, 1), padding=(1, 0, 1), bias=True)
    set_config(conv, SubnetConfig(width, 4, 8))
    c_in, c_out = scale_channels(32, width), scale_channels(64, width)
    x = torch.randn(2, c_in, 4, 8, 8)
    dense = nn.Conv3d(c_in, c_out, (3, 1, 3), stride=(1, 2, 1), padding=(1, 0, 1), bias=True)
    with torch.no_grad():
        dense.weight.copy_(conv.weight[:c_out, :c_in])
        dense.bias.copy_(conv.bias[:c_out])
    out = conv(x)
    assert out.shape[1] == c_out
    torch.testing.assert_close(out, dense(x))


def test_slim_conv2d_and_linear_equal_dense_of_sliced_weights():
    torch.manual_seed(0)
    conv = SlimConv2d(24, 40, 3, padding=1, bias=False)
    linear = SlimLinear(40, 10)  # a classifier keeps its outputs
    hidden = SlimLinear(40, 48, slim_out=True)
    cfg = SubnetConfig(0.5, None, 8)
    for m in (conv, linear, hidden):
        set_config(m, cfg)
    x = torch.randn(2, 16, 8, 8)  # scale_channels(24, .5) = 16
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight[:24, :16], None, padding=1))
    z = torch.randn(3, 24)  # scale_channels(40, .5) = 24
    torch.testing.assert_close(linear(z), F.linear(z, linear.weight[:, :24], linear.bias))
    torch.testing.assert_close(hidden(z), F.linear(z, hidden.weight[:24, :24], hidden.bias[:24]))


@pytest.mark.parametrize("slim, dense, shape", [(SlimConv2d, nn.Conv2d, (2, 8, 7, 7)),
                                                (SlimConv3d, nn.Conv3d, (2, 8, 3, 7, 7))])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_slim_conv_padding_modes_equal_dense_of_sliced_weights(slim, dense, shape, padding_mode):
    torch.manual_seed(0)
    conv = slim(16, 24, 3, padding=1, padding_mode=padding_mode, bias=True)
    set_config(conv, SubnetConfig(0.5, 4 if conv.weight.dim() == 5 else None, 8))
    ref = dense(8, 16, 3, padding=1, padding_mode=padding_mode, bias=True)  # scale_channels(24, .5) = 16
    with torch.no_grad():
        ref.weight.copy_(conv.weight[:16, :8])
        ref.bias.copy_(conv.bias[:16])
    x = torch.randn(*shape)
    torch.testing.assert_close(conv(x), ref(x))


def test_depthwise_conv_follows_active_channels():
    torch.manual_seed(0)
    conv = SlimConv3d(48, 48, 3, padding=1, groups=48, bias=False)
    set_config(conv, SubnetConfig(0.5, 4, 8))
    x = torch.randn(1, 24, 2, 6, 6)
    torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight[:24], None, padding=1, groups=24))
    with pytest.raises(RuntimeError, match="depthwise"):
        conv(torch.randn(1, 16, 2, 6, 6))
    with pytest.raises(ValueError, match="groups=2"):
        SlimConv3d(8, 16, 1, groups=2)


def test_in_splits_slice_each_part():
    torch.manual_seed(0)
    # input = [slow (64 channels, slim), fast (16 channels, full)]
    linear = SlimLinear(80, 10, in_splits=((64, True), (16, False)))
    conv = SlimConv3d(80, 32, 1, in_splits=((64, True), (16, True)), bias=False)
    cfg = SubnetConfig(0.5, 4, 8)
    set_config(linear, cfg), set_config(conv, cfg)
    z = torch.randn(2, 32 + 16)
    index = torch.cat([torch.arange(32), torch.arange(64, 80)])
    torch.testing.assert_close(linear(z), F.linear(z, linear.weight[:, index], linear.bias))
    x = torch.randn(1, 32 + 8, 2, 4, 4)
    index = torch.cat([torch.arange(32), torch.arange(64, 72)])
    torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight[:16, index]))
    with pytest.raises(RuntimeError, match="in_splits"):
        linear(torch.randn(2, 40))
    with pytest.raises(ValueError, match="add up to"):
        SlimLinear(80, 10, in_splits=((64, True), (8, False)))


# -- the public slicing API: configure_slicing, active_weight, is_depthwise -------------
@pytest.mark.parametrize("splits, problem", [
    (((64, True), (8, False)), "add up to 72 channels, but the layer has 80 inputs"),
    (((64, True),), "add up to 64 channels"),
    (((64,), (16, False)), r"pair \(channels, slim\).*got \(64,\)"),
    (((64.5, True), (15.5, False)), r"positive integer, got \(64\.5, True\)"),
    (((0, True), (80, False)), r"positive integer, got \(0, True\)"),
    (((True, True), (79, False)), r"positive integer, got \(True, True\)"),
    (("ab", (78, False)), "pair"),
    ((), "in_splits is empty"),
])
def test_configure_slicing_refuses_bad_splits_naming_the_problem(splits, problem):
    conv = SlimConv3d(80, 32, 1, in_splits=((64, True), (16, False)))
    with pytest.raises(ValueError, match=rf"SlimConv3d: .*{problem}"):
        conv.configure_slicing(slim_out=False, in_splits=splits)
    assert conv.slim_out and conv.in_splits == ((64, True), (16, False))  # left unchanged
    with pytest.raises(ValueError, match=problem):
        SlimLinear(80, 10, in_splits=splits)


def test_configure_slicing_sets_the_rule_and_drops_caches():
    torch.manual_seed(0)
    conv = SlimConv3d(80, 32, 1, bias=False).eval()
    assert conv.slim_out and conv.in_splits is None and not conv.is_depthwise
    set_config(conv, SubnetConfig(0.5, 4, 8))
    with torch.no_grad():
        assert conv(torch.randn(1, 40, 2, 4, 4)).shape[1] == 16  # leading 40 inputs, 16 outputs
        conv.configure_slicing(slim_out=False, in_splits=[(64, True), (16, False)])
        assert not conv.slim_out and conv.in_splits == ((64, True), (16, False))
        x = torch.randn(1, 32 + 16, 2, 4, 4)
        index = torch.cat([torch.arange(32), torch.arange(64, 80)])
        torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight[:, index]), rtol=0, atol=0)
        conv.configure_slicing(slim_out=True, in_splits=None)
        assert conv(torch.randn(1, 40, 2, 4, 4)).shape[1] == 16
    with pytest.raises(AttributeError, match="slim_out"):
        conv.slim_out = False  # read-only: configure_slicing is the one way
    with pytest.raises(AttributeError, match="in_splits"):
        conv.in_splits = None
    depthwise = SlimConv2d(16, 16, 3, groups=16)
    assert depthwise.is_depthwise
    with pytest.raises(ValueError, match="SlimConv2d: a depthwise conv cannot take in_splits"):
        depthwise.configure_slicing(slim_out=True, in_splits=((8, True), (8, True)))
    assert depthwise.in_splits is None


@pytest.mark.parametrize("width, slow_in, out", [(0.25, 16, 8), (0.5, 32, 16), (0.75, 48, 24), (1.0, 64, 32)])
def test_active_weight_is_the_slice_of_the_width_rule(width, slow_in, out):
    # by hand: width * channels rounded to a multiple of 8 (slow part 64 -> slow_in, outputs 32 -> out)
    torch.manual_seed(0)
    conv = SlimConv3d(80, 32, 1, in_splits=((64, True), (16, False)))
    set_config(conv, SubnetConfig(width, 4, 8))
    index = torch.cat([torch.arange(slow_in), torch.arange(64, 80)])  # the fast part is kept whole
    weight, bias = conv.active_weight(slow_in + 16)
    assert torch.equal(weight, conv.weight[:out][:, index]) and torch.equal(bias, conv.bias[:out])
    if width == 1.0:
        assert weight is conv.weight and bias is conv.bias
    (weight.sum() + bias.sum()).backward()  # with autograd: the gradient reaches the shared tensors
    expected = torch.zeros_like(conv.weight)
    expected[:out, index] = 1.0
    assert torch.equal(conv.weight.grad, expected) and conv.bias.grad.sum() == out
    with torch.no_grad():
        frozen, frozen_bias = conv.active_weight(slow_in + 16)
    assert torch.equal(frozen, weight) and torch.equal(frozen_bias, bias) and frozen.is_contiguous()
    with pytest.raises(RuntimeError, match="in_splits"):
        conv.active_weight(slow_in + 8)


def test_active_weight_of_a_classifier_and_a_depthwise_conv():
    torch.manual_seed(0)
    linear = SlimLinear(40, 10)  # a classifier keeps its 10 outputs
    depthwise = SlimConv2d(48, 48, 3, groups=48)
    set_config(linear, HALF), set_config(depthwise, HALF)
    weight, bias = linear.active_weight(24)  # 40 * 0.5 = 20 -> 24
    assert torch.equal(weight, linear.weight[:, :24]) and torch.equal(bias, linear.bias)
    weight, bias = depthwise.active_weight(24)
    assert weight.shape == (24, 1, 3, 3) and torch.equal(weight, depthwise.weight[:24])
    assert torch.equal(bias, depthwise.bias[:24])
    with pytest.raises(RuntimeError, match="depthwise conv got 16 channels at width 0.5, which gives 24"):
        depthwise.active_weight(16)
    with pytest.raises(RuntimeError, match="more than the 40"):
        linear.active_weight(48)


# -- per-configuration BatchNorm statistics -----------------------------------------
def test_bn_config_stats_used_in_eval_and_saved():
    torch.manual_seed(0)
    bn = SlimBatchNorm3d(32)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_()
    small, full = SubnetConfig(0.5, 4, 8), SubnetConfig(1.0, 4, 8)
    mean, var = torch.randn(16), torch.rand(16) + 0.5
    bn.store_stats(small, mean, var)
    assert bn.has_stats(small) and not bn.has_stats(full)
    bn.eval()
    x = torch.randn(2, 16, 2, 3, 3)
    set_config(bn, small)
    expected = F.batch_norm(x, mean, var, bn.weight[:16], bn.bias[:16], False, 0.0, bn.eps)
    torch.testing.assert_close(bn(x), expected)
    set_config(bn, SubnetConfig(0.6, 4, 8))  # no stored stats: the shared buffers' leading slice
    shared = F.batch_norm(x, bn.running_mean[:16], bn.running_var[:16], bn.weight[:16], bn.bias[:16], False, 0., 1e-5)
    torch.testing.assert_close(bn(x), shared)

    state = bn.state_dict()
    assert f"config_stats.{small.tag}.running_mean" in state
    fresh = SlimBatchNorm3d(32)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    set_config(fresh, small)
    torch.testing.assert_close(fresh(x), expected)
    # train mode ignores the stored statistics (batch statistics)
    bn.train()
    set_config(bn, small)
    batch = F.batch_norm(x, None, None, bn.weight[:16], bn.bias[:16], True, 0.0, bn.eps)
    torch.testing.assert_close(bn(x), batch)


def test_stock_bn_state_dict_loads_strict_and_stats_cleared():
    stock = nn.BatchNorm2d(16)
    slim = SlimBatchNorm2d(16)
    slim.store_stats(SubnetConfig(0.5, None, 8), torch.zeros(8), torch.ones(8))
    slim.load_state_dict(stock.state_dict(), strict=True)  # a stock state dict drops stored stats
    assert slim.config_stats == {}
    slim.store_stats(SubnetConfig(0.5, None, 8), torch.zeros(8), torch.ones(8))
    slim.clear_stats()
    assert slim.config_stats == {}
    with pytest.raises(ValueError, match="statistics"):
        slim.store_stats(SubnetConfig(0.5, None, 8), torch.zeros(8), torch.ones(9))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_slice_running_stats_update_like_nn(momentum):
    torch.manual_seed(0)
    slim = SlimBatchNorm3d(32, momentum=momentum)
    dense = nn.BatchNorm3d(16, momentum=momentum)
    set_config(slim, SubnetConfig(0.5, 4, 8))
    for _ in range(3):
        x = torch.randn(4, 16, 2, 3, 3) * 2 + 1
        torch.testing.assert_close(slim(x), dense(x))
    torch.testing.assert_close(slim.running_mean[:16], dense.running_mean)
    torch.testing.assert_close(slim.running_var[:16], dense.running_var)
    assert torch.all(slim.running_mean[16:] == 0) and torch.all(slim.running_var[16:] == 1)
    assert int(slim.num_batches_tracked) == 3


def test_bn_training_updates_the_buffers_it_holds_now():
    """A slimmed BatchNorm's training pass keeps views of its running statistics between
    calls; they follow a buffer replaced by assignment, a buffer given new storage
    (``.data =``) and a change of width: the update lands where nn.BatchNorm's would."""
    torch.manual_seed(0)
    slim = SlimBatchNorm3d(32)
    set_config(slim, SubnetConfig(0.5, 4, 8))
    x = torch.randn(4, 16, 2, 3, 3) * 2 + 1
    slim(x)  # the views of the first 16 channels are kept
    slim.running_mean = torch.zeros(32)  # a new buffer
    slim.running_var.data = torch.ones(32)  # the same tensor, new storage
    dense = nn.BatchNorm3d(16)
    torch.testing.assert_close(slim(x), dense(x))
    torch.testing.assert_close(slim.running_mean[:16], dense.running_mean)
    torch.testing.assert_close(slim.running_var[:16], dense.running_var)
    set_config(slim, SubnetConfig(0.75, 4, 8))  # 24 channels
    x24 = torch.randn(4, 24, 2, 3, 3)
    before = slim.running_mean.clone()
    wide = nn.BatchNorm3d(24)
    with torch.no_grad():
        wide.running_mean.copy_(before[:24])
        wide.running_var.copy_(slim.running_var[:24])
    torch.testing.assert_close(slim(x24), wide(x24))
    torch.testing.assert_close(slim.running_mean[:24], wide.running_mean)
    assert torch.equal(slim.running_mean[24:], before[24:])


def test_bn_training_with_a_parametrized_weight():
    """A weight under ``torch.nn.utils.parametrize`` (not in ``_parameters``) is read
    through the parametrization in a slimmed training pass."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    torch.manual_seed(0)
    slim = SlimBatchNorm3d(32)
    with torch.no_grad():
        slim.weight.uniform_(0.5, 1.5)
    dense = nn.BatchNorm3d(16)
    with torch.no_grad():
        dense.weight.copy_(2 * slim.weight[:16])
    parametrize.register_parametrization(slim, "weight", Double())
    set_config(slim, SubnetConfig(0.5, 4, 8))
    x = torch.randn(4, 16, 2, 3, 3)
    out = slim(x)
    torch.testing.assert_close(out, dense(x))
    out.sum().backward()
    assert slim.parametrizations.weight.original.grad is not None


# -- synchronized BatchNorm: a public conversion that shares the layer's state ----------
def test_convert_slim_sync_batchnorm_shares_state_and_keeps_keys():
    from mutualnet_video.core import SlimSyncBatchNorm2d, SlimSyncBatchNorm3d, convert_slim_sync_batchnorm

    torch.manual_seed(0)
    shared = SlimBatchNorm3d(16)
    model = _tiny_model()
    model.append(shared), model.append(shared)  # one layer under two names
    model.append(nn.BatchNorm3d(16))
    calibrate = SubnetConfig(0.5, 2, 8)
    model[1].store_stats(calibrate, torch.rand(8), torch.rand(8) + 0.5)
    model[1].block_final_bn = True  # an attribute set by a builder (PyTorchVideo)
    calls = []
    model[1].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[1]))
    set_config(model, calibrate)
    before = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    old = model[1]
    assert convert_slim_sync_batchnorm(model) is model
    new = model[1]
    assert type(new) is SlimSyncBatchNorm3d and new is not old and type(old) is SlimBatchNorm3d  # old left as is
    assert type(model[4]) is SlimSyncBatchNorm3d and model[5] is model[4]  # still shared
    assert type(model[6]) is nn.SyncBatchNorm  # a plain BN: PyTorch's (CUDA only to run)
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before if not k.startswith("6."))
    assert new.config_stats["w0500_f2_c8"][0] is old.config_stats["w0500_f2_c8"][0]
    assert new.block_final_bn and new.subnet == calibrate and new.training == old.training
    model.eval()
    with torch.no_grad():
        y = new(torch.randn(2, 8, 2, 4, 4))  # one process, eval: the calibrated statistics
    assert calls == [8] and y.shape[1] == 8
    x = torch.randn(2, 8, 2, 4, 4)
    torch.testing.assert_close(new(x), old.eval()(x), rtol=0, atol=0)
    assert convert_slim_sync_batchnorm(model)[1] is new  # already synchronized: kept
    top = convert_slim_sync_batchnorm(SlimBatchNorm2d(8))  # a model that is one layer
    assert type(top) is SlimSyncBatchNorm2d
    with pytest.raises(TypeError, match=r"SlimSyncBatchNorm2d\.from_slim takes .* SlimBatchNorm3d "
                                        r"\(use SlimSyncBatchNorm3d\.from_slim\)"):
        SlimSyncBatchNorm2d.from_slim(old)


# -- switching ----------------------------------------------------------------------
def _tiny_model() -> nn.Module:
    model = nn.Sequential(SlimConv3d(3, 16, 1), SlimBatchNorm3d(16), nn.ReLU(), SlimConv3d(16, 32, 1))
    return attach_space(model, ConfigSpace(width_range=(0.5, 1.0), frames=(4, 2), crops=(8,)))


def test_use_config_switches_and_restores():
    model = _tiny_model()
    x = torch.randn(1, 3, 2, 8, 8)
    assert current_config(model) is None and model(x).shape[1] == 32
    small = SubnetConfig(0.5, 2, 8)
    with use_config(model, small):
        assert current_config(model) == small
        assert model(x).shape[1] == 16
        with use_config(model, SubnetConfig(0.75, 4, 8)):
            assert model(x).shape[1] == 24
        assert current_config(model) == small
    assert current_config(model) is None
    with pytest.raises(KeyError):
        with use_config(model, small):
            raise KeyError("boom")
    assert current_config(model) is None


def test_get_and_detach_space():
    model = _tiny_model()
    space = get_space(model)
    assert isinstance(space, ConfigSpace) and space.frames == (4, 2)
    view = attach_space(nn.Sequential(model), space)  # a wrapper sharing the model and its space
    assert get_space(view) is space
    assert detach_space(view) is view
    assert get_space(view) is None and get_space(model) is None  # its submodules' too
    detach_space(view)  # nothing attached: a no-op
    with pytest.raises(TypeError, match="ConfigSpace"):
        attach_space(model, {"frames": (4,)})
    with use_config(model, SubnetConfig(0.25, 8, 8)):  # no space: nothing to validate against
        assert model(torch.randn(1, 3, 2, 8, 8)).shape[1] == 8


def test_width_outside_space_is_an_error():
    model = _tiny_model()
    with pytest.raises(ValueError, match="width 0.25 is outside the trained range"):
        set_config(model, SubnetConfig(0.25, 2, 8))
    with pytest.raises(ValueError, match="frames=8"):
        with use_config(model, SubnetConfig(1.0, 8, 8)):
            pass
    assert current_config(model) is None
    with pytest.raises(TypeError, match="no slimmable module"):
        set_config(nn.Sequential(nn.Conv3d(3, 8, 1)), SubnetConfig(1.0, 2, 8))
    with pytest.raises(RuntimeError, match="more than"):
        model[0](torch.randn(1, 4, 2, 8, 8))


def test_inference_slice_cache_follows_weight_updates():
    torch.manual_seed(0)
    conv = SlimConv3d(32, 64, 1, bias=True)
    set_config(conv, SubnetConfig(0.5, 4, 8))
    x = torch.randn(1, 16, 2, 3, 3)

    def expected():
        return F.conv3d(x, conv.weight[:32, :16], conv.bias[:32])

    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected())
        conv.weight.mul_(2.0)  # in-place update (an optimizer step, load_state_dict)
        conv.bias.add_(1.0)
        torch.testing.assert_close(conv(x), expected())
        conv.load_state_dict({"weight": torch.randn(64, 32, 1, 1, 1), "bias": torch.randn(64)})
        torch.testing.assert_close(conv(x), expected())
        set_config(conv, SubnetConfig(0.75, 4, 8))  # another width: another slice
        torch.testing.assert_close(conv(torch.randn(1, 24, 2, 3, 3)).shape[1], 48)
    out = conv(torch.randn(1, 24, 2, 3, 3))  # with grad: no cached tensor, gradients reach the weight
    out.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad[:48, :24].abs().sum() > 0
    assert conv.weight.grad[48:].abs().sum() == 0


# -- inference caches: exact, and they follow every update -----------------------------
HALF = SubnetConfig(0.5, None, 8)


def _dw_conv() -> SlimConv2d:
    torch.manual_seed(0)
    return SlimConv2d(32, 32, 3, padding=1, groups=32, bias=True).eval()


def _bn() -> SlimBatchNorm2d:
    torch.manual_seed(0)
    bn = SlimBatchNorm2d(32)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    return bn.eval()


def test_cached_inference_outputs_are_bit_identical_to_the_sliced_calls():
    """The cached paths run the very call the slicing code ran: same bits."""
    torch.manual_seed(0)
    conv = SlimConv2d(24, 40, 3, padding=1, bias=True).eval()
    dw, bn, fc = _dw_conv(), _bn(), SlimLinear(40, 10).eval()
    for m in (conv, dw, bn, fc):
        set_config(m, HALF)
    x, y, z = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8), torch.randn(3, 24)
    with torch.no_grad():
        for _ in range(2):  # first call fills the caches, the second reads them
            assert torch.equal(conv(x), F.conv2d(x, conv.weight[:24, :16].contiguous(), conv.bias[:24], padding=1))
            assert torch.equal(dw(y), F.conv2d(y, dw.weight[:16], dw.bias[:16], padding=1, groups=16))
            assert torch.equal(bn(y), F.batch_norm(y, bn.running_mean[:16], bn.running_var[:16], bn.weight[:16],
                                                   bn.bias[:16], False, 0.1, bn.eps))
            assert torch.equal(fc(z), F.linear(z, fc.weight[:, :24].contiguous(), fc.bias))
        set_config(bn, None)
        w = torch.randn(2, 32, 8, 8)
        assert torch.equal(bn(w), nn.BatchNorm2d.forward(bn, w))  # full width: the nn forward's bits


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5])
def test_no_grad_forward_equals_autograd_forward_bitwise(width):
    """A small net: the cached (no-grad) path gives the bits of the sliced (autograd) path."""
    torch.manual_seed(0)
    model = nn.Sequential(
        SlimConv2d(3, 32, 3, padding=1, bias=False), SlimBatchNorm2d(32), nn.ReLU(),
        SlimConv2d(32, 32, 3, padding=1, groups=32, bias=False), SlimBatchNorm2d(32), nn.ReLU(),
        SlimConv2d(32, 48, 1, bias=True), SlimBatchNorm2d(48), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        SlimLinear(48, 10),
    )
    for m in model.modules():
        if isinstance(m, SlimBatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
    model.eval()
    set_config(model, SubnetConfig(width, None, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        cached = [model(x) for _ in range(2)]
    reference = model(x).detach()
    assert torch.equal(cached[0], reference) and torch.equal(cached[1], reference)


def test_depthwise_and_bn_caches_follow_in_place_updates_and_loads():
    dw, bn = _dw_conv(), _bn()
    set_config(dw, HALF), set_config(bn, HALF)
    x = torch.randn(1, 16, 6, 6)

    def check():
        torch.testing.assert_close(dw(x), F.conv2d(x, dw.weight[:16], dw.bias[:16], padding=1, groups=16),
                                   rtol=0, atol=0)
        torch.testing.assert_close(bn(x), F.batch_norm(x, bn.running_mean[:16], bn.running_var[:16],
                                                       bn.weight[:16], bn.bias[:16], False, 0.0, bn.eps),
                                   rtol=0, atol=0)

    with torch.no_grad():
        check()
        before = dw(x), bn(x)
        dw.weight.mul_(2.0), dw.bias.add_(1.0)  # in place: an optimizer step
        bn.weight.mul_(2.0), bn.running_mean.add_(1.0), bn.running_var.mul_(3.0)
        check()
        assert not torch.equal(dw(x), before[0]) and not torch.equal(bn(x), before[1])
        dw.load_state_dict({"weight": torch.randn(32, 1, 3, 3), "bias": torch.randn(32)})
        bn.load_state_dict(_bn().state_dict() | {"bias": torch.randn(32)})
        check()
        dw.weight.data = torch.randn(32, 1, 3, 3)  # a replaced tensor (same version counter)
        bn.running_var.data = torch.rand(32) + 0.5
        check()
        dw.load_state_dict({"weight": torch.randn(32, 1, 3, 3), "bias": torch.randn(32)}, assign=True)
        check()
    # an optimizer step between two no-grad forwards
    optimizer = torch.optim.SGD(list(dw.parameters()) + list(bn.parameters()), lr=0.5)
    bn.train()
    bn(dw(x)).square().sum().backward()
    bn.eval()
    with torch.no_grad():
        before = dw(x), bn(x)
        optimizer.step()
        check()
        assert not torch.equal(dw(x), before[0]) and not torch.equal(bn(x), before[1])


def test_caches_follow_width_dtype_and_slim_out():
    dw, bn = _dw_conv(), _bn()
    conv = SlimConv2d(32, 48, 1, bias=False).eval()
    with torch.no_grad():
        for width, channels in ((0.5, 16), (0.75, 24), (1.0, 32), (0.5, 16)):
            cfg = SubnetConfig(width, None, 8)
            set_config(dw, cfg), set_config(bn, cfg), set_config(conv, cfg)
            x = torch.randn(1, channels, 4, 4)
            assert dw(x).shape[1] == channels and bn(x).shape[1] == channels
            assert conv(x).shape[1] == scale_channels(48, width)
        # the caches keep one slice per layer: the last one
        assert dw._inference_slice[1].shape[0] == 16 and conv._inference_slice[1].shape == (24, 16, 1, 1)
        conv.configure_slicing(slim_out=False, in_splits=None)  # the active outputs depend on it
        assert conv(x).shape[1] == 48
        dw.double(), bn.double()  # new tensors: the cached slices are dropped
        x = x.double()
        torch.testing.assert_close(dw(x), F.conv2d(x, dw.weight[:16], dw.bias[:16], padding=1, groups=16))
        assert bn(x).dtype == torch.float64


def test_bn_cache_follows_stored_statistics_and_train_mode():
    bn = _bn()
    set_config(bn, HALF)
    x = torch.randn(4, 16, 3, 3) * 2 + 1
    shared = F.batch_norm(x, bn.running_mean[:16], bn.running_var[:16], bn.weight[:16], bn.bias[:16], False, 0., bn.eps)
    with torch.no_grad():
        torch.testing.assert_close(bn(x), shared)
        mean, var = torch.randn(16), torch.rand(16) + 0.5
        bn.store_stats(HALF, mean, var)
        stored = F.batch_norm(x, mean, var, bn.weight[:16], bn.bias[:16], False, 0., bn.eps)
        torch.testing.assert_close(bn(x), stored)
        bn.store_stats(HALF, mean + 1, var)  # new statistics for the same configuration
        torch.testing.assert_close(bn(x), F.batch_norm(x, mean + 1, var, bn.weight[:16], bn.bias[:16], False, 0., bn.eps))
        bn.load_state_dict(bn.state_dict() | {f"config_stats.{HALF.tag}.running_mean": mean})
        torch.testing.assert_close(bn(x), stored)
        bn.clear_stats()
        torch.testing.assert_close(bn(x), shared)
    # train mode: batch statistics, the shared buffers' leading slice is updated
    bn.train()
    ref = nn.BatchNorm2d(16)
    with torch.no_grad():
        ref.load_state_dict({k: v[:16] if v.dim() else v for k, v in bn.state_dict().items()})
    tail_mean = bn.running_mean[16:].clone()
    with torch.no_grad():
        torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_mean[:16], ref.running_mean)
    assert torch.equal(bn.running_mean[16:], tail_mean)
    bn.eval()
    with torch.no_grad():  # eval again: the updated running statistics
        torch.testing.assert_close(bn(x), ref.eval()(x))


def test_gradients_reach_the_shared_weights_with_caches_filled():
    dw, bn = _dw_conv(), _bn()
    set_config(dw, HALF), set_config(bn, HALF)
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        dw(x), bn(x)  # fill the caches
    bn(dw(x)).sum().backward()  # eval, autograd on: sliced views of the shared parameters
    for p in (dw.weight, dw.bias, bn.weight, bn.bias):
        assert p.grad is not None and p.grad[:16].abs().sum() > 0 and p.grad[16:].abs().sum() == 0
    # a frozen weight with a trainable bias: the bias still gets its gradient
    conv = SlimConv2d(32, 32, 1, bias=True)
    set_config(conv, HALF)
    conv.weight.requires_grad_(False)
    with torch.no_grad():
        conv(x)
    conv(x).sum().backward()
    assert conv.bias.grad is not None and conv.bias.grad[:16].abs().sum() > 0


def test_compiled_model_runs_every_configuration_like_eager():
    """torch.compile (inductor) of a slimmable model, switched with use_config: each configuration's
    output equals eager, one graph each, and switching back to a configuration compiles nothing
    (the configuration's tag, read in forward by the BN layers, used to break tracing; the slim
    layers' caches, filled in forward, were guarded on and recompiled)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from mutualnet_video.core import SlimBatchNorm, SubnetConfig, get_space, use_config
    from mutualnet_video.testing import create_toy_slimnet

    torch.manual_seed(0)
    model = create_toy_slimnet(channels=8).eval()
    half = SubnetConfig(0.5, 2, 24)
    for bn in model.modules():  # stored statistics for one configuration: the eval path reads them
        if isinstance(bn, SlimBatchNorm):
            bn.store_stats(half, torch.rand(8) - 0.5, torch.rand(8) + 0.5)
    torch._dynamo.reset()  # no cache entry of another test (same code, another backend)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter)
    space = get_space(model)
    x = torch.randn(2, 3, 4, 32, 32)
    graphs = []
    for subnet in (space.full(), half, space.full(), SubnetConfig(0.5, 2, 24)):
        with use_config(model, subnet), torch.no_grad():
            torch.testing.assert_close(compiled(x if subnet.frames == 4 else x[:, :, ::2, :24, :24]),
                                       model(x if subnet.frames == 4 else x[:, :, ::2, :24, :24]))
        graphs.append(counter.frame_count)
    assert graphs == [1, 2, 2, 2]


def test_subnet_config_tag_survives_copy_and_pickle():
    import copy
    import pickle

    from mutualnet_video.core import SubnetConfig

    subnet = SubnetConfig(0.5, 4, 160)
    for clone in (copy.deepcopy(subnet), pickle.loads(pickle.dumps(subnet)), SubnetConfig.from_tag("w0500_f4_c160")):
        assert clone == subnet and clone.tag == "w0500_f4_c160" and hash(clone) == hash(subnet)
    assert SubnetConfig(1.0, None, 224).tag == "w1000_fn_c224"


def test_compiled_depthwise_conv_refuses_a_wrong_channel_count_like_eager():
    """A compiled depthwise conv checks, like eager, that its input channels are its outputs
    at the active width (it used to run a wrong count silently)."""
    torch.manual_seed(0)
    depthwise = SlimConv2d(48, 48, 3, groups=48)
    set_config(depthwise, HALF)  # 24 channels
    torch._dynamo.reset()
    compiled = torch.compile(depthwise, backend="eager")
    x = torch.randn(1, 24, 8, 8)
    torch.testing.assert_close(compiled(x), depthwise(x))
    for bad in (torch.randn(1, 16, 8, 8), torch.randn(1, 32, 8, 8)):
        with pytest.raises(RuntimeError, match=f"depthwise conv got {bad.shape[1]} channels at width 0.5, which gives 24"):
            compiled(bad)
