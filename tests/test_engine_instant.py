"""The instant configs end to end (synthetic data -> tiny slimmable network -> calibrated table).

Needs the models and data packages and decodes video: marked slow. The demo test runs the
README's main command as it is (minutes) and checks the thresholds the README promises.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_net():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        return importlib.import_module("train_net")
    finally:
        sys.path.pop(0)


def _run(config: str, overrides: list[str]) -> None:
    import torch

    threads = torch.get_num_threads()  # the configs set train.cpu_threads: 1
    try:
        assert _train_net().main(["--config", os.path.join(ROOT, "configs", "instant", config), *overrides]) == 0
    finally:
        torch.set_num_threads(threads)


def _paths(tmp_path, data: str) -> list[str]:
    return [f"data.synthetic.root={data}", f"data.train.data_path={data}", f"data.val.data_path={data}",
            f"output_dir={tmp_path / 'out'}", "train.progress=false", "train.tensorboard=false"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["x3d_synthetic.yaml", "slow_synthetic.yaml"])
def test_instant_config_trains(tmp_path, capsys, config):
    data = tmp_path / "synthetic"
    overrides = _paths(tmp_path, data) + [
        "data.synthetic.train_per_class=4", "data.synthetic.val_per_class=2", "data.batch_size=4",
        "optim.max_iters=4", "optim.warmup_iters=1", "train.checkpoint_period=2", "train.eval_period=0",
        "eval.calib_batches=1", "eval.max_batches=2",
    ]
    _run(config, overrides)
    assert (tmp_path / "out" / "model_final.pth").exists()
    rows = json.loads((tmp_path / "out" / "final_evaluation.json").read_text())["rows"]
    out = capsys.readouterr().out
    printed = {tuple(line.split()[:3]) for line in out.splitlines()}  # width frames crop of each table row
    assert rows and "top1" in out
    assert all((f"{r['width']:.3g}", str(r["frames"]), str(r["crop"])) in printed for r in rows), out


@pytest.mark.slow
def test_demo_reaches_the_readme_thresholds(tmp_path):
    """The README's main command, unchanged but for its paths: >= 4 configurations over >= 5x
    GFLOPs, the full one >= 90% top-1, the smallest >= 75%."""
    _run("slow_synthetic.yaml", _paths(tmp_path, tmp_path / "synthetic8"))
    rows = json.loads((tmp_path / "out" / "final_evaluation.json").read_text())["rows"]
    assert len(rows) >= 4 and all(r["calibrated"] for r in rows)
    by_cost = sorted(rows, key=lambda r: r["gflops"])
    assert by_cost[-1]["gflops"] >= 5 * by_cost[0]["gflops"]
    assert by_cost[-1]["config"] == "w1000_f8_c32" and by_cost[-1]["top1"] >= 90.0, rows
    assert by_cost[0]["top1"] >= 75.0, rows
