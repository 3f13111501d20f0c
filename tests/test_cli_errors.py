"""Every CLI answers bad input with one line ``<tool>: <file or key>: <problem>`` and status 2.

A table of bad inputs across the tools, run in this process: the exit status, exactly one line
on stderr, no traceback, and the words that name the problem. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SLOW_CFG = str(ROOT / "configs" / "instant" / "slow_synthetic.yaml")
PROJECT_CFG = str(ROOT / "projects" / "image_classification" / "configs" / "mobilenet_v1_shapes.yaml")


def _tool(name: str):
    path = ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_cli_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _project(argv):
    from mutualnet_video.tasks.projects import run_project

    return run_project(argv, description="image classification project")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Junk, truncated and foreign checkpoints, a broken YAML, a table that is not JSON."""
    root = tmp_path_factory.mktemp("bad")
    (root / "junk.pth").write_text("not a checkpoint")
    (root / "empty.pth").write_bytes(b"")
    torch.save({"model": {"w": torch.zeros(3)}}, root / "foreign.pth")
    good = root / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    (root / "truncated.pth").write_bytes(good.read_bytes()[:300])
    (root / "broken.yaml").write_text("model: [unclosed\n")
    (root / "table.json").write_text("{not json")
    (root / "a_file").write_text("x")
    (root / "only_corrupt").mkdir()
    (root / "only_corrupt" / "model_0000002.pth").write_text("junk")
    (root / "only_corrupt" / "last_checkpoint").write_text("model_0000002.pth")
    (root / "toy.yaml").write_text(
        "model: {_target_: mutualnet_video.testing.create_toy_slimnet, channels: 8}\n"
        "data:\n  train: {_target_: mutualnet_video.testing.toy_clip_dataset, num_videos: 4}\n"
        "  batch_size: 2\n  num_workers: 0\n"
        "optim: {max_iters: 2}\ntrain: {progress: false, tensorboard: false}\n")
    return root


def _common(files):
    return ["data.synthetic=null", f"data.train.data_path={files}", f"data.val.data_path={files}",
            f"output_dir={files / 'out'}"]


