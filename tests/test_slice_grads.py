"""core.slice_grads: a slimmed layer's weight gradient is added into its slice of ``.grad``.

The expected gradients come from autograd on plain views of the parameters (the path
outside ``slice_grads``), so these tests compare two independent ways of getting them.
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import mutualnet_video.core.layers as layers
from mutualnet_video.core import (
    SlimConv3d,
    SlimLinear,
    SubnetConfig,
    get_space,
    slice_grads,
    slice_grads_enabled,
    use_config,
)
from mutualnet_video.engine import SandwichSampler, mutual_step
from mutualnet_video.testing import create_toy_slimnet, toy_slowfast, toy_x3d

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _slice_every_layer() -> None:
    """Take ``slice_grads``'s own paths on every layer, however small: by default a toy
    network's weights are all under the sizes where they pay (and would be sliced the
    plain way, which these tests compare against)."""
    layers._SLICE_INTO_GRAD_MIN_NUMEL = 0
    layers._GEMM_MIN_MACS = 0


@pytest.fixture
def slice_every_layer(monkeypatch):
    monkeypatch.setattr(layers, "_SLICE_INTO_GRAD_MIN_NUMEL", 0)
    monkeypatch.setattr(layers, "_GEMM_MIN_MACS", 0)


def _configs(model):
    space = get_space(model)
    return [space.full(), SubnetConfig(0.5, space.frames[-1], space.crops[-1]),
            SubnetConfig(0.75, space.frames[0], space.crops[0])]


def _grads_after_passes(model, video, *, sliced: bool, initial_grad: bool = False):
    """Gradients after one backward per configuration (full first), ``slice_grads(sliced)``."""
    model.train()
    torch.manual_seed(1)  # the same dropout masks in every call
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25) if initial_grad else None
    space = get_space(model)
    weights = torch.linspace(-1, 1, 7)
    for cfg in _configs(model):
        x = space.model_input(video, cfg)
        with slice_grads(sliced), use_config(model, cfg):
            out = model(x)
            (out * weights[: out.shape[-1]]).sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("min_numel", [0, 500], ids=["every weight sliced", "weights under 500 plain"])
@pytest.mark.parametrize("make", [toy_x3d, toy_slowfast], ids=["x3d-like", "slowfast-like (in_splits)"])
@pytest.mark.parametrize("initial_grad", [False, True], ids=["grad None", "grad present"])
def test_sliced_gradients_equal_autograd_on_views(make, initial_grad, min_numel, monkeypatch):
    """Also with the two paths mixed in one backward: the toy nets' slim weights have
    112-864 (x3d-like) and 280-9216 (slowfast-like) elements, on both sides of 500."""
    monkeypatch.setattr(layers, "_SLICE_INTO_GRAD_MIN_NUMEL", min_numel)
    monkeypatch.setattr(layers, "_GEMM_MIN_MACS", 0)
    torch.manual_seed(0)
    model = make()
    video = torch.randn(2, 3, 4 * (2 if make is toy_slowfast else 1), 32, 32)
    expected = _grads_after_passes(copy.deepcopy(model), video, sliced=False, initial_grad=initial_grad)
    got = _grads_after_passes(model, video, sliced=True, initial_grad=initial_grad)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # the gradient reached the inactive part of no parameter (all passes ran first at full width)
    assert all(g is not None for g in got.values())


def test_only_the_active_slice_is_written_and_autograd_sees_no_parameter_gradient(slice_every_layer):
    torch.manual_seed(0)
    conv = SlimConv3d(6, 16, kernel_size=1, bias=False)
    linear = SlimLinear(24, 5, in_splits=((16, True), (8, False)))  # columns 0..7 and 16..23 at width 0.5
    calls = []
    conv.weight.register_hook(lambda g: calls.append(None if g is None else tuple(g.shape)))
    cfg = SubnetConfig(0.5, 4, 32)
    conv.set_subnet(cfg)
    linear.set_subnet(cfg)
    x = torch.randn(2, 3, 1, 1, 1)
    with slice_grads():
        assert slice_grads_enabled()
        h = conv(x)  # 3 -> 8 channels
        out = linear(torch.cat([h.flatten(1), torch.randn(2, 8)], 1))
        out.sum().backward()
    assert not slice_grads_enabled()
    assert calls == [None]  # the parameter's autograd hook got no gradient: it went into .grad directly
    assert conv.weight.grad.shape == conv.weight.shape
    assert (conv.weight.grad[:8, :3] != 0).all()
    assert conv.weight.grad[8:].abs().sum() == 0 and conv.weight.grad[:, 3:].abs().sum() == 0
    columns = linear.weight.grad.abs().sum(0)
    assert (columns[list(range(8)) + list(range(16, 24))] > 0).all() and (columns[8:16] == 0).all()
    # outside the block the plain path: autograd reaches the parameter
    conv(x).sum().backward()
    assert calls == [None, (16, 6, 1, 1, 1)]


def test_a_small_weight_is_sliced_the_plain_way_and_a_large_one_into_its_grad():
    """At the default sizes: a weight of 2**15 elements takes ``_SliceIntoGrad`` (its hook
    is handed no gradient), 64 elements less take autograd's full-size gradient; ``.grad``
    holds the slice's gradient either way."""
    torch.manual_seed(0)
    cfg = SubnetConfig(0.5, 4, 32)
    for out_channels, sliced in ((512, True), (511, False)):  # 64 x 512 = 2**15 elements
        conv = SlimConv3d(64, out_channels, kernel_size=1, bias=False)
        conv.set_subnet(cfg)
        calls = []
        conv.weight.register_hook(lambda g, calls=calls: calls.append(None if g is None else tuple(g.shape)))
        x = torch.randn(1, 32, 1, 2, 2, requires_grad=True)
        with slice_grads():
            out = conv(x)
            out.sum().backward()
        assert calls == ([None] if sliced else [tuple(conv.weight.shape)]), out_channels
        active = layers.scale_channels(out_channels, 0.5)
        expected = x.detach().sum(dim=(0, 2, 3, 4)).expand(active, 32)  # d sum(W x) / dW
        torch.testing.assert_close(conv.weight.grad[:active, :32].flatten(1), expected)
        assert conv.weight.grad[active:].abs().sum() == 0 and conv.weight.grad[:, 32:].abs().sum() == 0


