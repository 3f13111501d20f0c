"""Two-process DDP (gloo, CPU) training through the Trainer: ranks end with identical weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import mutualnet_video  # noqa: F401
from mutualnet_video.engine.config import default_config

TOY = "mutualnet_video.engine.toy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(out: str) -> dict:
    return default_config(
        model={"_target_": f"{TOY}.create_toy_slimnet", "channels": 8, "num_subnets": 3},
        data={"train": {"_target_": f"{TOY}.toy_clip_dataset", "num_videos": 8},
              "val": {"_target_": f"{TOY}.toy_clip_dataset", "split": "val", "num_videos": 6},
              "batch_size": 2, "num_workers": 0},
        optim={"lr": 0.1, "max_iters": 3, "warmup_iters": 1},
        train={"checkpoint_period": 2, "progress": False, "tensorboard": False, "device": "cpu"},
        output_dir=out,
    )


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from mutualnet_video.engine import Trainer

    trainer = Trainer(_cfg(out))
    try:
        assert isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
        initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        metrics = trainer.train()
        shard = trainer.stream._shard(0)
        torch.save({"state": trainer.model.state_dict(), "initial": initial, "metrics": metrics, "shard": shard},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        trainer.close()


@pytest.mark.slow
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    out = str(tmp_path)
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert set(r0["shard"]).isdisjoint(r1["shard"]) and len(r0["shard"]) == len(r1["shard"]) == 4
    for key, value in r0["state"].items():
        if key.endswith("running_mean") or key.endswith("running_var") or key.endswith("num_batches_tracked"):
            continue  # BN buffers: each rank's own batch statistics (DDP broadcasts them at the next forward)
        assert torch.equal(value, r1["state"][key]), key
    assert not torch.equal(r0["state"]["proj.weight"], r0["initial"]["proj.weight"])
    assert r0["metrics"] == r1["metrics"] and r0["metrics"]["clips"] == 6  # validation all-reduced over ranks
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 3 and torch.equal(saved["model"]["proj.weight"], r0["state"]["proj.weight"])
