"""A slimmed conv's pass under ``slice_grads`` as matrix products on the strided weight slice.

Where the weight slice is large against the input (small clips on wide layers), a conv
layer's sub-network pass on the CPU reads ``weight[:out, :in]`` in place through im2col
and BLAS instead of copying it for aten's conv. The expected values come from aten's conv
(``F.conv2d`` / ``F.conv3d``) on a plain view of the slice, with autograd's gradients:
an independent computation.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import mutualnet_video.core.layers as layers
from mutualnet_video.core import SlimConv2d, SlimConv3d, SubnetConfig, slice_grads


def _expected(layer, x, grad_out, initial):
    """Output and gradients of aten's conv on a plain view of the active slice."""
    ref = copy.deepcopy(layer)
    ref.weight.grad = None if initial is None else initial.clone()
    out_active = layers.scale_channels(layer.out_channels, layer.width)
    if layer.in_splits is None:
        columns = torch.arange(x.shape[1])
    else:
        parts, start = [], 0
        for channels, slim in layer.in_splits:
            active = layers.scale_channels(channels, layer.width) if slim else channels
            parts.append(torch.arange(start, start + active))
            start += channels
        columns = torch.cat(parts)
    weight = ref.weight[:out_active].index_select(1, columns)
    bias = None if ref.bias is None else ref.bias[:out_active]
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    xr = x.detach().clone().requires_grad_()
    out = conv(xr, weight, bias, layer.stride, layer.padding)
    out.backward(grad_out)
    return out.detach(), xr.grad, ref.weight.grad, None if ref.bias is None else ref.bias.grad


CASES = {
    # name: (layer class, in, out, kernel, stride, padding, bias, input shape at width 0.5, in_splits)
    "1x1x1": (SlimConv3d, 16, 64, 1, 1, 0, False, (1, 8, 2, 3, 3), None),
    "1x1x1 batch 3 (im2col a view)": (SlimConv3d, 16, 64, 1, 1, 0, True, (3, 8, 2, 3, 3), None),
    "1x1x1 stride 2, batch 2, bias": (SlimConv3d, 16, 64, 1, (1, 2, 2), 0, True, (2, 8, 2, 4, 4), None),
    "3x1x1 temporal, pad 1": (SlimConv3d, 16, 64, (3, 1, 1), 1, (1, 0, 0), False, (2, 8, 4, 2, 2), None),
    "7x1x1 stride 4 in time (SlowFast's lateral)": (SlimConv3d, 8, 64, (7, 1, 1), (4, 1, 1), (3, 0, 0), True,
                                                    (1, 4, 8, 2, 2), None),
    "1x3x3 stride 2, pad 1": (SlimConv3d, 16, 96, (1, 3, 3), (1, 2, 2), (0, 1, 1), False, (1, 8, 2, 5, 5), None),
    "3x3x3 pad 1": (SlimConv3d, 8, 128, 3, 1, 1, True, (1, 4, 2, 3, 3), None),
    "in_splits (SlowFast's fusion)": (SlimConv3d, 48, 64, (3, 1, 1), 1, (1, 0, 0), False, (1, 24, 2, 2, 2),
                                      ((32, True), (16, True))),
    "in_splits, one part full": (SlimConv3d, 24, 64, 1, 1, 0, True, (1, 12, 2, 2, 2), ((16, True), (4, False))),
    "2d 3x3 pad 1": (SlimConv2d, 16, 96, 3, 1, 1, True, (1, 8, 3, 3), None),
    "2d 1x1 stride 2": (SlimConv2d, 16, 64, 1, 2, 0, False, (2, 8, 5, 5), None),
}


