"""A quiet console: the CLIs print no third-party deprecation warning, log in one format, and
``--quiet`` keeps only the result.

Two subprocesses (each imports torch and the library) start together in one module fixture: a
tool's ``--help`` (both known warnings are triggered by its imports) and a ``--quiet`` training
run of the toy model; the rest runs in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mutualnet_video.console import KNOWN_WARNINGS, LOG_FORMAT, is_known_warning, quiet_imports

ROOT = Path(__file__).resolve().parents[1]
WARNING_LINE = re.compile(r"(DeprecationWarning|FutureWarning|UserWarning)")
# LOG_FORMAT's lines: "2026-12-02 16:32:07,820 INFO mutualnet_video.data.synthetic: wrote ..."
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def test_quiet_logging_raises_the_root_level_under_foreign_handlers(monkeypatch):
    """An application (or pytest) that set up logging first keeps its handlers; ``quiet`` still
    drops the records below WARNING (the root level is raised, never lowered)."""
    import io
    import logging

    from mutualnet_video.console import setup_logging

    stream = io.StringIO()
    foreign = logging.StreamHandler(stream)
    root_logger = logging.getLogger()
    monkeypatch.setattr(root_logger, "handlers", [foreign])
    monkeypatch.setattr(root_logger, "level", logging.DEBUG)
    setup_logging()
    assert root_logger.handlers == [foreign] and root_logger.level == logging.DEBUG  # not quiet: left alone
    setup_logging(quiet=True)
    assert root_logger.handlers == [foreign] and root_logger.level == logging.WARNING
    logging.getLogger("mutualnet_video.engine.trainer").info("an iteration line")
    logging.getLogger("mutualnet_video.engine.trainer").warning("a warning")
    assert stream.getvalue() == "a warning\n"
    root_logger.setLevel(logging.ERROR)
    setup_logging(quiet=True)
    assert root_logger.level == logging.ERROR


def _toy_config(root: Path) -> Path:
    path = root / "toy.yaml"
    path.write_text(
        "model: {_target_: mutualnet_video.testing.create_toy_slimnet, channels: 8, model_num_class: 2}\n"
        "data:\n"
        "  train: {_target_: mutualnet_video.testing.toy_clip_dataset, num_videos: 4, num_classes: 2}\n"
        "  val: {_target_: mutualnet_video.testing.toy_clip_dataset, num_videos: 4, num_classes: 2}\n"
        "  batch_size: 2\n  num_workers: 0\n"
        "optim: {max_iters: 2}\n"
        "train: {progress: true, tensorboard: false, log_period: 1, checkpoint_period: 2}\n"
        "eval: {calib_batches: 1}\n"
        f"output_dir: {root / 'out'}\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> CompletedProcess-like dict (rc, out, err) of the CLI runs, started in parallel."""
    root = tmp_path_factory.mktemp("quiet")
    toy = _toy_config(root)
    py = sys.executable
    commands = {
        # imports the library (fvcore.nn, pytorchvideo.transforms) before parsing: both known warnings
        "make_help": [py, str(ROOT / "tools" / "make_synthetic_kinetics.py"), "--help"],
        "train_quiet": [py, str(ROOT / "tools" / "train_net.py"), "--config", str(toy), "--quiet"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}
    procs = {name: subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, cmd in commands.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = {"rc": proc.returncode, "out": out, "err": err}
    return results


def _lines(text: str) -> list[str]:
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:FutureWarning")
def test_the_known_warnings_are_real_here():
    """The control: the installed fvcore / pytorchvideo call the deprecated torch.jit APIs at import
    and torch warns on them (nothing filters them globally), so the checks below can fail."""
    import inspect

    import fvcore.nn.focal_loss

    import mutualnet_video.data  # noqa: F401  (pytorchvideo.transforms, after the library's compat alias)

    transforms = sys.modules["pytorchvideo.transforms.transforms"]

    assert "torch.jit.script(" in inspect.getsource(fvcore.nn.focal_loss)
    assert "@torch.jit.script_method" in inspect.getsource(transforms)
    messages = _recorded(lambda: _script_from("fvcore.nn.focal_loss"))
    assert any(m.startswith("`torch.jit.script` is deprecated") for m in messages), messages


@pytest.mark.parametrize("name", ["make_help", "train_quiet"])
def test_a_cli_prints_no_deprecation_warning(runs, name):
    run = runs[name]
    assert run["rc"] == 0, run["err"]
    assert not [line for line in _lines(run["err"]) if WARNING_LINE.search(line)], run["err"]


def test_log_lines_have_one_format(tmp_path, capsys, monkeypatch):
    """train_net (in this process, no progress bar): every stderr line is LOG_FORMAT, the library's
    loggers and fvcore's alike; the result goes to stdout."""
    import logging

    root_logger = logging.getLogger()
    monkeypatch.setattr(root_logger, "handlers", [])  # as in a fresh process (pytest's own handlers aside)
    monkeypatch.setattr(root_logger, "level", root_logger.level)
    toy = _toy_config(tmp_path)
    assert _tool("train_net")(["--config", str(toy), "train.progress=false"]) == 0
    captured = capsys.readouterr()
    lines = _lines(captured.err)
    assert any(" INFO mutualnet_video.engine.trainer: " in line for line in lines), lines
    assert any(" INFO fvcore.common.checkpoint: " in line for line in lines), lines
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert "calibrated BN statistics" in captured.out and "top1" in captured.out


def test_quiet_train_net_prints_only_the_final_table(runs):
    run = runs["train_quiet"]
    assert run["err"] == ""  # no progress bar, no log line
    lines = _lines(run["out"])
    assert lines[0].startswith("calibrated BN statistics of 3 configurations")
    assert "width" in lines[1] and "top1" in lines[1] and set(lines[2]) == {"-"}
    assert len(lines) == 3 + 3  # a row per configuration: full, middle, smallest


def test_quiet_query_budget_prints_only_the_answer(tmp_path, capsys):
    from mutualnet_video.evaluation.budgets import BudgetRecord, save_budgets

    save_budgets([BudgetRecord(width=w, frames=f, crop=c, views="1x1", gflops_per_view=g, gflops_per_video=g,
                               params=1000, top1=t, top5=t + 10) for w, f, c, g, t in
                  [(1.0, 8, 32, 0.5, 80.0), (0.5, 4, 24, 0.1, 60.0)]], tmp_path)
    assert _tool("query_budget")([str(tmp_path / "budgets.json"), "--max-gflops", "0.3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert _lines(captured.out) == [captured.out.strip()]
    assert captured.out.startswith("width=0.5 frames=4 crop=24 views=1x1: 0.1 GFLOPs/video")


def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_quiet_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("argv, words", [
    (["query_budget", "missing.json", "--max-gflops", "1", "--quiet"], ("missing.json",)),
    (["train_net", "--config", str(ROOT / "configs" / "instant" / "slow_synthetic.yaml"), "optim.lr=-1", "--quiet"],
     ("optim.lr: must be > 0, got -1",)),
])
def test_quiet_errors_still_print_their_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _tool(argv[0])(argv[1:]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith(f"{argv[0]}: "), captured
    assert all(w in lines[0] for w in words), lines[0]


# --------------------------------------------------------------------------------------
# the filter itself (in this process)
# --------------------------------------------------------------------------------------
def _plus_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def _script_from(module_name: str):
    """``torch.jit.script`` called from code whose module is ``module_name`` (as fvcore does at import)."""
    exec(compile("torch.jit.script(fn)\n", f"<{module_name}>", "exec"),
         {"__name__": module_name, "torch": torch, "fn": _plus_one})


def _recorded(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_quiet_imports_drops_only_the_known_warnings_of_the_known_callers():
    def known_caller():
        with quiet_imports():
            _script_from("fvcore.nn.focal_loss")

    def user_code():
        with quiet_imports():
            _script_from("my_project.export")

    def other_warning():
        with quiet_imports():
            exec(compile("import warnings\nwarnings.warn('`torch.jit.script` is gone', FutureWarning)\n",
                         "<fvcore.x>", "exec"), {"__name__": "fvcore.x"})

    def outside():
        _script_from("fvcore.nn.focal_loss")

    assert not any("torch.jit.script" in m for m in _recorded(known_caller))
    assert any("`torch.jit.script` is deprecated" in m for m in _recorded(user_code))
    assert _recorded(other_warning) == ["`torch.jit.script` is gone"]  # issued by another module
    assert any("`torch.jit.script` is deprecated" in m for m in _recorded(outside))  # restored on exit


def test_known_warnings_name_their_source():
    for known in KNOWN_WARNINGS:
        assert known.source and known.triggered_by and issubclass(known.category, Warning)
    assert is_known_warning("`torch.jit.script_method` is deprecated. Please switch", FutureWarning,
                            "/x/torch/jit/_script.py", stack_modules=("pytorchvideo.transforms.transforms",))
    assert not is_known_warning("`torch.jit.script_method` is deprecated. Please switch", DeprecationWarning,
                                "/x/torch/jit/_script.py", stack_modules=("pytorchvideo.transforms.transforms",))
    assert LOG_FORMAT.startswith("%(asctime)s %(levelname)s %(name)s")


# --------------------------------------------------------------------------------------
# --quiet over the other CLIs (in this process, tiny inputs)
# --------------------------------------------------------------------------------------
# a tqdm bar ("eval 20 configs x 1 views:  50%|#####     | 1/2 [...]") and the projects' loss lines
PROGRESS_LINE = re.compile(r"\d+%\|")
LOSS_LINE = re.compile(r"^iter \d+ \(")


@pytest.fixture(scope="module")
def quiet_inputs(tmp_path_factory):
    """The toy config and a checkpoint of its model; a 4-video synthetic Kinetics and a config
    that tests the toy model on it (test_net's loader needs Kinetics-style batches)."""
    with quiet_imports():
        from mutualnet_video.data import make_synthetic_kinetics
        from mutualnet_video.testing import create_toy_slimnet

    root = tmp_path_factory.mktemp("quiet_clis")
    toy = _toy_config(root)
    torch.save({"model": create_toy_slimnet(channels=8, model_num_class=2).state_dict()}, root / "toy.pth")
    syn = make_synthetic_kinetics(root / "syn", num_classes=2, train_per_class=1, val_per_class=2, frames=8,
                                  size=(32, 32))["root"]
    kinetics = root / "toy_kinetics.yaml"
    kinetics.write_text(toy.read_text().replace(
        "  val: {_target_: mutualnet_video.testing.toy_clip_dataset, num_videos: 4, num_classes: 2}\n",
        f"  val: {{_target_: mutualnet_video.data.kinetics_dataset, data_path: {syn}, split: val}}\n"))
    return {"root": root, "toy": str(toy), "ckpt": str(root / "toy.pth"), "kinetics": str(kinetics)}


def _json_result(lines):
    return json.loads("\n".join(lines))["num_train"] == 2


def _project_result(rows: int):
    """The final evaluation: one configuration (``PROJECT_ARGV``), its table or score lines."""
    return lambda lines: lines[0].startswith("calibrated BN statistics of 1 configurations") and len(lines) == rows


#: the projects' train_net (``run_project``), cut to one iteration, one configuration, 4 images
PROJECT_ARGV = ["optim.max_iters=1", "model.widths=[1.0]", "model.crops=[48]", "data.train.num_images=4",
                "data.val.num_images=2", "data.batch_size=2", "eval.calib_batches=1"]
PROJECTS = {"image_classification": "mobilenet_v1_shapes.yaml", "detection": "fasterrcnn_mobilenet_v2_shapes.yaml",
            "segmentation": "deeplabv3_mobilenet_v2_shapes.yaml"}

# name -> (argv, given the inputs and a folder of the run's own; a check of the result's lines
# as printed; whether the run without --quiet logs, shows progress or prints loss lines)
QUIET_CLIS = {
    "analyze_model": (lambda i, out: ["--model", "mutual_x3d_xs", "--widths", "1", "--frames", "2", "--crops", "96"],
                      lambda lines: (lines[0].startswith("mutual_x3d_xs: ConfigSpace(") and lines[1].startswith("config")
                                     and len(lines) == 3 and lines[2].startswith("w1000_f2_c96")), False),
    "export_net": (lambda i, out: ["--config", i["toy"], "--checkpoint", i["ckpt"], "--width", "1", "--frames", "4",
                                   "--crop", "32", "--format", "torchscript", "--output", str(out / "toy.pt")],
                   lambda lines: len(lines) == 1 and lines[0].startswith("exported (width=1, frames=4, crop=32)"),
                   False),
    "test_net": (lambda i, out: ["--config", i["kinetics"], "--checkpoint", i["ckpt"], "--calibrate", "--widths", "1",
                                 "--output", str(out)],
                 lambda lines: (lines[0].startswith("calibrated checkpoint: ")
                                and "Pareto front (GFLOPs/video -> top1):" in lines
                                and lines[-1].startswith("budget table and plots in ")), True),
    "make_synthetic_kinetics": (lambda i, out: ["--root", str(out / "syn"), "--num-classes", "2", "--train-per-class",
                                                "1", "--val-per-class", "1", "--frames", "4", "--size", "32", "32"],
                                _json_result, True),
    "compare_methods": (lambda i, out: ["--config", i["toy"], "--output", str(out), "--methods", "mutual,single",
                                        f"output_dir={out / 'runs'}"],
                        lambda lines: lines[0].startswith("top-1 (%)") and lines[-1].startswith("wrote "), True),
    **{name: (lambda i, out, config=config, name=name: ["--config", str(ROOT / "projects" / name / "configs" / config),
                                                        *PROJECT_ARGV, f"output_dir={out}"],
              _project_result(4 if name == "image_classification" else 2), True)
       for name, config in PROJECTS.items()},
}


def _run_project(argv):
    from mutualnet_video.tasks.projects import run_project

    run_project(argv, description="a project")
    return 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:FutureWarning",
                            "ignore:3 BN layers have no statistics calibrated:UserWarning")
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "detection" else n
                                  for n in QUIET_CLIS])
def test_quiet_prints_only_the_result_for_every_cli(name, quiet_inputs, tmp_path, capsys, monkeypatch):
    """Each CLI twice: without --quiet (the control, where the CLI has any: it logs, shows a bar
    or prints loss lines) and with it: stdout is only the result, stderr has no log line and no
    progress bar (a library warning, e.g. export_net's uncalibrated BN, still shows)."""
    import logging

    argv_of, check, noisy = QUIET_CLIS[name]
    main = _run_project if name in PROJECTS else _tool(name)
    root_logger = logging.getLogger()
    monkeypatch.setattr(root_logger, "handlers", [])  # as in a fresh process: setup_logging's handler on stderr
    monkeypatch.setattr(root_logger, "level", root_logger.level)

    def run(quiet: bool):
        rc = main(argv_of(quiet_inputs, tmp_path / ("quiet" if quiet else "loud")) + (["--quiet"] if quiet else []))
        assert rc == 0 or isinstance(rc, dict), rc  # make_synthetic_kinetics returns its info
        captured = capsys.readouterr()
        noise = [line for line in _lines(captured.err) if LOG_LINE.match(line) or PROGRESS_LINE.search(line)]
        noise += [line for line in _lines(captured.out) if LOG_LINE.match(line) or LOSS_LINE.match(line)]
        return _lines(captured.out), noise

    if noisy:
        assert run(quiet=False)[1], f"{name} without --quiet: no log line, bar or loss line (the check is void)"
    lines, noise = run(quiet=True)
    assert noise == [], noise
    assert lines and check(lines), lines