def test_sliced_gradients_under_cpu_autocast_match_plain_slicing(slice_every_layer):
    torch.manual_seed(0)
    model = toy_x3d()
    video = torch.randn(2, 3, 4, 32, 32)
    results = []
    for sliced in (False, True):
        m = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_grads_after_passes(m, video, sliced=sliced))
    for name, grad in results[0].items():
        assert results[1][name].dtype == torch.float32
        torch.testing.assert_close(results[1][name], grad, rtol=1e-2, atol=1e-3, msg=name)


def test_mutual_step_trains_like_plain_slicing(slice_every_layer):
    torch.manual_seed(0)
    model = create_toy_slimnet(channels=8, num_subnets=4)
    video, labels = torch.randn(4, 3, 4, 32, 32), torch.tensor([0, 1, 2, 3])
    states = []
    for sliced in (True, False):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        sampler = SandwichSampler(get_space(m), generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            if sliced:
                mutual_step(m, sampler(video), labels, criterion=F.cross_entropy, optimizer=opt)
            else:  # the same iteration by hand, plain views (no slice_grads)
                from mutualnet_video.core import distillation_loss

                opt.zero_grad(set_to_none=True)
                teacher = None
                for i, (cfg, x) in enumerate(sampler(video)):
                    with use_config(m, cfg):
                        out = m(x)
                        loss = F.cross_entropy(out, labels) if i == 0 else distillation_loss(out, teacher)
                        loss.backward()
                    if i == 0:
                        teacher = out.detach()
                opt.step()
        states.append(m.state_dict())
    for key, value in states[1].items():
        torch.testing.assert_close(states[0][key], value, rtol=1e-5, atol=1e-6, msg=key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out: str, compiled: bool = False) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.set_num_threads(1)
    _slice_every_layer()  # the toy net's weights are small: take slice_grads's paths on all of them
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = create_toy_slimnet(channels=8, num_subnets=4)
        local = copy.deepcopy(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        video = torch.randn(4, 3, 4, 32, 32)[rank * 2 : rank * 2 + 2]
        labels = torch.tensor([0, 1, 2, 3])[rank * 2 : rank * 2 + 2]
        sub_inputs = SandwichSampler(get_space(model), generator=torch.Generator().manual_seed(1))(video)
        syncs = []  # buckets all-reduced: one per bucket for the whole step (no_sync before the last backward)

        def counting_allreduce(state, bucket):
            syncs.append(bucket.index())
            return default_hooks.allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, counting_allreduce)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.0)
        # compiled: torch.compile of the DDP wrapper (dynamo's DDPOptimizer), which mutual_step
        # must see through to find no_sync and the module to switch
        mutual_step(torch.compile(ddp, backend="eager") if compiled else ddp, sub_inputs, labels,
                    criterion=F.cross_entropy, optimizer=opt)
        from mutualnet_video.core import distillation_loss

        teacher = None
        for i, (cfg, x) in enumerate(sub_inputs):  # this rank's own gradient, plain views, no DDP
            with use_config(local, cfg):
                y = local(x)
                (F.cross_entropy(y, labels) if i == 0 else distillation_loss(y, teacher)).backward()
            if i == 0:
                teacher = y.detach()
        torch.save({"ddp": {n: p.grad for n, p in model.named_parameters()},
                    "local": {n: p.grad for n, p in local.named_parameters()},
                    "syncs": torch.tensor(syncs),
                    "param_bytes": torch.tensor(sum(p.numel() * p.element_size() for p in model.parameters()))},
                   os.path.join(out, f"g{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_ddp_mutual_step_all_reduces_the_sliced_gradients(tmp_path, compiled):
    """Two gloo ranks: DDP's averaged gradient equals the mean of each rank's own gradient,
    also through ``torch.compile(ddp)`` (about a minute: every configuration compiles)."""
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path), compiled), nprocs=2, join=True,
                       start_method="spawn")
    g0 = torch.load(tmp_path / "g0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "g1.pt", weights_only=True)
    for name, grad in g0["ddp"].items():
        expected = (g0["local"][name] + g1["local"][name]) / 2
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(g1["ddp"][name], expected, rtol=1e-5, atol=1e-6, msg=name)
    # the toy net's parameters fit DDP's first bucket (1 MiB): one all-reduce for the step, not one
    # per configuration (4 sub-networks)
    assert int(g0["param_bytes"]) < 2**20
    assert g0["syncs"].tolist() == [0] and g1["syncs"].tolist() == [0]
