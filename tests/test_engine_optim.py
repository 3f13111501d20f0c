"""LR schedule (linear warm-up + cosine, per iteration) and weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mutualnet_video.core import SlimBatchNorm3d, SlimConv3d
from mutualnet_video.engine.config import default_config
from mutualnet_video.engine.optim import (
    IterLRScheduler,
    build_lr_scheduler,
    build_optimizer,
    lr_multiplier,
    param_groups,
)

OPTIM = dict(name="sgd", lr=0.4, momentum=0.9, nesterov=True, weight_decay=1e-4, warmup_iters=5, warmup_factor=0.1,
             min_lr_factor=0.01, max_iters=25)


def _expected(i: int, *, lr=0.4, warmup=5, factor=0.1, total=25, min_factor=0.01) -> float:
    if i < warmup:
        return lr * (factor + (1 - factor) * i / warmup)
    t = (i - warmup) / (total - warmup)
    return lr * (min_factor + 0.5 * (1 - min_factor) * (1 + math.cos(math.pi * t)))


def _cfg_optim(**kw):
    return default_config(model={"_target_": "mutualnet_video.testing.create_toy_slimnet"}, optim={**OPTIM, **kw})["optim"]


def test_warmup_then_cosine_per_iteration():
    model = nn.Linear(4, 2)
    optim = _cfg_optim()
    optimizer = build_optimizer(model, optim)
    scheduler = build_lr_scheduler(optimizer, optim, 25)
    seen = []
    for _ in range(25):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [_expected(i) for i in range(25)]
    assert seen == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert seen[0] == pytest.approx(0.04) and seen[5] == pytest.approx(0.4)
    assert all(a >= b for a, b in zip(seen[5:], seen[6:]))  # monotone decay after warm-up


def test_scheduler_state_resumes_the_schedule():
    model = nn.Linear(4, 2)
    optim = _cfg_optim()
    opt_a = build_optimizer(model, optim)
    sched_a = build_lr_scheduler(opt_a, optim, 25)
    for _ in range(7):
        opt_a.step()
        sched_a.step()
    state = sched_a.state_dict()
    assert all(isinstance(v, (int, float, list)) for v in state.values())  # weights_only-safe
    opt_b = build_optimizer(nn.Linear(4, 2), optim)
    sched_b = build_lr_scheduler(opt_b, optim, 25)
    sched_b.load_state_dict(state)
    assert opt_b.param_groups[0]["lr"] == pytest.approx(_expected(7))
    with pytest.raises(ValueError, match="max_iters"):
        build_lr_scheduler(build_optimizer(nn.Linear(4, 2), optim), optim, 30).load_state_dict(state)


def test_no_warmup_is_pure_cosine():
    mult = lr_multiplier(max_iters=10, warmup_iters=0, min_lr_factor=0.0)
    assert mult(0.0) == pytest.approx(1.0)
    assert mult(0.5) == pytest.approx(0.5)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = IterLRScheduler(opt, mult, 10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SlimConv3d(3, 8, kernel_size=1, bias=True)
        self.bn = SlimBatchNorm3d(8)
        self.dw = SlimConv3d(8, 8, kernel_size=3, groups=8, bias=False)
        self.fc = nn.Linear(8, 2)


def test_weight_decay_groups_exclude_bn_bias_and_optionally_depthwise():
    net = _Net()
    decay, no_decay = param_groups(net, weight_decay=1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert set(decay["names"]) == {"conv.weight", "dw.weight", "fc.weight"}
    assert set(no_decay["names"]) == {"conv.bias", "bn.weight", "bn.bias", "fc.bias"}
    decay, no_decay = param_groups(net, weight_decay=1e-4, exclude_depthwise=True)
    assert "dw.weight" in no_decay["names"] and "dw.weight" not in decay["names"]
    (everything,) = param_groups(net, weight_decay=1e-4, exclude_bn_bias=False)
    assert len(everything["params"]) == len(list(net.parameters()))


def test_build_optimizer_kinds():
    net = _Net()
    sgd = build_optimizer(net, _cfg_optim())
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"] is True
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]
    adamw = build_optimizer(net, _cfg_optim(name="adamw", betas=[0.8, 0.99]))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.8, 0.99)
    assert sum(len(g["params"]) for g in adamw.param_groups) == len(list(net.parameters()))
