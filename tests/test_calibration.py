"""Post-statistics BN: per-configuration statistics, checked against a hand computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mutualnet_video.core import (
    ConfigSpace,
    SlimBatchNorm,
    SlimBatchNorm3d,
    SlimConv3d,
    SlimLinear,
    SubnetConfig,
    attach_space,
    clip_for_config,
    current_config,
    get_space,
    set_config,
    use_config,
)
from mutualnet_video.evaluation.calibration import (
    NotCalibratedError,
    calibrate_bn,
    check_calibrated,
    missing_calibration,
)
from mutualnet_video.evaluation.evaluator import evaluate_configs
from mutualnet_video.testing import toy_slowfast, toy_x3d

FULL = SubnetConfig(1.0, 4, 32)
SMALL = SubnetConfig(0.5, 2, 24)


class TwoBN(nn.Module):
    """conv -> BN -> relu -> conv -> BN -> pool -> linear: small enough to compute by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = SlimConv3d(3, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = SlimBatchNorm3d(16)
        self.conv2 = SlimConv3d(16, 24, kernel_size=1, bias=False)
        self.bn2 = SlimBatchNorm3d(24)
        self.fc = SlimLinear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3, 4)))


def _two_bn() -> TwoBN:
    torch.manual_seed(0)
    model = TwoBN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return attach_space(model, ConfigSpace((0.5, 1.0), frames=(4, 2), crops=(32, 24)))


def _batches(n: int, *, frames: int = 4, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, frames, 32, 32, generator=gen) * 2 + 0.5 for _ in range(n)]


def _hand_stats(model: TwoBN, batches: list[torch.Tensor], cfg: SubnetConfig):
    """Cumulative average of per-batch means / unbiased variances, by hand."""
    c1 = 16 if cfg.width == 1.0 else 8
    c2 = 24 if cfg.width == 1.0 else 16  # make_divisible(12, 8) = 16
    sums = [[0, 0], [0, 0]]
    for clip in batches:
        x = clip_for_config(clip, cfg)
        y1 = F.conv3d(x, model.conv1.weight[:c1], None, 1, 1)
        m1, v1 = y1.mean(dim=(0, 2, 3, 4)), y1.var(dim=(0, 2, 3, 4), unbiased=True)
        z1 = torch.relu(F.batch_norm(y1, None, None, model.bn1.weight[:c1], model.bn1.bias[:c1], True, 0.0, 1e-5))
        y2 = F.conv3d(z1, model.conv2.weight[:c2, :c1])
        m2, v2 = y2.mean(dim=(0, 2, 3, 4)), y2.var(dim=(0, 2, 3, 4), unbiased=True)
        for i, (m, v) in enumerate(((m1, v1), (m2, v2))):
            sums[i][0] = sums[i][0] + m
            sums[i][1] = sums[i][1] + v
    n = len(batches)
    return [(m / n, v / n) for m, v in sums]


@torch.no_grad()
def test_stored_stats_equal_hand_cumulative_average():
    model = _two_bn()
    batches = _batches(3)
    used = calibrate_bn(model, batches, [FULL, SMALL], num_batches=3)
    assert used == 3
    for cfg in (FULL, SMALL):
        for bn, (mean, var) in zip((model.bn1, model.bn2), _hand_stats(model, batches, cfg)):
            stored_mean, stored_var = bn.config_stats[cfg.tag]
            torch.testing.assert_close(stored_mean, mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(stored_var, var, rtol=1e-4, atol=1e-5)
    # the configurations got different statistics (stats for one config are useless for another)
    assert not torch.allclose(model.bn1.config_stats[FULL.tag][0][:8], model.bn1.config_stats[SMALL.tag][0])


@torch.no_grad()
def test_matches_plain_batchnorm_cumulative_average():
    """The same numbers as nn.BatchNorm3d(momentum=None) fed the first conv's output."""
    model = _two_bn()
    batches = _batches(4, seed=5)
    calibrate_bn(model, batches, [SMALL], num_batches=4)
    plain = nn.BatchNorm3d(8, momentum=None).train()
    for clip in batches:
        plain(F.conv3d(clip_for_config(clip, SMALL), model.conv1.weight[:8], None, 1, 1))
    torch.testing.assert_close(model.bn1.config_stats[SMALL.tag][0], plain.running_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.config_stats[SMALL.tag][1], plain.running_var, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_eval_at_calibrated_config_uses_the_stored_stats():
    model = _two_bn()
    batches = _batches(3)
    clip = _batches(1, seed=9)[0]
    with use_config(model.eval(), SMALL):
        before = model(clip_for_config(clip, SMALL))  # shared running buffers
    calibrate_bn(model, batches, [SMALL], num_batches=3)
    (m1, v1), (m2, v2) = _hand_stats(model, batches, SMALL)
    x = clip_for_config(clip, SMALL)
    y = torch.relu(F.batch_norm(F.conv3d(x, model.conv1.weight[:8], None, 1, 1), m1, v1,
                                model.bn1.weight[:8], model.bn1.bias[:8], False, 0.0, 1e-5))
    y = F.batch_norm(F.conv3d(y, model.conv2.weight[:16, :8]), m2, v2, model.bn2.weight[:16], model.bn2.bias[:16],
                     False, 0.0, 1e-5)
    expected = F.linear(y.mean(dim=(2, 3, 4)), model.fc.weight[:, :16], model.fc.bias)
    with use_config(model.eval(), SMALL):
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, before, atol=1e-3)


def test_calibration_restores_buffers_modes_and_config():
    model = toy_x3d()
    model.train()
    model.dropout.eval()  # a mixed state must come back as it was
    set_config(model, SubnetConfig(0.75, 2, 32))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SlimBatchNorm):
                m.num_batches_tracked.fill_(17)
                m.momentum = 0.3
    model.stem_norm.momentum = None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in model.named_modules() if isinstance(m, SlimBatchNorm)}

    calibrate_bn(model, _batches(2), [FULL, SMALL], num_batches=2)

    after = model.state_dict()
    stats_keys = [k for k in after if ".config_stats." in k]
    assert stats_keys and set(after) - set(before) == set(stats_keys)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {n: m.momentum for n, m in model.named_modules() if isinstance(m, SlimBatchNorm)} == momenta
    assert current_config(model) == SubnetConfig(0.75, 2, 32)


