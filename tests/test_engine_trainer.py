"""Trainer: exact resume on the CPU, NaN handling, epochs, validation, logs."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

import mutualnet_video  # noqa: F401
from mutualnet_video.engine import Trainer, final_evaluation
from mutualnet_video.engine.config import default_config
from mutualnet_video.testing import toy_clip_dataset

TOY = "mutualnet_video.testing"


def _cfg(out, **sections):
    base = dict(
        model={"_target_": f"{TOY}.create_toy_slimnet", "channels": 8, "num_subnets": 3},
        data={"train": {"_target_": f"{TOY}.toy_clip_dataset", "num_videos": 5},
              "val": {"_target_": f"{TOY}.toy_clip_dataset", "split": "val", "num_videos": 4},
              "batch_size": 2, "num_workers": 0},
        optim={"lr": 0.05, "max_iters": 6, "warmup_iters": 2, "weight_decay": 1e-3},
        train={"checkpoint_period": 3, "progress": False, "tensorboard": False, "log_period": 1},
        output_dir=str(out),
    )
    for key, value in sections.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return default_config(**base)


class _Interrupt(Exception):
    pass


def _interrupting_criterion(at_call: int):
    calls = {"n": 0}

    def criterion(logits, targets):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise _Interrupt(f"simulated kill at call {at_call}")
        return F.cross_entropy(logits, targets)

    return criterion


class _ShuffledIterable(IterableDataset):
    """An iterable dataset whose order comes from the global torch RNG at each epoch."""

    def __init__(self, base):
        self.base = base

    def __iter__(self):
        for i in torch.randperm(len(self.base)).tolist():
            yield self.base[i]


def _state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("iterable", [False, True])
def test_interrupted_and_resumed_run_reproduces_weights_exactly(tmp_path, iterable):
    dataset = (lambda: _ShuffledIterable(toy_clip_dataset(num_videos=5))) if iterable else (lambda: None)
    full = Trainer(_cfg(tmp_path / "full"), train_dataset=dataset())
    full.train()
    want = _state(full)

    cut = Trainer(_cfg(tmp_path / "cut"), train_dataset=dataset(), criterion=_interrupting_criterion(5))
    with pytest.raises(_Interrupt):
        cut.train()  # dies in iteration 5; the last checkpoint is at iteration 3
    assert open(tmp_path / "cut" / "last_checkpoint").read() == "model_0000003.pth"
    resumed = Trainer(_cfg(tmp_path / "cut", train={"resume": True}), train_dataset=dataset())
    resumed.train()
    assert resumed.iteration == 6
    got = _state(resumed)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # optimizer state and LR too
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    # sanity: the run did train (weights moved from the initial ones)
    fresh = Trainer(_cfg(tmp_path / "fresh"))
    assert not torch.equal(fresh.model.state_dict()["proj.weight"], want["proj.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def criterion(logits, targets):
        calls["n"] += 1
        loss = F.cross_entropy(logits, targets)
        return loss * float("nan") if calls["n"] == 5 else loss

    trainer = Trainer(_cfg(tmp_path, train={"checkpoint_period": 2}), criterion=criterion)
    with pytest.raises(FloatingPointError, match=r"iteration 4.*Last good checkpoint: .*model_0000004\.pth"):
        trainer.train()
    assert not (tmp_path / "model_final.pth").exists()
    saved = torch.load(tmp_path / "model_0000004.pth", weights_only=True)["model"]
    for key, value in trainer.model.named_parameters():  # step not taken: the weights are the saved ones
        assert torch.equal(saved[key], value), key
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert "non-finite loss" in lines[-1]["error"]


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_nan_weights_are_never_checkpointed(tmp_path):
    calls = {"n": 0}

    def criterion(logits, targets):
        calls["n"] += 1
        if calls["n"] == 4:  # finite loss, NaN gradient in iteration 4
            logits = _NanGrad.apply(logits)
        return F.cross_entropy(logits, targets)

    trainer = Trainer(_cfg(tmp_path, train={"checkpoint_period": 2}), criterion=criterion)
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train()
    assert open(tmp_path / "last_checkpoint").read() == "model_0000002.pth"
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert not (tmp_path / "model_0000004.pth").exists()


def test_epochs_validation_logs_and_final_table(tmp_path, capsys):
    trainer = Trainer(_cfg(tmp_path, optim={"max_iters": None, "epochs": 2, "warmup_iters": 1},
                           train={"eval_period": 2}))
    assert trainer.max_iters == 4  # 5 clips, batch 2, drop_last -> 2 per epoch
    metrics = trainer.train()
    assert set(metrics) == {"top1", "top5", "clips"} and metrics["clips"] == 4
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_lines = [r for r in records if "train/loss_full" in r]
    assert [r["iteration"] for r in train_lines] == [1, 2, 3, 4]
    assert all(r["train/lr"] > 0 and r["train/clips_per_s"] > 0 for r in train_lines)
    assert [r["iteration"] for r in records if "val/top1" in r] == [2, 4]
    assert os.path.isfile(tmp_path / "config.yaml") and os.path.isfile(tmp_path / "model_final.pth")
    rows = final_evaluation(trainer)
    assert rows and rows[0]["config"] == "w1000_f4_c32"
    out = capsys.readouterr().out
    assert "top1" in out and "top5" not in out  # 5 classes: every prediction is in the top 5
    assert out.splitlines()[1].split()[3] == "1.00x"  # the full row's cost relative to itself
    # the table, as written to output_dir/final_evaluation.json
    saved = json.loads((tmp_path / "final_evaluation.json").read_text())
    assert saved == {"rows": json.loads(json.dumps(rows))}
    assert {"config", "width", "frames", "crop", "gflops", "top1", "top5"} <= set(saved["rows"][0])
    # full, middle, smallest; BN calibrated for each; the evaluator's GFLOPs and video counts
    from mutualnet_video.core import SlimBatchNorm, SubnetConfig
    from mutualnet_video.engine.trainer import default_eval_configs

    space = trainer.space
    assert [r["config"] for r in rows] == [c.tag for c in default_eval_configs(space)]
    assert rows[-1]["config"] == space.smallest().tag and len(rows) == 3
    assert rows[0]["gflops"] >= rows[1]["gflops"] > rows[2]["gflops"] > 0  # 8 channels: 0.75 rounds up to 8
    assert all(r["calibrated"] and r["videos"] == 4 and 0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    bns = [m for m in trainer.model.modules() if isinstance(m, SlimBatchNorm)]
    assert bns and all(bn.has_stats(SubnetConfig.from_tag(r["config"])) for r in rows for bn in bns)


def test_final_table_shows_cost_relative_to_the_full_row_and_top5_above_5_classes():
    from mutualnet_video.engine.trainer import format_table

    rows = [{"config": "w1000_f8_c32", "calibrated": True, "gflops": 0.02, "top1": 90.0, "top5": 99.0, "videos": 8},
            {"config": "w0500_f4_c24", "calibrated": True, "gflops": 0.005, "top1": 80.0, "top5": 97.5, "videos": 8}]
    six = format_table(rows, num_classes=6).splitlines()
    assert six[0].split() == ["config", "BN", "GFLOPs", "cost", "top1", "top5", "videos"]
    assert six[1].split() == ["w1000_f8_c32", "calibrated", "0.0200", "1.00x", "90.00", "99.00", "8"]
    assert six[2].split() == ["w0500_f4_c24", "calibrated", "0.0050", "0.25x", "80.00", "97.50", "8"]
    five = format_table(rows, num_classes=5).splitlines()
    assert five[0].split() == ["config", "BN", "GFLOPs", "cost", "top1", "videos"]
    assert five[2].split() == ["w0500_f4_c24", "calibrated", "0.0050", "0.25x", "80.00", "8"]


def test_single_mode_trains_full_config_only(tmp_path):
    seen = []
    trainer = Trainer(_cfg(tmp_path, mutual={"mode": "single"}, optim={"max_iters": 2, "warmup_iters": 0}))
    trainer.model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    trainer.train()
    assert seen[:2] == [32, 32]  # two iterations, one forward each (then validation)


def test_sync_bn_converts_slim_layers_in_place_and_refuses_plain_bn_on_cpu(tmp_path):
    from mutualnet_video.core import SlimBatchNorm3d, SlimSyncBatchNorm3d

    plain = Trainer(_cfg(tmp_path / "a"))
    synced = Trainer(_cfg(tmp_path / "b", train={"sync_bn": True}))
    assert all(type(m) is SlimSyncBatchNorm3d for m in synced.model.modules() if isinstance(m, SlimBatchNorm3d))
    assert synced.model.state_dict().keys() == plain.model.state_dict().keys()
    x = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(synced.model(x), plain.model(x))  # one process: plain SlimBatchNorm
    synced.train()

    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(5))
    with pytest.raises(ValueError, match=r"train\.sync_bn: 1 plain BatchNorm layers \(e\.g\. 1\).*CUDA only"):
        Trainer(_cfg(tmp_path / "c", train={"sync_bn": True}, mutual={"mode": "single"}), model=model)


def test_cpu_threads_is_applied(tmp_path):
    before = torch.get_num_threads()
    try:
        Trainer(_cfg(tmp_path, train={"cpu_threads": 1}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_training_learns_the_toy_task(tmp_path):
    trainer = Trainer(_cfg(tmp_path, data={"train": {"_target_": f"{TOY}.toy_clip_dataset", "num_videos": 40},
                                           "val": {"_target_": f"{TOY}.toy_clip_dataset", "split": "val",
                                                   "num_videos": 20},
                                           "batch_size": 4},
                           optim={"lr": 0.1, "max_iters": 40, "warmup_iters": 4}, train={"checkpoint_period": 100}))
    before = trainer.evaluate()["top1"]
    after = trainer.train()["top1"]
    assert after >= before + 30, (before, after)  # 5 classes: 20% -> 60% in 40 iterations
