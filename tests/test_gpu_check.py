"""benchmarks/gpu_check.py (issue 11's GPU check) end to end on the CPU: its dry run on the toy
network, every section but the pytest one (eager mutual step with and without GradScaler, gloo
DDP with one process, torch.compile with aot_eager), in this process and one section through the
per-section subprocess the GPU run uses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    path = ROOT / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # the DDP ranks (spawn) unpickle gpu_check._ddp_worker
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_dry_run_sections_pass_and_write_their_figures(gpu_check, tmp_path, capsys):
    rc = gpu_check.main(["--dry-run", "--models", "toy", "--sections", "eager", "ddp", "compile", "--in-process",
                         "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == ["eager:toy", "ddp", "compile:toy:fp32"]
    assert all(s["status"] == "PASS" and s["checks"] for s in sections.values()), out
    eager = sections["eager:toy"]["rows"]
    assert [r["label"] for r in eager] == ["toy fp32 eager", "toy fp32+scaler eager"]
    assert all(r["step_ms"] > 0 and r["mutual_over_parts"] > 0 for r in eager)
    assert {r["label"] for r in sections["ddp"]["rows"]} == {"ddp toy fp32 sync_bn=False", "ddp toy fp32 sync_bn=True"}
    assert sections["compile:toy:fp32"]["rows"][0]["compiled_over_eager"] > 0
    assert "=== summary" in out and "PASS: 3 of 3 sections" in out
    assert (tmp_path / "gpu_check_driver.log").read_text().count("PASS ") >= 6


def test_a_section_runs_in_its_own_process_and_a_failure_is_one_line(gpu_check, tmp_path, capsys):
    rc = gpu_check.main(["--dry-run", "--models", "toy", "--sections", "eager", "--out", str(tmp_path),
                         "--precisions", "fp32"])
    assert rc == 0, capsys.readouterr().out
    assert json.loads((tmp_path / "section_eager_toy.json").read_text())["status"] == "PASS"

    ctx = gpu_check.make_ctx(gpu_check.parse_args(["--dry-run", "--out", str(tmp_path)]))
    res = gpu_check.run_section("eager:no_such_model", ctx, 0)
    assert res.status == "FAIL" and "KeyError" in res.error
    assert "FAIL eager:no_such_model: KeyError" in capsys.readouterr().out


def test_the_selected_tests_are_the_ones_that_reach_cuda(gpu_check):
    ids = gpu_check.select_cuda_tests(ROOT / "tests")
    assert "tests/test_engine_mutual.py::test_grad_scaler_path_matches_the_unscaled_step" in ids  # names GradScaler
    assert "tests/test_engine_trainer.py::test_training_learns_the_toy_task" in ids  # a Trainer, train.device auto
    assert not any(i.startswith("tests/test_compare.py") for i in ids)  # pins train.device to cpu
    assert not any("test_gpu_check" in i for i in ids)
