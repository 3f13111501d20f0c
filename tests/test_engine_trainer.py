"""Trainer: exact resume on the CPU, NaN handling, epochs, validation, logs."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

import mutualnet_video  # noqa: F401
from mutualnet_video.engine import Trainer, final_evaluation, launch, seed_everything
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


def _trainer(cfg, **kwargs):
    """A Trainer built as ``launch`` leaves the process: seeded with ``train.seed``."""
    seed_everything(cfg["train"]["seed"])
    return Trainer(cfg, **kwargs)


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
    full = _trainer(_cfg(tmp_path / "full"), train_dataset=dataset())
    full.train()
    want = _state(full)

    cut = _trainer(_cfg(tmp_path / "cut"), train_dataset=dataset(), criterion=_interrupting_criterion(5))
    with pytest.raises(_Interrupt):
        cut.train()  # dies in iteration 5; the last checkpoint is at iteration 3
    assert open(tmp_path / "cut" / "last_checkpoint").read() == "model_0000003.pth"
    resumed = _trainer(_cfg(tmp_path / "cut", train={"resume": True}), train_dataset=dataset())
    resumed.train()
    assert resumed.iteration == 6
    got = _state(resumed)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # optimizer state and LR too
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    # sanity: the run did train (weights moved from the initial ones)
    fresh = _trainer(_cfg(tmp_path / "fresh"))
    assert not torch.equal(fresh.model.state_dict()["proj.weight"], want["proj.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def criterion(logits, targets):
        calls["n"] += 1
        loss = F.cross_entropy(logits, targets)
        return loss * float("nan") if calls["n"] == 5 else loss

    trainer = _trainer(_cfg(tmp_path, train={"checkpoint_period": 2}), criterion=criterion)
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

    trainer = _trainer(_cfg(tmp_path, train={"checkpoint_period": 2}), criterion=criterion)
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train()
    assert open(tmp_path / "last_checkpoint").read() == "model_0000002.pth"
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert not (tmp_path / "model_0000004.pth").exists()


def test_epochs_validation_logs_and_final_table(tmp_path, capsys):
    trainer = _trainer(_cfg(tmp_path, optim={"max_iters": None, "epochs": 2, "warmup_iters": 1},
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
    lines = out.splitlines()
    assert lines[0] == "calibrated BN statistics of 3 configurations on 9 batches"
    assert lines[3].split()[7] == "1.00x"  # the full row's cost relative to itself
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
    from mutualnet_video.evaluation import BudgetRecord, format_table

    rows = [BudgetRecord(1.0, 8, 32, "1x1", 0.02, 0.02, 510_000, 90.0, 99.0, num_videos=8),
            BudgetRecord(0.5, 4, 24, "1x1", 0.005, 0.005, 130_000, 80.0, 97.5, num_videos=8, calibrated=False)]
    six = format_table(rows, num_classes=6, sort=False).splitlines()
    assert six[0].split() == ["width", "frames", "crop", "views", "BN", "GFLOPs/view", "GFLOPs/video", "cost",
                              "params(M)", "top1", "top5", "videos", "ms/video", "P"]
    assert six[2].split() == ["1", "8", "32", "1x1", "calibrated", "0.0200", "0.0200", "1.00x", "0.510", "90.00",
                              "99.00", "8", "-"]
    assert six[3].split() == ["0.5", "4", "24", "1x1", "shared", "0.0050", "0.0050", "0.25x", "0.130", "80.00",
                              "97.50", "8", "-"]
    five = format_table(rows, num_classes=5).splitlines()  # sorted: cheapest first
    assert "top5" not in five[0] and five[2].split()[:8] == six[3].split()[:8] and five[2].split()[9] == "80.00"


def test_single_mode_trains_full_config_only(tmp_path):
    seen = []
    trainer = _trainer(_cfg(tmp_path, mutual={"mode": "single"}, optim={"max_iters": 2, "warmup_iters": 0}))
    trainer.model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    trainer.train()
    assert seen[:2] == [32, 32]  # two iterations, one forward each (then validation)


def test_sync_bn_converts_slim_layers_in_place_and_refuses_plain_bn_on_cpu(tmp_path):
    from mutualnet_video.core import SlimBatchNorm3d, SlimSyncBatchNorm3d

    plain = _trainer(_cfg(tmp_path / "a"))
    synced = _trainer(_cfg(tmp_path / "b", train={"sync_bn": True}))
    assert all(type(m) is SlimSyncBatchNorm3d for m in synced.model.modules() if isinstance(m, SlimBatchNorm3d))
    assert synced.model.state_dict().keys() == plain.model.state_dict().keys()
    x = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(synced.model(x), plain.model(x))  # one process: plain SlimBatchNorm
    synced.train()

    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(5))
    with pytest.raises(ValueError, match=r"train\.sync_bn: 1 plain BatchNorm layers \(e\.g\. 1\).*CUDA only"):
        _trainer(_cfg(tmp_path / "c", train={"sync_bn": True}, mutual={"mode": "single"}), model=model)


def test_launch_sets_up_the_process_and_the_trainer_changes_nothing_global(tmp_path):
    synthetic = {"root": str(tmp_path / "synthetic"), "num_classes": 2, "train_per_class": 1, "val_per_class": 1,
                 "frames": 8, "size": [16, 16]}
    cfg = _cfg(tmp_path / "out", train={"cpu_threads": 1, "seed": 5},
               data={"synthetic": synthetic})
    from mutualnet_video.engine import build_model

    before = torch.get_num_threads()
    try:
        torch.manual_seed(123)
        build_model(cfg)  # what building the Trainer draws from the global RNG: the initial weights
        reference = torch.rand(3)
        torch.manual_seed(123)
        Trainer(cfg)  # builds the model but seeds nothing, sets no thread count, writes no file
        drawn_after_trainer = torch.rand(3)
        assert torch.equal(drawn_after_trainer, reference)
        assert torch.get_num_threads() == before
        assert not (tmp_path / "synthetic").exists() and not (tmp_path / "out").exists()
        with launch(cfg):
            assert torch.get_num_threads() == 1
            assert (tmp_path / "synthetic" / "train.csv").is_file()
            seeded = torch.rand(3)
        torch.manual_seed(5)
        assert torch.equal(seeded, torch.rand(3)) and not torch.equal(seeded, drawn_after_trainer)
    finally:
        torch.set_num_threads(before)


def test_training_learns_the_toy_task(tmp_path):
    trainer = _trainer(_cfg(tmp_path, data={"train": {"_target_": f"{TOY}.toy_clip_dataset", "num_videos": 40},
                                           "val": {"_target_": f"{TOY}.toy_clip_dataset", "split": "val",
                                                   "num_videos": 20},
                                           "batch_size": 4},
                           optim={"lr": 0.1, "max_iters": 40, "warmup_iters": 4}, train={"checkpoint_period": 100}))
    before = trainer.evaluate()["top1"]
    after = trainer.train()["top1"]
    assert after >= before + 30, (before, after)  # 5 classes: 20% -> 60% in 40 iterations


# -- resume after faults ---------------------------------------------------------------------
def _finished(tmp_path, **sections):
    """A 6-iteration run (checkpoints at 3 and the end) and its final weights."""
    trainer = _trainer(_cfg(tmp_path, **sections))
    trainer.train()
    return _state(trainer)


def _resumed(tmp_path, **sections):
    train = {"resume": True, **sections.pop("train", {})}
    trainer = _trainer(_cfg(tmp_path, train=train, **sections))
    trainer.train()
    return trainer


def test_resume_falls_back_past_a_truncated_newest_checkpoint(tmp_path, caplog):
    want = _finished(tmp_path)
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])  # truncated by a crash of the disk, not of our write
    with caplog.at_level("WARNING", logger="mutualnet_video.engine.trainer"):
        resumed = _resumed(tmp_path)
    assert any("model_final.pth: not a readable checkpoint" in r.getMessage() and "older" in r.getMessage()
               for r in caplog.records), caplog.text
    got = _state(resumed)  # iterations 4-6 again from model_0000003: the same weights
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_resume_falls_back_when_last_checkpoint_names_a_missing_file(tmp_path, caplog):
    want = _finished(tmp_path)
    (tmp_path / "model_final.pth").unlink()
    with caplog.at_level("WARNING", logger="mutualnet_video.engine.trainer"):
        resumed = _resumed(tmp_path)
    assert "model_final.pth, named by last_checkpoint, is missing" in caplog.text
    got = _state(resumed)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_resume_with_no_loadable_checkpoint_stops_naming_them(tmp_path):
    from mutualnet_video.checkpoint import CheckpointError

    _finished(tmp_path)
    for name in ("model_0000003.pth", "model_final.pth"):
        (tmp_path / name).write_text("junk")
    with pytest.raises(CheckpointError, match=r"train\.resume: no loadable checkpoint in .* \(tried "
                                              r"model_final\.pth, model_0000003\.pth\)"):
        _resumed(tmp_path)


def test_resume_refuses_a_checkpoint_of_another_model_or_space(tmp_path):
    from mutualnet_video.engine import ConfigError

    _finished(tmp_path)
    with pytest.raises(ConfigError, match=r"model_final\.pth was written for another run \(model\.channels: "
                                          r"checkpoint 8 vs config 16\)"):
        _resumed(tmp_path, model={"channels": 16})
    with pytest.raises(ConfigError, match=r"space\.width_range: checkpoint \[0\.5, 1\.0\] vs config \[0\.25, 1\.0\]"):
        _resumed(tmp_path, model={"width_range": [0.25, 1.0]})
    resumed = _resumed(tmp_path, model={"width_range": [0.25, 1.0]}, train={"resume_check": False})
    assert resumed.iteration == 6  # the override loads it (the same tensors: only the space differs)


def test_a_full_disk_fails_before_training(tmp_path, monkeypatch):
    import shutil

    from mutualnet_video.engine import ConfigError

    trainer = _trainer(_cfg(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(ConfigError, match=r"output_dir: .*: 0\.0 MiB free, a checkpoint needs about"):
        trainer.train()
    assert trainer.iteration == 0 and not (tmp_path / "last_checkpoint").exists()


def test_a_checkpoint_write_failing_midway_keeps_the_previous_one(tmp_path, monkeypatch):
    import mutualnet_video.checkpoint as ckpt_mod

    real_save, calls = torch.save, {"n": 0}

    def failing_second_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        real_save(obj, f, *args, **kwargs)
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_second_save)
    trainer = _trainer(_cfg(tmp_path))
    with pytest.raises(OSError, match="No space left"):
        trainer.train()  # the second save is model_final (iteration 6)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "model_final.pth").exists() and not list(tmp_path.glob(".*.tmp"))
    assert torch.load(tmp_path / "model_0000003.pth", weights_only=True)["iteration"] == 3


def test_resume_removes_partial_files_and_metrics_of_lost_iterations(tmp_path):
    _finished(tmp_path)
    (tmp_path / "model_final.pth").unlink()
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    (tmp_path / ".model_final.pth.x1y2.tmp").write_bytes(b"partial")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 5, "train/los')  # cut by the kill
    _resumed(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_iterations = [r["iteration"] for r in rows if "train/loss_full" in r]
    assert train_iterations == [1, 2, 3, 4, 5, 6]  # 4-6 once each, from the resumed run


def test_decode_failures_are_written_once_per_epoch_by_reason(tmp_path, caplog):
    """Training on a Kinetics-format set with a zero-byte video and one deleted after the dataset
    was built: metrics.jsonl
    gets the decode counts by reason at each epoch (the DataStats hook)."""
    from mutualnet_video.data import make_synthetic_kinetics

    root = tmp_path / "data"
    make_synthetic_kinetics(root, num_classes=2, train_per_class=4, val_per_class=1, frames=8, size=(32, 32),
                            fps=8, seed=0)
    (root / "empty.mp4").write_bytes(b"")
    first = (root / "train.csv").read_text().split()[0]
    (root / "deleted.mp4").write_bytes((root / first).read_bytes())
    with open(root / "train.csv", "a") as f:
        f.write("empty.mp4 0\ndeleted.mp4 1\n")
    node = {"_target_": "mutualnet_video.data.kinetics_dataset", "data_path": str(root / "train.csv"),
            "split": "train", "decoder": "pyav", "max_failed_fraction": 0.5}
    cfg = _cfg(tmp_path / "out", model={"model_num_class": 2},
               data={"train": node, "val": None, "batch_size": 2},
               optim={"max_iters": 6, "warmup_iters": 1}, train={"log_period": 1})
    trainer = _trainer(cfg)
    (root / "deleted.mp4").unlink()  # after the dataset was built
    with caplog.at_level("INFO", logger="mutualnet_video.engine.hooks"):
        trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    data = [r for r in rows if "data/decoded" in r]
    assert [(r["iteration"], r["epoch"]) for r in data] == [(5, 1), (6, 1)]  # 8 decodable videos: 4 iterations
    assert all(r["data/failed"] == 2 and r["data/failed/missing"] == 1 and r["data/failed/empty_file"] == 1
               for r in data)
    assert data[0]["data/decoded"] >= 8 and data[1]["data/decoded"] == 12  # 6 iterations of 2 clips
    assert "data after epoch 0: 10 clips decoded, 2 of 10 videos failed (missing 1, empty_file 1)" in caplog.text


def test_train_compile_runs_the_compiled_forward_and_saves_the_plain_module(tmp_path, monkeypatch):
    """train.compile: true: the iterations run the compiled forward (compile_slimmable, with a
    counting eager backend here to stay fast), the checkpoint holds the uncompiled module's keys
    (no ``_orig_mod.``) and loads strictly into a fresh model, and calibration / evaluation run."""
    from torch._dynamo.testing import CompileCounter

    from mutualnet_video.engine import compile_slimmable
    from mutualnet_video.engine import trainer as trainer_module
    from mutualnet_video.testing import create_toy_slimnet

    torch._dynamo.reset()  # no cache entry of another test (same code, another backend)
    counter = CompileCounter()
    monkeypatch.setattr(trainer_module, "compile_slimmable", lambda model: compile_slimmable(model, backend=counter))
    cfg = _cfg(tmp_path, optim={"max_iters": 2, "warmup_iters": 1}, train={"compile": True, "checkpoint_period": 2})
    assert _cfg(tmp_path)["train"]["compile"] is False
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        trainer = _trainer(cfg)
        assert trainer.train_model is not trainer.model and trainer.train_model._orig_mod is trainer.model
        trainer.train()
        assert counter.frame_count >= 2  # the full configuration and at least one sub-network
        saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
        assert saved.keys() == trainer.model.state_dict().keys() and not any("_orig_mod" in k for k in saved)
        fresh = create_toy_slimnet(channels=8, num_subnets=3)
        fresh.load_state_dict(saved, strict=True)
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key
        rows = final_evaluation(trainer)
    assert len(rows) == 3 and all(r["calibrated"] for r in rows)


def test_rank_dump_writes_the_starting_and_final_weights_and_the_samples(tmp_path, monkeypatch):
    from mutualnet_video.engine.hooks import RANK_DUMP_ENV, RankDump

    monkeypatch.setenv(RANK_DUMP_ENV, str(tmp_path / "dump"))
    trainer = _trainer(_cfg(tmp_path / "out", optim={"max_iters": 3}))
    assert any(isinstance(h, RankDump) for h in trainer.hooks)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    dump = torch.load(tmp_path / "dump" / "rank0.pt", weights_only=True)
    assert (dump["rank"], dump["world_size"], dump["iteration"]) == (0, 1, 3)
    assert all(torch.equal(dump["initial_model"][k], v) for k, v in start.items())
    final = trainer.model.state_dict()
    assert all(torch.equal(dump["model"][k], v) for k, v in final.items())
    assert any(not torch.equal(start[k], final[k]) for k in start)
    # 5 videos, batches of 2 (drop_last): 2 batches per epoch, so 3 iterations = epoch 0 and 1 batch of epoch 1
    assert [len(dump["indices"][e]) for e in sorted(dump["indices"])] == [4, 2]


def test_an_unwritable_rank_dump_folder_fails_before_the_first_iteration(tmp_path, monkeypatch):
    from mutualnet_video.engine import ConfigError
    from mutualnet_video.engine.hooks import RANK_DUMP_ENV

    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(RANK_DUMP_ENV, str(tmp_path / "a_file" / "dump"))  # unwritable even as root
    trainer = _trainer(_cfg(tmp_path / "out"))
    with pytest.raises(ConfigError, match=rf"^{RANK_DUMP_ENV}: .*a_file/dump: not writable"):
        trainer.train()
    assert trainer.iteration == 0 and not (tmp_path / "out" / "model_final.pth").exists()
