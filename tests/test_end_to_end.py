"""A checkpoint of the training tool evaluates end to end on an embedded (synthetic) dataset.

train_net (tiny X3D, a few iterations) -> test_net --calibrate (budget table, plots, calibrated
checkpoint) -> query_budget -> export_net (TorchScript and ONNX equal to the slimmable model).
One module-scoped run is shared by the tests below.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from mutualnet_video.core import SubnetConfig, use_config
from mutualnet_video.engine.config import load_config
from mutualnet_video.engine.inference import load_model
from mutualnet_video.evaluation import load_budgets
from mutualnet_video.export import example_inputs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "instant" / "x3d_synthetic.yaml"
# the model is pinned here (not read from the instant config, which may change)
MODEL = ["model.input_clip_length=4", "model.input_crop_size=32", "model.frames=[4,2]", "model.crops=[32,24]",
         "model.depth_factor=0.25"]
WIDTHS, FRAMES, CROP = (1.0, 0.5), (4, 2), 32
VIEWS = ("1x1", "2x1")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tool, args):
    """``tools/<tool>.py main(args)`` on one thread (module fixtures run outside conftest's
    one-thread fixture; train_net would leave train.cpu_threads set)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _tool(tool).main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train 3 iterations, then test_net --calibrate on 2 widths x 2 frames x views 1x1, 2x1."""
    tmp = tmp_path_factory.mktemp("e2e")
    data, out = tmp / "synthetic", tmp / "out"
    overrides = [
        f"data.synthetic.root={data}", f"data.train.data_path={data}", f"data.val.data_path={data}",
        "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1", "data.synthetic.frames=16",
        "data.synthetic.size=[32,48]", "data.synthetic.fps=8", "data.batch_size=4",
        *MODEL, "optim.max_iters=3", "optim.warmup_iters=1", "train.checkpoint_period=100",
        "train.eval_period=0", "train.progress=false", "train.tensorboard=false", "eval.calib_batches=2",
        f"output_dir={out}",
    ]
    assert _run("train_net", ["--config", CONFIG, *overrides]) == 0
    ckpt = out / "model_final.pth"
    assert ckpt.is_file() and (out / "config.yaml").is_file()
    args = ["--config", out / "config.yaml", "--checkpoint", ckpt, "--widths", *WIDTHS, "--frames", *FRAMES,
            "--crops", CROP, "--views", ",".join(VIEWS), "--output", out / "budgets", "--no-progress",
            "eval.clip_duration=0.8"]
    return {"tmp": tmp, "out": out, "ckpt": ckpt, "args": args, "config": out / "config.yaml"}


@pytest.fixture(scope="module")
def calibrated(run):
    rc = _run("test_net", [*run["args"], "--calibrate"])
    assert rc == 0
    return run["out"] / "model_final_calibrated.pth"


def test_training_checkpoint_is_a_trainer_checkpoint_with_final_table(run):
    payload = torch.load(run["ckpt"], weights_only=True)
    assert {"model", "optimizer", "scheduler", "iteration"} <= set(payload) and payload["iteration"] == 3
    final = [json.loads(line) for line in open(run["out"] / "metrics.jsonl") if '"final/' in line]
    tags = {k.split("/")[1] for r in final for k in r if k.startswith("final/")}
    assert tags == {"w1000_f4_c32", "w0750_f4_c32", "w0500_f2_c24"}  # full, middle, smallest


def test_test_net_writes_the_budget_table(run, calibrated, capsys):
    budgets = run["out"] / "budgets"
    assert {p.name for p in budgets.iterdir()} >= {"budgets.json", "budgets.csv", "budgets.txt", "top1_vs_gflops.png"}
    assert (budgets / "top1_vs_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = load_budgets(budgets / "budgets.json")
    assert load_budgets(budgets / "budgets.csv") == records
    grid = [(w, f, CROP, v) for w in WIDTHS for f in FRAMES for v in VIEWS]
    assert [(r.width, r.frames, r.crop, r.views) for r in records] == grid  # one record per config x views
    for r in records:
        assert r.num_videos == 4  # val: 4 classes x 1 video
        assert 0 <= r.top1 <= r.top5 <= 100 and r.params > 0
        assert r.gflops_per_video == pytest.approx(r.gflops_per_view * (2 if r.views == "2x1" else 1))
    cost = {(r.width, r.frames): r.gflops_per_view for r in records}
    assert cost[1.0, 4] > cost[0.5, 4] > cost[0.5, 2] and cost[1.0, 4] > cost[1.0, 2] > cost[0.5, 2]
    assert any(r.pareto for r in records)
    # the calibrated checkpoint holds per-configuration BN statistics for every configuration
    state = torch.load(calibrated, weights_only=True)["model"]
    for w in WIDTHS:
        for f in FRAMES:
            assert any(f".config_stats.{SubnetConfig(w, f, CROP).tag}." in k for k in state)


def test_checkpoint_formats_and_errors(run, calibrated, capsys):
    """The calibrated checkpoint, as Trainer / plain / zoo checkpoint, gives the same table
    without --calibrate; an uncalibrated one, a config outside the space and a mismatched
    checkpoint fail naming the problem."""
    reference = load_budgets(run["out"] / "budgets" / "budgets.json")
    state = torch.load(calibrated, weights_only=True)["model"]
    torch.save(state, run["tmp"] / "plain.pth")
    torch.save({"model_state": state}, run["tmp"] / "zoo.pth")
    args = list(run["args"])
    for ckpt in (calibrated, run["tmp"] / "plain.pth", run["tmp"] / "zoo.pth"):
        args[args.index("--checkpoint") + 1] = ckpt
        args[args.index("--output") + 1] = run["tmp"] / ckpt.stem
        subset = [] if ckpt == calibrated else ["--widths", "0.5", "--frames", "2"]  # cheaper (same views:
        # a 1x1 spec reads the middle view of the loader's, which depends on the largest spec)
        capsys.readouterr()
        assert _run("test_net", [*args, *subset]) == 0, capsys.readouterr().err
        assert "Pareto front" in capsys.readouterr().out
        got = load_budgets(run["tmp"] / ckpt.stem / "budgets.json")
        expected = reference if not subset else [r for r in reference if (r.width, r.frames) == (0.5, 2)]
        assert [dataclasses.replace(r, pareto=False) for r in got] == [
            dataclasses.replace(r, pareto=False) for r in expected]

    assert _run("test_net", run["args"]) == 2  # model_final.pth has no calibrated statistics
    assert "no calibrated BN statistics" in (err := capsys.readouterr().err) and "--calibrate" in err
    assert _run("test_net", [*run["args"], "--crops", "40"]) == 2
    assert "crop=40" in capsys.readouterr().err
    bad = dict(state)
    renamed = next(k for k in state if k.endswith("proj.weight"))
    bad["head.renamed"] = bad.pop(renamed)
    torch.save(bad, run["tmp"] / "bad.pth")
    args[args.index("--checkpoint") + 1] = run["tmp"] / "bad.pth"
    assert _run("test_net", args) == 2
    err = capsys.readouterr().err
    assert f"missing keys: {renamed}" in err and "unexpected keys: head.renamed" in err


def test_query_budget_and_export(run, calibrated, capsys, tmp_path):
    records = load_budgets(run["out"] / "budgets" / "budgets.json")
    table = run["out"] / "budgets" / "budgets.json"
    budget = sorted(r.gflops_per_video for r in records)[3]
    fits = [r for r in records if r.gflops_per_video <= budget]
    best = max(fits, key=lambda r: (r.top1, -r.gflops_per_video))
    capsys.readouterr()
    assert _run("query_budget", [table, "--max-gflops", budget, "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)
    assert (chosen["top1"], chosen["gflops_per_video"]) == (best.top1, best.gflops_per_video)
    assert chosen["gflops_per_video"] <= budget
    cheapest = min(r.gflops_per_video for r in records)
    assert _run("query_budget", [table, "--max-gflops", cheapest / 2]) == 2
    assert "cheapest" in capsys.readouterr().err

    cfg = SubnetConfig(chosen["width"], chosen["frames"], chosen["crop"])
    model, _, _ = load_model(load_config(str(run["config"])), calibrated)
    x = example_inputs(model, cfg, batch=2, seed=3)
    with torch.no_grad(), use_config(model, cfg):
        expected = model(x)
    for fmt in ("torchscript", "onnx"):
        path = tmp_path / f"chosen.{fmt}"
        assert _run("export_net", ["--config", run["config"], "--checkpoint", calibrated, "--width", cfg.width,
                                   "--frames", cfg.frames, "--crop", cfg.crop, "--format", fmt, "--output", path,
                                   "--batch", 2]) == 0
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                got = torch.jit.load(str(path))(x)
        else:
            ort = pytest.importorskip("onnxruntime")
            session = ort.InferenceSession(str(path))
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert os.path.getsize(tmp_path / "chosen.onnx") > 1000
