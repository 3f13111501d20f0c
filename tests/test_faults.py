"""Fault injection (benchmarks/fault_injection.py): SIGKILL at random moments, resume, bit-identical.

The slow tests run the script's cases with a few kills each (one of them while a checkpoint is
being written) on the PyAV-decoded synthetic Kinetics set; the fast ones check its pieces: the
kill plan, the tensor-by-tensor comparison and that a SIGKILL reaches the whole process tree.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"


def _load():
    spec = importlib.util.spec_from_file_location("fault_injection", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fi = _load()


def test_kill_plan_is_seeded_spread_over_the_run_and_starts_with_a_checkpoint_write():
    plan = fi.plan_kills(10, seed=0, iters=30, kills_per_run=5)
    assert plan == fi.plan_kills(10, seed=0, iters=30, kills_per_run=5)
    assert plan != fi.plan_kills(10, seed=1, iters=30, kills_per_run=5)
    assert [len(run) for run in plan] == [5, 5]
    for run in plan:
        its = [k.iteration for k in run]
        assert its == sorted(its) and 1 <= its[0] and its[-1] <= 28
        assert its[0] <= 6 and its[-1] >= 23  # one per stratum of [1, 28]
    kinds = [k.kind for run in plan for k in run]
    assert kinds[0] == "ckpt-tmp" and set(kinds) == set(fi.KINDS)


def test_comparison_names_every_differing_entry(tmp_path):
    state = {"model": {"w": torch.arange(4.0), "b": torch.zeros(2)},
             "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
             "iteration": 3, "rng": {"python": {"internal": [1, 2, 3]}}}
    torch.save(state, tmp_path / "a.pth")
    torch.save(state, tmp_path / "same.pth")
    state["model"]["w"] = torch.nextafter(state["model"]["w"], torch.tensor(9.0))  # one ulp
    state["optimizer"]["state"][0]["exp_avg"] = torch.ones(3, dtype=torch.float64)
    state["iteration"] = 4
    torch.save(state, tmp_path / "b.pth")
    assert fi.compare_files(tmp_path / "same.pth", tmp_path / "a.pth") == ([], 6)
    differs, _ = fi.compare_files(tmp_path / "b.pth", tmp_path / "a.pth")
    assert differs == ["iteration", "model.w", "optimizer.state.0.exp_avg"]
    assert fi.count_line(3, 3) == "3 kills, 3 resumed bit-identical"
    bad = fi.KillResult(run=0, kill=fi.Kill(1, "step", 0.5), note="", checked=["b.pth"], differs=["model.w"])
    assert fi.count_line(3, 2, [bad]) == "3 kills, 2 resumed bit-identical, 1 differ (model.w)"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the process tree is read from /proc")
def test_kill_group_reaches_children_in_sessions_of_their_own(tmp_path):
    # like torchrun: the child starts its worker with start_new_session=True
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    grandchild = int(proc.stdout.readline())
    assert fi._alive(grandchild) and os.getpgid(grandchild) != proc.pid  # out of reach of killpg alone
    start = time.monotonic()
    assert fi.kill_group(proc) == 0
    assert time.monotonic() - start < 5
    assert proc.returncode == -9 and not fi._alive(grandchild)
    proc.stdout.close()


def _check(result, kills):
    lines = [f"{k.note} -> {k.resumed_from}: {k.checked} {k.differs}" for k in result.kills]
    assert len(result.kills) == kills and result.missed == 0, lines
    assert result.identical == kills, lines
    assert not any(result.finals), result.finals
    assert result.stragglers == 0
    assert any(k.kill.kind == "ckpt-tmp" and "writing .model_" in k.note for k in result.kills), lines


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkilled_runs_resume_bit_identical(tmp_path, workers):
    kills = 3
    result = fi.run_case(fi.Case(workers=workers), kills=kills, seed=0, work=tmp_path, kills_per_run=kills,
                         log=lambda line: None)
    _check(result, kills)


@pytest.mark.slow
def test_sigkilled_ddp_run_resumes_bit_identical(tmp_path):
    kills = 2
    result = fi.run_case(fi.Case(workers=0, nproc=2), kills=kills, seed=0, work=tmp_path, kills_per_run=kills,
                         log=lambda line: None)
    _check(result, kills)
