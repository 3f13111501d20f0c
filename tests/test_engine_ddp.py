"""Two-process DDP (gloo, CPU) training through the Trainer: ranks end with identical weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import mutualnet_video  # noqa: F401
from mutualnet_video.engine.config import default_config

TOY = "mutualnet_video.testing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(out: str, sync_bn: bool = False, compile: bool = False) -> dict:
    return default_config(
        model={"_target_": f"{TOY}.create_toy_slimnet", "channels": 8, "num_subnets": 3},
        data={"train": {"_target_": f"{TOY}.toy_clip_dataset", "num_videos": 8},
              "val": {"_target_": f"{TOY}.toy_clip_dataset", "split": "val", "num_videos": 6},
              "batch_size": 2, "num_workers": 0},
        optim={"lr": 0.1, "max_iters": 3, "warmup_iters": 1},
        train={"checkpoint_period": 2, "progress": False, "tensorboard": False, "device": "cpu", "sync_bn": sync_bn,
               "compile": compile},
        output_dir=out,
    )


def _worker(rank: int, world_size: int, port: int, out: str, sync_bn: bool, compile: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from mutualnet_video.engine import Trainer, compile_slimmable, launch
    from mutualnet_video.engine import trainer as trainer_module

    counter = None
    if compile:  # dynamo with its eager backend (no inductor build: seconds, not minutes)
        from torch._dynamo.testing import CompileCounter

        counter = CompileCounter()
        trainer_module.compile_slimmable = lambda model: compile_slimmable(model, backend=counter)
    cfg = _cfg(out, sync_bn, compile)
    with launch(cfg):
        trainer = Trainer(cfg)
        ddp = trainer.train_model._orig_mod if compile else trainer.train_model
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and ddp.module is trainer.model
        initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        metrics = trainer.train()
        shard = trainer.stream._shard(0)
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        final = trainer.final_evaluation()  # calibration + evaluation on each rank's shard, hits summed
        torch.save({"state": state, "initial": initial, "metrics": metrics, "shard": shard, "final": final,
                    "graphs": counter.frame_count if counter else 0}, os.path.join(out, f"rank{rank}.pt"))
    assert not torch.distributed.is_initialized()  # launch left the group it joined


@pytest.mark.slow
@pytest.mark.parametrize("sync_bn", [False, True])
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path, sync_bn):
    out = str(tmp_path)
    mp.start_processes(_worker, args=(2, _free_port(), out, sync_bn), nprocs=2, join=True, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert set(r0["shard"]).isdisjoint(r1["shard"]) and len(r0["shard"]) == len(r1["shard"]) == 4
    for key, value in r0["state"].items():
        if not sync_bn and (key.endswith("running_mean") or key.endswith("running_var")):
            continue  # BN buffers: each rank's own batch statistics (DDP broadcasts them at the next forward)
        assert torch.equal(value, r1["state"][key]), key
    assert not torch.equal(r0["state"]["proj.weight"], r0["initial"]["proj.weight"])
    assert r0["metrics"] == r1["metrics"] and r0["metrics"]["clips"] == 6  # validation all-reduced over ranks
    assert r0["final"] == r1["final"] and [r["videos"] for r in r0["final"]] == [6, 6, 6]
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 3 and torch.equal(saved["model"]["proj.weight"], r0["state"]["proj.weight"])


@pytest.mark.slow
def test_two_process_gloo_training_compiled_equals_eager(tmp_path):
    """train.compile under DDP: the compiled DDP wrapper trains the ranks to the weights the
    uncompiled run reaches (dynamo with its eager backend: the same operations, regrouped)."""
    runs = {}
    for compile in (False, True):
        out = tmp_path / str(compile)
        out.mkdir()
        mp.start_processes(_worker, args=(2, _free_port(), str(out), False, compile), nprocs=2, join=True,
                           start_method="spawn")
        runs[compile] = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    eager, compiled = runs[False], runs[True]
    assert compiled[0]["graphs"] >= 2 and eager[0]["graphs"] == 0  # the compiled forward ran, per configuration
    for key, value in compiled[0]["state"].items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            continue  # each rank's own batch statistics
        assert torch.equal(value, compiled[1]["state"][key]), key
        torch.testing.assert_close(value, eager[0]["state"][key], rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(compiled[0]["state"]["proj.weight"], compiled[0]["initial"]["proj.weight"])


def _sync_bn_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from mutualnet_video.core import SlimBatchNorm3d, SlimSyncBatchNorm3d, convert_slim_sync_batchnorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        bn = SlimBatchNorm3d(16, momentum=None)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        bn = convert_slim_sync_batchnorm(bn)
        assert type(bn) is SlimSyncBatchNorm3d
        full = torch.randn(4, 8, 2, 3, 3) * 2 + 1  # 8 of 16 channels active (a narrow width)
        x = full[rank * 2 : rank * 2 + 2].clone().requires_grad_(True)
        y = bn(x)
        (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
        torch.save({"y": y.detach(), "gx": x.grad, "gw": bn.weight.grad, "rm": bn.running_mean,
                    "rv": bn.running_var}, f"{out}/bn{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_slim_sync_batchnorm_equals_one_process_on_the_whole_batch(tmp_path):
    from mutualnet_video.core import SlimBatchNorm3d

    mp.start_processes(_sync_bn_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r = [torch.load(tmp_path / f"bn{i}.pt", weights_only=True) for i in range(2)]
    torch.manual_seed(0)
    bn = SlimBatchNorm3d(16, momentum=None)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(4, 8, 2, 3, 3) * 2 + 1).requires_grad_(True)
    y = bn(x)
    weights = torch.cat([torch.arange(y[:2].numel()).view_as(y[:2]).sin()] * 2)
    (y * weights).sum().backward()
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["gx"], r[1]["gx"]]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r[0]["gw"] + r[1]["gw"], bn.weight.grad, rtol=1e-4, atol=1e-5)
    for i in range(2):
        torch.testing.assert_close(r[i]["rm"], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r[i]["rv"], bn.running_var, rtol=1e-5, atol=1e-6)
