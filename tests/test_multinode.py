"""Two "nodes" on one machine: two torchrun agents on localhost joined by a c10d rendezvous,
one process each (gloo), running ``tools/train_net.py``.

Each rank writes its starting and final weights and the videos of its batches per epoch
(``MUTUALNET_VIDEO_RANK_DUMP``, :class:`~mutualnet_video.engine.hooks.RankDump`); the test
checks torchrun's multi-node environment as the ranks saw it, that the ranks end with
identical weights (every tensor, BN statistics included: ``train.sync_bn``) which training
changed, and that in every epoch the two shards are disjoint and cover the training set.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "instant" / "slow_synthetic.yaml"
#: 16 training videos: 8 per rank, 2 batches of 4 per epoch; 4 iterations = 2 epochs.
DATASET = {"num_classes": 4, "train_per_class": 4, "val_per_class": 1}
NUM_TRAIN = DATASET["num_classes"] * DATASET["train_per_class"]
ITERS = 4
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(output_dir: Path, data_root: str) -> list[str]:
    return [
        f"output_dir={output_dir}", "data.synthetic=null",
        f"data.train.data_path={data_root}", f"data.val.data_path={data_root}",
        f"model.model_num_class={DATASET['num_classes']}", "data.num_workers=0", "data.batch_size=4",
        f"optim.max_iters={ITERS}", "optim.warmup_iters=1", "train.checkpoint_period=100", "train.eval_period=0",
        "train.log_period=1", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
        "train.cpu_threads=1", "train.sync_bn=true", "eval.calib_batches=1", "eval.configs=[w1000_f8_c32]",
    ]


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL an agent's session: the agent and the rank it started."""
    with_group = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if with_group:
        proc.wait(timeout=10)


def _run_two_agents(tmp_path: Path, data_root: str) -> tuple[list[int], list[str]]:
    """Both agents started at once; their exit codes and logs."""
    endpoint, run_id = f"localhost:{_free_port()}", f"mn-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MUTUALNET_VIDEO_RANK_DUMP": str(tmp_path / "dump"), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    procs, logs = [], []
    for node in range(2):
        log = open(tmp_path / f"node{node}.log", "w+")
        logs.append(log)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-id", run_id, "--max-restarts", "0",
               str(REPO / "tools" / "train_net.py"), "--config", str(CONFIG), *_overrides(tmp_path / "out", data_root)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        codes = [p.poll() if p.poll() is not None else -9 for p in procs]
    finally:
        for p in procs:
            _kill(p)
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    return codes, texts


class _Clips(torch.utils.data.IterableDataset):
    """Iterable: batches of ``{"video_index", ...}`` dicts, like ``VideoDataset``'s."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self):
        return iter({"video": torch.zeros(1), "label": 0, "video_index": i} for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def test_batch_stream_records_the_indices_of_each_epoch():
    from mutualnet_video.engine.stream import BatchStream

    data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.zeros(10, dtype=torch.long))
    kwargs = dict(batch_size=2, num_workers=0, drop_last=True, seed=3, world_size=2, pin_memory=False)
    recorded = []
    for rank in range(2):
        stream = BatchStream(data, rank=rank, **kwargs)
        shards = []  # the epochs whose permutation was drawn: once per epoch, not per recorded batch
        shard = stream._shard
        stream._shard = lambda epoch, shards=shards, shard=shard: shards.append(epoch) or shard(epoch)
        stream.next()  # before recording: not recorded
        indices = stream.record_indices()
        seen = [stream.next()[0].long().tolist() for _ in range(5)]  # sample i holds the value i
        # the rest of epoch 0 (2 full batches of the 5 samples of a rank: one dropped), epochs 1 and 2
        assert indices == {0: seen[0], 1: seen[1] + seen[2], 2: seen[3] + seen[4]}
        assert shards == [0, 1, 2]
        recorded.append(indices)
    assert not set(recorded[0][1]) & set(recorded[1][1]) and len(set(recorded[0][1]) | set(recorded[1][1])) == 8
    assert BatchStream(data, rank=0, **kwargs).indices is None  # off by default

    stream = BatchStream(_Clips([7, 3, 5, 1]), rank=0, **{**kwargs, "world_size": 1})
    indices = stream.record_indices()
    assert [stream.next()["video_index"].tolist() for _ in range(3)] == [[7, 3], [5, 1], [7, 3]]
    assert indices == {0: [7, 3, 5, 1], 1: [7, 3]}


@pytest.mark.slow
def test_two_torchrun_agents_c10d_gloo_identical_weights_and_disjoint_covering_shards(tmp_path):
    from mutualnet_video.data import make_synthetic_kinetics

    data_root = make_synthetic_kinetics(tmp_path / "data", **DATASET)["root"]
    codes, logs = _run_two_agents(tmp_path, data_root)
    assert codes == [0, 0], "\n\n".join(f"--- node {i} (exit {c}) ---\n{log[-4000:]}"
                                        for i, (c, log) in enumerate(zip(codes, logs)))

    written = sorted(f.name for f in (tmp_path / "dump").glob("rank*.pt"))
    assert written == ["rank0.pt", "rank1.pt"], f"the ranks wrote {written}: not one global rank each"
    dumps = [torch.load(tmp_path / "dump" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # torchrun's multi-node environment, as each rank saw it: the global rank comes from RANK
    # (LOCAL_RANK is 0 on both "nodes"), the node from GROUP_RANK (assigned by the rendezvous).
    for rank, dump in enumerate(dumps):
        env = dump["env"]
        assert (dump["rank"], dump["world_size"], dump["iteration"]) == (rank, 2, ITERS)
        assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (str(rank), "2",
                                                                                                "0", "1")
    assert {d["env"]["GROUP_RANK"] for d in dumps} == {"0", "1"}

    # identical weights, tensor by tensor, and not the initial ones
    states = [d["model"] for d in dumps]
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    initial = dumps[0]["initial_model"]  # the weights when rank 0's loop started (RankDump.before_train)
    assert initial.keys() == states[0].keys()
    for key, value in initial.items():
        assert torch.equal(value, dumps[1]["initial_model"][key]), key  # DDP started both ranks alike
    params = [k for k, v in initial.items() if v.is_floating_point() and "running" not in k]
    changed = [k for k in params if not torch.equal(initial[k], states[0][k])]
    assert len(changed) > len(params) // 2, f"only {len(changed)} of {len(params)} tensors changed in training"
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(final[k], states[0][k]) for k in states[0])

    # the shards: per epoch disjoint, together the whole training set, reshuffled between epochs
    indices = [d["indices"] for d in dumps]
    assert sorted(indices[0]) == sorted(indices[1]) == [0, 1]
    for epoch in (0, 1):
        a, b = indices[0][epoch], indices[1][epoch]
        assert len(a) == len(set(a)) == len(b) == len(set(b)) == NUM_TRAIN // 2, (epoch, a, b)
        assert not set(a) & set(b), (epoch, sorted(set(a) & set(b)))
        assert set(a) | set(b) == set(range(NUM_TRAIN)), epoch
    assert indices[0][0] != indices[0][1]