@pytest.mark.parametrize("initial_grad", [False, True], ids=["grad None", "grad present"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_sliced_conv_pass_equals_aten_conv_on_the_slice(case, initial_grad, monkeypatch):
    monkeypatch.setattr(layers, "_GEMM_MIN_MACS", 0)  # the cases are small: run the path on each
    cls, cin, cout, kernel, stride, padding, bias, shape, in_splits = CASES[case]
    if in_splits is not None and in_splits[1][0] == 4:  # a part kept at full width: 8 + 4 channels
        cin = 20
    torch.manual_seed(0)
    layer = cls(cin, cout, kernel, stride=stride, padding=padding, bias=bias, in_splits=in_splits)
    layer.set_subnet(SubnetConfig(0.5, 4, 32))
    x = torch.randn(shape, requires_grad=True)
    initial = torch.randn_like(layer.weight) if initial_grad else None
    layer.weight.grad = None if initial is None else initial.clone()
    out_active = layers.scale_channels(cout, 0.5)
    with slice_grads():
        assert layer._gemm_reads_slice(x, out_active)  # the case runs the matrix-product path
        out = layer(x)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
    exp_out, exp_gx, exp_gw, exp_gb = _expected(layer, x, grad_out, initial)
    torch.testing.assert_close(out, exp_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, exp_gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, exp_gw, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad, exp_gb, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous()


def _layer_and_input(**kwargs):
    torch.manual_seed(0)
    layer = SlimConv3d(16, 64, (1, 3, 3), padding=(0, 1, 1), **kwargs)
    layer.set_subnet(SubnetConfig(0.5, 4, 32))
    return layer, torch.randn(1, 8, 2, 3, 3, requires_grad=True)


def test_matrix_product_path_only_where_it_applies(monkeypatch):
    monkeypatch.setattr(layers, "_GEMM_MIN_MACS", 0)  # the bounds on the shapes; the work bound below
    layer, x = _layer_and_input()
    with slice_grads():
        assert layer._gemm_reads_slice(x, 32)
        assert not layer._gemm_reads_slice(x.double(), 32)  # float32 only
        assert not layer._gemm_reads_slice(torch.randn(1, 8, 8, 6, 6), 32)  # 288 positions > 32 outputs
        assert not layer._gemm_reads_slice(torch.randn(1, 16, 2, 3, 3), 32)  # the full input: a contiguous slice
        assert not layer._gemm_reads_slice(x.transpose(3, 4), 32)  # not contiguous
        channels_last = copy.deepcopy(layer).to(memory_format=torch.channels_last_3d)
        assert not channels_last._gemm_reads_slice(x, 32)  # a channels-last weight has no (out, in*K) view
        with torch.no_grad():
            assert not layer._gemm_reads_slice(x, 32)  # inference has its cached contiguous slice
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layer._gemm_reads_slice(x, 32)
    assert not layer._gemm_reads_slice(x, 32)  # outside slice_grads autograd reaches the parameter
    # pointwise-in-space kernels take it up to 16 positions per output channel
    pointwise = SlimConv3d(16, 64, (3, 1, 1), padding=(1, 0, 0))
    pointwise.set_subnet(SubnetConfig(0.5, 4, 32))
    with slice_grads():
        assert pointwise._gemm_reads_slice(torch.randn(1, 8, 8, 8, 8), 32)  # 512 = 16 x 32
        assert not pointwise._gemm_reads_slice(torch.randn(1, 8, 8, 8, 9), 32)
    for kwargs in ({"dilation": 2, "padding": 2}, {"padding_mode": "reflect"}):
        other = SlimConv3d(16, 64, 3, **kwargs)
        other.set_subnet(SubnetConfig(0.5, 4, 32))
        with slice_grads():
            assert not other._gemm_reads_slice(torch.randn(1, 8, 5, 5, 5), 32)
    depthwise = SlimConv3d(16, 16, 3, groups=16, padding=1)
    depthwise.set_subnet(SubnetConfig(0.5, 4, 32))
    with slice_grads():
        assert not depthwise._gemm_reads_slice(torch.randn(1, 8, 2, 2, 2), 8)


def test_matrix_product_path_needs_enough_work():
    """Under ``_GEMM_MIN_MACS`` multiply-adds a pass stays on aten's conv: 2**20 at the
    boundary (a kernel of ones, 128 -> 256 channels, 32 positions), one position less not."""
    layer = SlimConv3d(256, 512, 1)
    layer.set_subnet(SubnetConfig(0.5, 4, 32))
    with slice_grads():
        assert layer._gemm_reads_slice(torch.randn(1, 128, 2, 4, 4), 256)  # 256 x 128 x 32 = 2**20
        assert not layer._gemm_reads_slice(torch.randn(1, 128, 1, 31, 1), 256)


def test_matrix_product_pass_checks_the_input_channels(monkeypatch):
    monkeypatch.setattr(layers, "_GEMM_MIN_MACS", 0)
    layer, _ = _layer_and_input(in_splits=((8, True), (8, True)))
    with slice_grads(), pytest.raises(RuntimeError, match="in_splits"):
        layer(torch.randn(1, 7, 2, 3, 3, requires_grad=True))  # width 0.5 expects 4 + 4


@pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")  # the reference's
def test_matrix_product_pass_adds_into_a_channels_last_grad(monkeypatch):
    """An existing ``.grad`` in another layout (no ``(out, in*K)`` view) still gets the
    slice's gradient added, as autograd would."""
    torch.manual_seed(0)
    monkeypatch.setattr(layers, "_GEMM_MIN_MACS", 0)
    layer = SlimConv2d(16, 512, 3, padding=1)
    layer.set_subnet(SubnetConfig(0.5, 4, 32))
    x = torch.randn(1, 8, 2, 2, requires_grad=True)
    initial = torch.randn_like(layer.weight).to(memory_format=torch.channels_last)
    layer.weight.grad = initial.clone()
    with slice_grads():
        assert layer._gemm_reads_slice(x, 256)
        out = layer(x)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
    _, _, expected, _ = _expected(layer, x, grad_out, initial)
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-5)
