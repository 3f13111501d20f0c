"""benchmarks/trainer_throughput.py runs end to end at tiny sizes and returns sane numbers."""

import importlib.util
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("_bench_trainer_throughput",
                                                  ROOT / "benchmarks" / "trainer_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_throughput_tiny(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:  # 8 videos of 8 frames, batch 2, one DataLoader worker; 1 warm-up + 2 rounds of 1 + 2 iterations
        result = _benchmark().main([
            "--root", str(tmp_path / "data"), "--train-per-class", "1", "--rounds", "2", "--iters", "2",
            "--warmup", "1", "--settle", "1", "--flops-iters", "1", "data.batch_size=2", "data.num_workers=1",
            "data.synthetic.val_per_class=0", "data.synthetic.frames=8",
        ])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for key in ("mutual_clips_per_s", "plain_clips_per_s", "ratio", "mutual_s_per_iter", "plain_s_per_iter",
                "sandwich_flops_ratio"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    for key in ("mutual_wait", "plain_wait"):
        assert 0.0 <= result[key] <= 1.0, (key, result[key])
    # a sandwich of 3 costs more than the full configuration alone, less than 3 of it
    assert 1.0 < result["sandwich_flops_ratio"] < 3.0
    assert len(result["rounds"]["mutual"]) == len(result["rounds"]["plain"]) == 2
    assert result["num_workers"] == 1 and result["num_videos"] == 8 and result["batch_size"] == 2
    assert "ratio mutual/plain clips/s" in out and "machine:" in out and "torch threads 1" in out