def test_calibrated_stats_survive_state_dict_round_trip():
    model = toy_x3d()
    calibrate_bn(model, _batches(2), [SMALL], num_batches=2)
    state = model.state_dict()
    assert f"block.norm_b.config_stats.{SMALL.tag}.running_mean" in state
    fresh = toy_x3d(seed=3)
    fresh.load_state_dict(state, strict=True)
    assert not missing_calibration(fresh, SMALL)
    x = clip_for_config(_batches(1, seed=4)[0], SMALL)
    with torch.no_grad(), use_config(model.eval(), SMALL), use_config(fresh.eval(), SMALL):
        torch.testing.assert_close(fresh(x), model(x))


@torch.no_grad()
def test_slowfast_inputs_built_from_the_same_batch():
    """Default input_fn: [slow, fast] from one clip; the unslimmed Fast BN still gets per-config stats."""
    model = toy_slowfast()
    alpha = get_space(model).slowfast_alpha
    batches = _batches(2, frames=4 * alpha)
    calibrate_bn(model, [{"video": b, "label": torch.zeros(2)} for b in batches], [FULL, SMALL], num_batches=2)
    for cfg in (FULL, SMALL):
        means = [F.conv3d(clip_for_config(b, cfg, slowfast_alpha=alpha)[1], model.fast_conv.weight, None,
                          (1, 2, 2), 1).mean(dim=(0, 2, 3, 4)) for b in batches]
        torch.testing.assert_close(model.fast_norm.config_stats[cfg.tag][0], sum(means) / 2, rtol=1e-4, atol=1e-5)
    assert model.fast_norm.config_stats[SMALL.tag][0].numel() == 8  # full width
    assert model.slow_norm.config_stats[SMALL.tag][0].numel() == 8  # 16 * 0.5


def test_input_fn_and_batch_limit():
    model = _two_bn()
    seen = []

    def input_fn(batch, cfg):
        seen.append(cfg)
        return clip_for_config(batch["clip"], cfg)

    batches = [{"clip": b} for b in _batches(5)]
    assert calibrate_bn(model, batches, [SMALL, FULL, SMALL], num_batches=2, input_fn=input_fn) == 2
    assert seen == [SMALL, FULL, SMALL, FULL]  # configs de-duplicated, batches outer loop


def test_errors():
    model = _two_bn()
    with pytest.raises(ValueError, match="yielded no batch"):
        calibrate_bn(model, [], [SMALL])
    with pytest.raises(ValueError, match="crop=40"):
        calibrate_bn(model, _batches(1), [SubnetConfig(0.5, 2, 40)])
    with pytest.raises(KeyError, match="video"):
        calibrate_bn(model, [{"clip": torch.zeros(1)}], [SMALL])
    with pytest.warns(UserWarning, match="only 1 of the 9"):
        calibrate_bn(model, _batches(1), [SMALL])


def test_require_calibrated_names_how_to_calibrate():
    model = _two_bn()
    loader = [{"video": b, "label": torch.tensor([0, 1]), "video_index": torch.tensor([0, 1]),
               "clip_index": torch.zeros(2), "aug_index": torch.zeros(2)} for b in _batches(1)]
    kwargs = dict(views=("1x1",), progress=False, flops_fn=lambda m, c: 1, params_fn=lambda m, c: 1,
                  require_calibrated=True)
    with pytest.raises(NotCalibratedError, match=r"--calibrate.*calibrate_bn") as info:
        evaluate_configs(model, loader, [SMALL], **kwargs)
    assert SMALL.tag in str(info.value) and "bn1" in str(info.value)
    calibrate_bn(model, _batches(1), [SMALL], num_batches=1)
    check_calibrated(model, [SMALL])
    with pytest.raises(NotCalibratedError):
        check_calibrated(model, [FULL])
    records = evaluate_configs(model, loader, [SMALL], **kwargs)
    assert len(records) == 1 and records[0].num_videos == 2
