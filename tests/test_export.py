"""Static export of one configuration: equal outputs, plain layers, BN folding, TorchScript, ONNX."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mutualnet_video  # noqa: F401
from mutualnet_video.core import (
    ConfigSpace,
    SlimBatchNorm3d,
    SlimConv3d,
    SlimLinear,
    SlimmableModule,
    SubnetConfig,
    attach_space,
    get_space,
    scale_channels,
    use_config,
)
from mutualnet_video.evaluation.calibration import calibrate_bn
from mutualnet_video.export import bn_fold_pairs, example_inputs, export_onnx, export_subnet, export_torchscript
from mutualnet_video.testing import ToyX3D, toy_slowfast, toy_x3d

CONFIGS = [SubnetConfig(1.0, 4, 32), SubnetConfig(0.75, 2, 32), SubnetConfig(0.5, 2, 24)]


def _calibrated(make):
    model = make()
    alpha = get_space(model).slowfast_alpha or 1
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 3, 4 * alpha, 32, 32, generator=gen) for _ in range(2)]
    calibrate_bn(model, batches, CONFIGS, num_batches=2)
    return model


def _copy(x):
    """A fresh list per call: two-pathway models overwrite their input list (like PyTorchVideo's)."""
    return list(x) if isinstance(x, list) else x


def _reference(model, cfg, x):
    with torch.no_grad(), use_config(model.eval(), cfg):
        return model(_copy(x))


@pytest.mark.parametrize("make", [toy_x3d, toy_slowfast])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_exported_equals_slimmable_at_every_config(make, fold_bn):
    model = _calibrated(make)
    full_keys = {k for k in model.state_dict() if ".config_stats." not in k}
    for cfg in CONFIGS:
        static = export_subnet(model, cfg, fold_bn=fold_bn)
        assert not any(isinstance(m, SlimmableModule) for m in static.modules())
        assert get_space(static) is None and not static.training
        x = example_inputs(model, cfg, batch=2, seed=11)  # another input than the built-in check's
        if isinstance(x, list):  # export_subnet must not feed the caller's list to the model
            given = list(x)
            export_subnet(model, cfg, fold_bn=fold_bn, inputs=x)
            assert all(a is b for a, b in zip(x, given))
        with torch.no_grad():
            got = static(_copy(x))
        tol = 1e-4 if fold_bn else 1e-5
        torch.testing.assert_close(got, _reference(model, cfg, x), rtol=tol, atol=tol)
        if not fold_bn:  # same module names, sliced sizes
            assert set(static.state_dict()) == full_keys
        else:
            folded = bn_fold_pairs(model, cfg).values()
            assert folded and all(isinstance(static.get_submodule(n), nn.Identity) for n in folded)
    assert any(isinstance(m, SlimmableModule) for m in model.modules())  # the model itself is untouched


def test_exported_state_dict_loads_into_a_dense_model_of_that_size():
    """Build two ways: export at width 0.5, and a plain toy built at half the channels."""
    model = _calibrated(toy_x3d)
    cfg = SubnetConfig(0.5, 2, 24)
    static = export_subnet(model, cfg)
    dense = ToyX3D(channels=8, inner=16)  # 16 * 0.5, 32 * 0.5; SE keeps 8
    dense.load_state_dict(static.state_dict(), strict=True)
    x = example_inputs(model, cfg, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(dense.eval()(x), _reference(model, cfg, x))
    # depthwise conv follows the active channels; BN stats are the calibrated ones
    assert static.block.conv_b.groups == 16 and static.block.conv_b.weight.shape == (16, 1, 3, 3, 3)
    torch.testing.assert_close(static.block.norm_b.running_mean, model.block.norm_b.config_stats[cfg.tag][0])


def test_slowfast_concatenation_slices_each_part():
    model = _calibrated(toy_slowfast)
    static = export_subnet(model, SubnetConfig(0.5, 2, 24))
    # fuse_conv takes [slow 16*0.5, lateral 16 (unslimmed)]; its weight keeps columns 0..7 and 16..31
    torch.testing.assert_close(static.fuse_conv.weight,
                               torch.cat([model.fuse_conv.weight[:16, :8], model.fuse_conv.weight[:16, 16:]], dim=1))
    torch.testing.assert_close(static.proj.weight,
                               torch.cat([model.proj.weight[:, :16], model.proj.weight[:, 32:]], dim=1))
    assert static.fast_conv.out_channels == 8 and static.lateral.out_channels == 16


def test_uncalibrated_export_warns_and_uses_the_shared_stats():
    model = toy_x3d()
    cfg = SubnetConfig(0.5, 2, 24)
    with pytest.warns(UserWarning, match="no statistics calibrated for"):
        static = export_subnet(model, cfg)
    torch.testing.assert_close(static.stem_norm.running_mean, model.stem_norm.running_mean[:8])
    with pytest.raises(ValueError, match="crop=40"):
        export_subnet(model, SubnetConfig(0.5, 2, 40))


class _Shortcut(nn.Module):
    """conv_a feeds BN *and* a residual add (not foldable); bn_c follows a concatenation (not foldable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = SlimConv3d(3, 16, kernel_size=1, bias=True)
        self.bn_a = SlimBatchNorm3d(16)
        self.conv_b = SlimConv3d(16, 16, kernel_size=3, padding=1, bias=False)
        self.bn_b = SlimBatchNorm3d(16)
        self.bn_c = SlimBatchNorm3d(32)
        self.fc = SlimLinear(32, 4, in_splits=((16, True), (16, True)))

    def forward(self, x):
        a = self.conv_a(x)
        b = self.bn_b(self.conv_b(torch.relu(self.bn_a(a)))) + a
        c = self.bn_c(torch.cat([a, b], dim=1))
        return self.fc(c.mean(dim=(2, 3, 4)))


def test_fold_bn_only_where_a_conv_feeds_a_bn_alone():
    torch.manual_seed(0)
    model = attach_space(_Shortcut(), ConfigSpace((0.5, 1.0), frames=(2,), crops=(16,)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SlimBatchNorm3d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    cfg = SubnetConfig(0.5, 2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = export_subnet(model, cfg, fold_bn=True)
    assert bn_fold_pairs(model, cfg) == {"conv_b": "bn_b"}
    assert isinstance(static.bn_b, nn.Identity) and model.training  # the model's mode is restored
    assert isinstance(static.bn_a, nn.BatchNorm3d) and isinstance(static.bn_c, nn.BatchNorm3d)
    assert static.conv_b.bias is not None and static.bn_c.num_features == 16
    x = torch.randn(2, 3, 2, 16, 16)
    torch.testing.assert_close(static(x), _reference(model, cfg, x), rtol=1e-4, atol=1e-4)


def test_torchscript_round_trip(tmp_path):
    model = _calibrated(toy_slowfast)
    cfg = SubnetConfig(0.5, 2, 24)
    static = export_subnet(model, cfg, fold_bn=True)
    x = example_inputs(model, cfg, seed=2)
    path = export_torchscript(static, x, tmp_path / "sub.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(_copy(x)), _reference(model, cfg, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="export_subnet"):
        export_torchscript(model, x, tmp_path / "slim.pt")


@pytest.mark.parametrize("make", [toy_x3d, toy_slowfast])
def test_onnx_matches_in_onnxruntime(tmp_path, make):
    ort = pytest.importorskip("onnxruntime")
    model = _calibrated(make)
    cfg = SubnetConfig(0.75, 2, 32)
    static = export_subnet(model, cfg, fold_bn=True)
    path = export_onnx(static, example_inputs(model, cfg), tmp_path / "sub.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = example_inputs(model, cfg, batch=2, seed=8)  # another batch size: the batch dim is dynamic
    tensors = x if isinstance(x, list) else [x]
    names = [i.name for i in session.get_inputs()]
    assert names == (["slow", "fast"] if isinstance(x, list) else ["input"])
    [out] = session.run(["logits"], {n: t.numpy() for n, t in zip(names, tensors)})
    torch.testing.assert_close(torch.from_numpy(out), _reference(model, cfg, x), rtol=1e-4, atol=1e-4)


# -- PyTorchVideo models converted by hand (the exporter knows no architecture) -------------
def _slim_copy(child: nn.Module, **kw) -> nn.Module:
    if type(child) is nn.Conv3d:
        new = SlimConv3d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                         padding=child.padding, dilation=child.dilation, groups=child.groups,
                         bias=child.bias is not None, **kw)
    elif type(child) is nn.BatchNorm3d:
        new = SlimBatchNorm3d(child.num_features, eps=child.eps, momentum=child.momentum)
    else:
        new = SlimLinear(child.in_features, child.out_features, bias=child.bias is not None, **kw)
    new.load_state_dict(child.state_dict(), strict=True)
    return new


def _convert(model: nn.Module, rule) -> nn.Module:
    """Every nn.Conv3d/BatchNorm3d/Linear -> its slim twin (kwargs from ``rule(name, module)``);
    fixed-size AvgPool3d -> adaptive (REFERENCE: heads pool with a kernel fixed at build time)."""
    for name, child in list(model.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if type(child) in (nn.Conv3d, nn.BatchNorm3d, nn.Linear):
            setattr(parent, attr, _slim_copy(child, **rule(name, child)))
        elif type(child) is nn.AvgPool3d:
            setattr(parent, attr, nn.AdaptiveAvgPool3d(1))
    return model


def _check_two_configs(model, configs):
    space = get_space(model)
    clip = torch.randn(2, 3, 4 * (space.slowfast_alpha or 1), 64, 64, generator=torch.Generator().manual_seed(0))
    calibrate_bn(model, [clip], configs, num_batches=1)
    for cfg, fold in zip(configs, (False, True)):
        static = export_subnet(model, cfg, fold_bn=fold)
        assert not any(isinstance(m, SlimmableModule) for m in static.modules())
        pairs = bn_fold_pairs(model, cfg)  # foldable pairs exist; only fold_bn=True folds them
        assert pairs and all(isinstance(static.get_submodule(n), nn.Identity) == fold for n in pairs.values())
        x = example_inputs(model, cfg, seed=1)
        with torch.no_grad():
            torch.testing.assert_close(static(_copy(x)), _reference(model, cfg, x), rtol=1e-4, atol=1e-4)
    return static


def test_export_hand_converted_pytorchvideo_x3d():
    """X3D-XS: depthwise convs (groups = active channels), fvcore SE, projected-pool head."""
    x3d = pytest.importorskip("pytorchvideo.models.x3d")
    torch.manual_seed(0)
    model = x3d.create_x3d(input_clip_length=4, input_crop_size=64, model_num_class=5, head_activation=None)
    model = attach_space(_convert(model, lambda name, m: {}), ConfigSpace((0.5, 1.0), frames=(4, 2), crops=(64, 48)))
    inner = model.blocks[1].res_blocks[0].branch2.conv_b.out_channels
    static = _check_two_configs(model, [SubnetConfig(1.0, 4, 64), SubnetConfig(0.5, 2, 48)])
    dw = static.blocks[1].res_blocks[0].branch2.conv_b
    assert dw.groups == dw.in_channels == dw.out_channels == scale_channels(inner, 0.5) < inner


def test_export_hand_converted_pytorchvideo_slowfast():
    """SlowFast-R18: slimmed Slow pathway, full Fast pathway and laterals, concatenations via in_splits."""
    slowfast = pytest.importorskip("pytorchvideo.models.slowfast")
    torch.manual_seed(0)
    model = slowfast.create_slowfast(model_depth=18, model_num_class=5, head_activation=None,
                                     slowfast_fusion_conv_stride=(2, 1, 1))
    fuse = {i: b.multipathway_fusion.conv_fast_to_slow.out_channels for i, b in enumerate(model.blocks)
            if hasattr(getattr(b, "multipathway_fusion", None), "conv_fast_to_slow")}
    fast_out = model.blocks[4].multipathway_blocks[1].res_blocks[-1].branch2.conv_c.out_channels

    def rule(name, m):
        parts = name.split(".")
        slow = "multipathway_blocks" in parts[:-1] and parts[parts.index("multipathway_blocks") + 1] == "0"
        if isinstance(m, nn.Linear):
            return {"in_splits": ((m.in_features - fast_out, True), (fast_out, False))}
        if isinstance(m, nn.BatchNorm3d):
            return {}
        kw = {"slim_out": slow}
        if slow and int(parts[1]) - 1 in fuse and ".res_blocks.0." in name and parts[-1] in ("conv_a", "branch1_conv"):
            lateral = fuse[int(parts[1]) - 1]
            kw["in_splits"] = ((m.in_channels - lateral, True), (lateral, False))
        return kw

    model = attach_space(_convert(model, rule),
                         ConfigSpace((0.5, 1.0), frames=(4, 2), crops=(64, 48), slowfast_alpha=2))
    static = _check_two_configs(model, [SubnetConfig(1.0, 4, 64), SubnetConfig(0.5, 2, 48)])
    assert static.blocks[0].multipathway_blocks[1].conv.out_channels == 8  # Fast pathway keeps its width
    assert static.blocks[1].multipathway_blocks[0].res_blocks[0].branch2.conv_a.in_channels == 32 + 16


# -- real PyTorchVideo models (enabled once mutualnet_video.models provides them) --------
def _real(name: str):
    models = pytest.importorskip("mutualnet_video.models")
    if not hasattr(models, name):
        pytest.skip(f"mutualnet_video.models.{name} is not available yet")
    return getattr(models, name)


def _export_check(model, configs):
    gen = torch.Generator().manual_seed(0)
    space = get_space(model)
    full = space.full()
    clip = torch.randn(2, 3, full.frames * (space.slowfast_alpha or 1), full.crop, full.crop, generator=gen)
    calibrate_bn(model, [clip], configs, num_batches=1)
    for cfg in configs:
        for fold in (False, True):
            static = export_subnet(model, cfg, fold_bn=fold)
            assert not any(isinstance(m, SlimmableModule) for m in static.modules())
            x = example_inputs(model, cfg, seed=1)
            with torch.no_grad():
                torch.testing.assert_close(static(_copy(x)), _reference(model, cfg, x), rtol=1e-4, atol=1e-4)


def test_export_real_x3d(tmp_path):
    create = _real("create_slimmable_x3d")
    model = create(input_clip_length=4, input_crop_size=64, model_num_class=5, depth_factor=1.0,
                   head_activation=None, width_range=(0.5, 1.0), frames=(4, 2), crops=(64, 48))
    _export_check(model, [SubnetConfig(1.0, 4, 64), SubnetConfig(0.5, 2, 48)])
    # PyTorchVideo's Swish is a Python autograd Function: exported as nn.SiLU so TorchScript can save it
    cfg = SubnetConfig(0.5, 2, 48)
    static = export_subnet(model, cfg)
    assert not any(type(m).__name__ == "Swish" for m in static.modules())
    assert any(isinstance(m, nn.SiLU) for m in static.modules())
    x = example_inputs(model, cfg, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(export_torchscript(static, x, tmp_path / "x3d.pt")))
    torch.testing.assert_close(loaded(x), _reference(model, cfg, x), rtol=1e-5, atol=1e-5)


def test_export_real_slowfast():
    create = _real("create_slimmable_slowfast")
    model = create(model_depth=18, model_num_class=5, stem_dim_outs=(16, 2), head_activation=None,
                   width_range=(0.5, 1.0), frames=(4, 2), crops=(64, 48))
    _export_check(model, [SubnetConfig(1.0, 4, 64), SubnetConfig(0.5, 2, 48)])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_net_cli(tmp_path, capsys, fmt):
    """tools/export_net.py on the real instant config (tiny X3D) and a calibrated Trainer-style checkpoint."""
    import importlib.util
    from pathlib import Path

    from mutualnet_video.checkpoint import save_weights
    from mutualnet_video.engine.config import build_model, load_config

    root = Path(__file__).parents[1]
    args = ["--config", str(root / "configs" / "instant" / "x3d_synthetic.yaml")]
    opts = ["model.input_clip_length=4", "model.input_crop_size=32", "model.frames=[4,2]", "model.crops=[32,24]",
            "model.depth_factor=0.25"]
    model = build_model(load_config(args[1], opts))
    cfg = SubnetConfig(0.5, 2, 24)
    calibrate_bn(model, [torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))], [cfg],
                 num_batches=1)
    ckpt = save_weights({"model": model.state_dict(), "iteration": 3}, tmp_path / "model_final.pth")
    spec = importlib.util.spec_from_file_location("export_net", root / "tools" / "export_net.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / f"sub.{fmt}"
    args += ["--checkpoint", str(ckpt), "--width", "0.5", "--frames", "2", "--format", fmt, "--output", str(out)]
    assert tool.main([*args, "--crop", "24", "--fold-bn", *opts]) == 0
    folded = len(bn_fold_pairs(model, cfg))
    assert folded and f"BN folded: {folded})" in capsys.readouterr().out and out.stat().st_size > 1000
    x = example_inputs(model, cfg, seed=4)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            got = torch.jit.load(str(out))(x)
    else:
        ort = pytest.importorskip("onnxruntime")
        got = torch.from_numpy(ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, _reference(model, cfg, x), rtol=1e-4, atol=1e-4)
    assert tool.main([*args, "--crop", "40", *opts]) == 2
    assert "crop=40" in capsys.readouterr().err
    assert tool.main([*args, "--crop", "24"]) == 2  # the config's own model: the checkpoint does not fit
    assert "does not match the model" in capsys.readouterr().err


def test_export_2d_network():
    """2D layers follow the same rules (frames=None configurations)."""
    from mutualnet_video.core import SlimBatchNorm2d, SlimConv2d

    torch.manual_seed(0)
    model = nn.Sequential(SlimConv2d(3, 16, 3, stride=2, padding=1, bias=False), SlimBatchNorm2d(16), nn.ReLU(),
                          SlimConv2d(16, 16, 3, padding=1, groups=16, bias=False), SlimBatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), SlimLinear(16, 4))
    attach_space(model, ConfigSpace((0.5, 1.0), crops=(32, 24)))
    cfg = SubnetConfig(0.5, None, 24)
    calibrate_bn(model, [torch.randn(4, 3, 32, 32)], [cfg], num_batches=1)
    static = export_subnet(model, cfg, fold_bn=True)
    assert isinstance(static[0], nn.Conv2d) and static[3].groups == 8 and bn_fold_pairs(model, cfg) == {"0": "1", "3": "4"}
    assert isinstance(static[1], nn.Identity) and isinstance(static[4], nn.Identity)
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(static(x), _reference(model, cfg, x), rtol=1e-4, atol=1e-4)
