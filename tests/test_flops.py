"""FLOPs (multiply-adds of conv/linear/matmul) and parameters per configuration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mutualnet_video.core import (
    ConfigSpace,
    SlimBatchNorm3d,
    SlimConv3d,
    SlimLinear,
    SubnetConfig,
    attach_space,
    current_config,
    get_space,
)
from mutualnet_video.evaluation import count_flops, count_params
from mutualnet_video.models import create_model, create_slimmable_resnet


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = SlimConv3d(3, 16, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn = SlimBatchNorm3d(16)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = SlimLinear(16, 5)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _tiny() -> nn.Module:
    return attach_space(_Tiny(), ConfigSpace(width_range=(0.5, 1.0), frames=(4, 2), crops=(8, 4)))


def test_count_flops_counts_multiply_adds_of_conv_and_linear_only():
    model = _tiny()
    # width 0.5: conv 3 -> 8 channels, 3x3 kernel, on 2 x 4 x 4 outputs; fc 8 -> 5; BN, pool not counted
    assert count_flops(model, SubnetConfig(0.5, 2, 4)) == 8 * 3 * 9 * 2 * 4 * 4 + 8 * 5
    assert count_flops(model, SubnetConfig(1.0, 4, 8)) == 16 * 3 * 9 * 4 * 8 * 8 + 16 * 5


def test_count_params_counts_the_sliced_shapes():
    model = _tiny()
    full = sum(p.numel() for p in model.parameters())
    assert count_params(model, SubnetConfig(1.0, 4, 8)) == full
    # conv 8x3x1x3x3, BN affine 2x8, fc 5x8 + 5 bias
    assert count_params(model, SubnetConfig(0.5, 2, 4)) == 8 * 3 * 9 + 2 * 8 + 5 * 8 + 5


def test_counting_restores_mode_and_config():
    model = _tiny().train()
    cfg = SubnetConfig(0.75, 4, 8)
    from mutualnet_video.core import set_config

    set_config(model, cfg)
    count_flops(model, SubnetConfig(0.5, 2, 4))
    count_params(model, SubnetConfig(0.5, 2, 4))
    assert model.training and current_config(model) == cfg
    with pytest.raises(ValueError, match="outside the trained range"):
        count_flops(model, SubnetConfig(0.25, 2, 4))


def test_flops_grow_with_width_frames_and_crop():
    model = create_slimmable_resnet(
        model_depth=50, stem_dim_out=16, model_num_class=10, width_range=(0.5, 1.0), frames=(4, 2), crops=(64, 32),
    )
    f = {cfg: count_flops(model, cfg) for cfg in (
        SubnetConfig(1.0, 4, 64), SubnetConfig(0.5, 4, 64), SubnetConfig(1.0, 2, 64), SubnetConfig(1.0, 4, 32))}
    full = f[SubnetConfig(1.0, 4, 64)]
    assert f[SubnetConfig(0.5, 4, 64)] < 0.5 * full  # ~quadratic in width
    assert f[SubnetConfig(1.0, 2, 64)] < 0.6 * full  # ~linear in frames
    assert f[SubnetConfig(1.0, 4, 32)] < 0.3 * full  # ~quadratic in crop
    p_full, p_half = count_params(model, SubnetConfig(1.0, 4, 64)), count_params(model, SubnetConfig(0.5, 2, 32))
    assert p_full == sum(p.numel() for p in model.parameters()) and p_half < 0.5 * p_full


# REFERENCE.md table: (GFLOPs, params M) at full width, pytorchvideo builder defaults.
def _check_reference(model: nn.Module, gflops: float, mparams: float) -> None:
    space = get_space(model)
    flops = count_flops(model, space.full()) / 1e9
    params = count_params(model, space.full()) / 1e6
    assert flops == pytest.approx(gflops, rel=0.01)
    assert params == pytest.approx(mparams, rel=0.01)


def test_x3d_xs_matches_reference_table():
    _check_reference(create_model("mutual_x3d_xs"), 0.605, 3.79)


@pytest.mark.slow
@pytest.mark.parametrize("name, gflops, mparams", [
    ("mutual_x3d_s", 1.963, 3.79),
    ("mutual_x3d_m", 4.732, 3.79),
    ("mutual_slowfast_r50", 50.31, 34.57),
])
def test_full_size_models_match_reference_table(name, gflops, mparams):
    _check_reference(create_model(name), gflops, mparams)


@pytest.mark.slow
def test_slow_r50_matches_reference_table():
    # The table's Slow R50 row mixes two stems: its params (32.45 M) are the 1x7x7 stem of
    # mutual_slow_r50 (pytorchvideo's slow_r50), its GFLOPs (43.63) create_resnet's default
    # 3x7x7 stem (the 1x7x7 stem gives 41.74).
    model = create_model("mutual_slow_r50")
    assert count_params(model, get_space(model).full()) / 1e6 == pytest.approx(32.45, rel=0.01)
    default_stem = create_slimmable_resnet(head_pool_kernel_size=(8, 7, 7))
    assert count_flops(default_stem, get_space(default_stem).full()) / 1e9 == pytest.approx(43.63, rel=0.01)


def test_counting_twice_at_a_narrow_width():
    # the second trace at the same width must work (no cached tensor baked in as a grad constant)
    model = _tiny()
    cfg = SubnetConfig(0.5, 2, 4)
    assert count_flops(model, cfg) == count_flops(model, cfg) == count_flops(model, cfg, inputs=torch.zeros(1, 3, 2, 4, 4))
    assert count_params(model, cfg) == count_params(model, cfg)