# (tool, argv builder, words the one line must hold)
CASES = [
    ("train_net", lambda f: ["--config", str(f / "missing.yaml")], ("config file not found",)),
    ("train_net", lambda f: ["--config", str(f / "broken.yaml")], ("broken.yaml: invalid YAML",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, "optim.lrr=1"], ("optim.lrr: unknown key",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, "optim.lr=-1"], ("optim.lr: must be > 0, got -1",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, "optim.max_iters=abc"], ("optim.max_iters: must be int or null",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, "optim.lr"], ("override 'optim.lr': expected key.sub=value",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, "--bogus"], ("unrecognized arguments: --bogus",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, "model.bogus_kwarg=1"], ("model.bogus_kwarg: unknown keyword",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, *_common(f), "model.width_range=[0.2,1.5]"],
     ("model.width_range: width multiplier must be in (0, 1], got 1.5",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, *_common(f), "model.frames=[0]"],
     ("model.frames: must hold positive ints, got 0",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, *_common(f), "data.train.data_path=/nonexistent/kinetics"],
     ("data.train: video list /nonexistent/kinetics not found",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, *_common(f), "data.train.decoder=bogus"],
     ("data.train: unknown video decoder 'bogus'",)),
    ("train_net", lambda f: ["--config", SLOW_CFG, *_common(f), f"output_dir={f / 'a_file' / 'out'}"],
     ("output_dir: ", "a_file/out: not writable")),
    ("train_net", lambda f: ["--config", str(f / "toy.yaml"), f"output_dir={f / 'only_corrupt'}", "--resume"],
     ("train.resume: no loadable checkpoint in", "model_0000002.pth")),
    ("test_net", lambda f: ["--config", SLOW_CFG, "--checkpoint", str(f / "junk.pth")],
     ("junk.pth: not a readable checkpoint",)),
    ("test_net", lambda f: ["--config", SLOW_CFG, "--checkpoint", str(f / "truncated.pth")],
     ("truncated.pth: not a readable checkpoint",)),
    ("test_net", lambda f: ["--config", SLOW_CFG, "--checkpoint", str(f / "missing.pth")],
     ("checkpoint not found", "missing.pth")),
    ("test_net", lambda f: ["--config", SLOW_CFG, "--checkpoint", str(f / "foreign.pth")],
     ("foreign.pth does not match the model strictly",)),
    ("test_net", lambda f: ["--config", SLOW_CFG, "--checkpoint", str(f / "good.pth"), "--views", "3y1"], ("3y1",)),
    ("export_net", lambda f: ["--config", SLOW_CFG, "--checkpoint", str(f / "empty.pth"), "--width", "1",
                              "--frames", "8", "--crop", "32", "--format", "onnx", "--output", str(f / "x.onnx")],
     ("empty.pth: not a readable checkpoint",)),
    ("export_net", lambda f: ["--config", SLOW_CFG, "--checkpoint", str(f / "good.pth"), "--width", "1",
                              "--crop", "32", "--format", "tflite", "--output", str(f / "x")],
     ("argument --format: invalid choice: 'tflite'",)),
    ("query_budget", lambda f: [str(f / "table.json"), "--max-gflops", "1"], ("table.json: not valid JSON",)),
    ("query_budget", lambda f: [str(f / "missing.json"), "--max-gflops", "1"], ("missing.json",)),
    ("query_budget", lambda f: [str(f / "table.json"), "--max-gflops", "-1"], ("--max-gflops: must be > 0, got -1",)),
    ("analyze_model", lambda f: ["--model", "mutual_x3d_zz"], ("argument --model: invalid choice: 'mutual_x3d_zz'",)),
    ("analyze_model", lambda f: ["--model", "mutual_x3d_xs", "--widths", "1.5"],
     ("--widths/--frames/--crops: width multiplier must be in (0, 1], got 1.5",)),
    ("make_synthetic_kinetics", lambda f: ["--root", str(f / "a_file" / "data")], ("a_file",)),
    ("make_synthetic_kinetics", lambda f: ["--root", str(f / "syn"), "--num-classes", "0"], ("num_classes",)),
    ("compare_methods", lambda f: ["--config", SLOW_CFG, "--output", str(f / "cmp"), "--seeds", "0"],
     ("--seeds: must be >= 1, got 0",)),
    ("compare_methods", lambda f: ["--config", SLOW_CFG, "--output", str(f / "cmp"), "--methods", "mutual,bogus"],
     ("methods: unknown 'bogus'",)),
    ("versions", lambda f: ["--bogus"], ("unrecognized arguments: --bogus",)),
    ("project", lambda f: ["--config", PROJECT_CFG, "solver.iterations=2"], ("solver: removed; use optim",)),
    ("project", lambda f: ["--config", PROJECT_CFG, "optim.lr=-1"], ("optim.lr: must be > 0, got -1",)),
]


def _run(tool: str, argv: list[str]) -> int:
    main = _project if tool == "project" else _tool(tool)
    try:
        result = main(argv)
    except SystemExit as exit_info:
        return exit_info.code
    return result if isinstance(result, int) else 0


@pytest.mark.parametrize("tool, argv, words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_status_2(tool, argv, words, files, capsys):
    assert _run(tool, argv(files)) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = "train_net" if tool == "project" else tool
    assert lines[0].startswith(f"{prefix}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_there_are_at_least_25_bad_inputs_over_every_cli():
    assert len(CASES) >= 25
    assert {c[0] for c in CASES} == {"train_net", "test_net", "export_net", "query_budget", "analyze_model",
                                     "make_synthetic_kinetics", "compare_methods", "versions", "project"}


def test_debug_shows_the_traceback(files):
    from mutualnet_video.engine.config import ConfigError

    with pytest.raises(ConfigError, match="optim.lr: must be > 0"):
        _tool("train_net")(["--config", SLOW_CFG, "optim.lr=-1", "--debug"])


def test_a_bug_is_not_hidden_as_bad_input(monkeypatch, files):
    """An exception that is not bad input (here a RuntimeError from inside the loader) keeps its traceback."""
    import mutualnet_video.engine.config as config

    def broken(*args, **kwargs):
        raise RuntimeError("internal bug")

    monkeypatch.setattr(config, "_read_tree", broken)
    with pytest.raises(RuntimeError, match="internal bug"):
        _tool("train_net")(["--config", SLOW_CFG])

