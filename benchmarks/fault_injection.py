#!/usr/bin/env python
"""Fault injection: SIGKILL training at random moments, resume, compare with an uninterrupted run.

For each case (``data.num_workers`` 0 and 2 by default; ``--ddp`` adds a 2-process gloo run
under torchrun) on the Kinetics-format synthetic video set decoded with PyAV:

1. an uninterrupted reference run of ``tools/train_net.py`` (``configs/instant/slow_synthetic.yaml``
   made tiny: 4 classes, 16 training videos, batch 4, ``--iters`` iterations, a checkpoint every
   ``--period`` iterations, every checkpoint kept);
2. faulted runs, each of up to ``--kills-per-run`` kills: the same command in a fresh
   ``output_dir``, killed at a planned moment (SIGKILL of the whole process tree: the child's
   session by ``os.killpg``, its DataLoader workers, and torchrun's ranks, which run in sessions
   of their own: see :func:`kill_group`), then ``--resume`` again and again (each resumed
   process may be killed again) until a process exits by itself with ``model_final.pth``
   written.

Moments (seeded; spread over the run: one random iteration per stratum of each faulted run; the
kinds in a fixed rotation so that a few kills already cover the checkpoint write):

* ``ckpt-tmp``: as soon as a ``.model_*.tmp`` file (a checkpoint being written) appears in
  ``output_dir`` after the armed iteration (polled every 0.5 ms);
* ``step``: a random fraction of one iteration after the child logged the armed iteration;
* ``ckpt-log``: right after the ``Saving checkpoint`` log line (the write has just begun);
* ``ckpt-done``: as soon as the new ``model_*.pth`` replaces its temporary file (before or while
  ``last_checkpoint`` is updated);
* ``startup``: a random moment between the start of the process and its first iteration
  (imports, data set-up, checkpoint loading, worker start-up).

Verdicts compare checkpoints tensor by tensor (and every other entry by value): model, optimizer,
scheduler, sampler generator, iteration, data position and RNG states. A kill's resume is
bit-identical when the checkpoints written after it, by the first later process that writes any,
equal the reference's checkpoints of the same iteration; every run's ``model_final.pth`` is also
compared with the reference's. Run from the repository root (the machine's cores are shared by
the processes; timings are wall-clock):

    python benchmarks/fault_injection.py --kills 10 --workers 0 2
    python benchmarks/fault_injection.py --kills 3 --workers 0 --ddp
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "instant" / "slow_synthetic.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"
#: the synthetic Kinetics-format set (make_synthetic_kinetics keywords): 16 training videos.
DATASET = {"num_classes": 4, "train_per_class": 4, "val_per_class": 1}
#: the kinds of moments, in the order kills take them.
KINDS = ("ckpt-tmp", "step", "ckpt-log", "startup", "ckpt-done", "step")
_ITER = re.compile(r"\biter (\d+)/\d+\s+loss")
_RESUMED = re.compile(r"resumed from (\S+) at iteration (\d+)")
_SAVING = re.compile(r"Saving checkpoint to (\S+)")
_MAX_NAMED = 8


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration of the run: DataLoader workers, processes (2: torchrun + gloo), length."""

    workers: int = 0
    nproc: int = 1
    iters: int = 30
    period: int = 3

    @property
    def name(self) -> str:
        return f"workers={self.workers}" + (f" ddp={self.nproc}" if self.nproc > 1 else "")


@dataclasses.dataclass(frozen=True)
class Kill:
    """A planned moment: ``kind`` (see the module doc), armed once the child has logged
    ``iteration``; ``fraction`` of a step (``step``) or of the start-up (``startup``)."""

    iteration: int
    kind: str
    fraction: float


@dataclasses.dataclass
class Timing:
    """Of the reference run: seconds from spawn to the first iteration, seconds per iteration."""

    startup_s: float
    step_s: float


@dataclasses.dataclass
class ChildResult:
    rc: int
    killed: bool
    note: str
    resumed_from: str | None
    last_iter: int
    wall_s: float
    stragglers: int
    iter_times: list[float]  # seconds from the start to each logged iteration


@dataclasses.dataclass
class KillResult:
    run: int
    kill: Kill
    note: str
    resumed_from: str | None = None
    checked: list[str] = dataclasses.field(default_factory=list)
    differs: list[str] = dataclasses.field(default_factory=list)

    @property
    def identical(self) -> bool:
        return bool(self.checked) and not self.differs


@dataclasses.dataclass
class RunResult:
    kills: list[KillResult]
    final: list[str]  # the entries of model_final.pth that differ from the reference's
    entries: int  # entries compared
    missed: int  # planned kills that did not happen (the process finished first)
    stragglers: int  # processes alive after SIGKILL of their group
    leftover_tmp: int  # .model_*.tmp files of killed writes still in output_dir at the end


@dataclasses.dataclass
class CaseResult:
    case: Case
    kills: list[KillResult]
    finals: list[list[str]]  # per faulted run: the differing entries of model_final.pth
    missed: int
    stragglers: int
    leftover_tmp: int
    wall_s: float

    @property
    def identical(self) -> int:
        return sum(k.identical for k in self.kills)

    def summary(self) -> str:
        return count_line(len(self.kills), self.identical, self.kills)


# -- runs ---------------------------------------------------------------------------------
def make_dataset(root: str | os.PathLike) -> str:
    """Write (or reuse) the synthetic Kinetics-format set once, before any child starts."""
    from mutualnet_video.data import make_synthetic_kinetics

    return make_synthetic_kinetics(root, **DATASET)["root"]


def overrides(case: Case, *, output_dir: str | os.PathLike, data_root: str, keep: int = 3) -> list[str]:
    """``key=value`` overrides of ``configs/instant/slow_synthetic.yaml`` for ``case``."""
    return [
        f"output_dir={output_dir}", "data.synthetic=null",
        f"data.train.data_path={data_root}", f"data.val.data_path={data_root}",
        f"model.model_num_class={DATASET['num_classes']}", f"data.num_workers={case.workers}",
        "data.batch_size=4", f"optim.max_iters={case.iters}", "optim.warmup_iters=3",
        f"train.checkpoint_period={case.period}", f"train.keep_checkpoints={keep}", "train.eval_period=0",
        "train.log_period=1", "train.progress=false", "train.device=cpu", "train.cpu_threads=1",
        "eval.calib_batches=1",
    ]


def train_command(case: Case, args: list[str], *, resume: bool) -> list[str]:
    launcher = [sys.executable]
    if case.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={case.nproc}"]
    return [*launcher, str(TRAIN_NET), "--config", str(CONFIG), *(["--resume"] if resume else []), *args]


def kill_group(proc: subprocess.Popen, *, timeout: float = 10.0) -> int:
    """SIGKILL ``proc`` and every process under it; returns how many are still alive (not
    zombies) after ``timeout`` seconds.

    ``proc`` runs in its own session (``start_new_session=True``): ``os.killpg`` reaches it and
    its DataLoader workers. torchrun starts each rank in a session of its own, so the process
    tree is first frozen (SIGSTOP, parents before children, until no new process appears: none
    can fork or be orphaned meanwhile), then every member is killed.
    """
    frozen: set[int] = set()
    while True:
        tree = _descendants(proc.pid) | {proc.pid}
        new = tree - frozen
        if not new:
            break
        for pid in sorted(new):
            _signal(pid, signal.SIGSTOP)
        frozen |= new
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in frozen if _alive(pid)]
        if not alive or time.monotonic() > deadline:
            return len(alive)
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stat(pid: int | str) -> tuple[str, int] | None:
    """(state, parent pid) of a process from ``/proc``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _descendants(root: int) -> set[int]:
    """Every process under ``root`` (Linux ``/proc``; elsewhere none: killpg alone)."""
    if not os.path.isdir("/proc"):
        return set()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(entry)) is not None:
            children.setdefault(st[1], []).append(int(entry))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    if os.path.isdir("/proc"):
        st = _stat(pid)
        return st is not None and st[0] != "Z"
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _checkpoint_files(output_dir: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for name in os.listdir(output_dir) if output_dir.is_dir() else []:
        if name.startswith("model_") and name.endswith(".pth"):
            st = os.stat(output_dir / name)
            out[name] = (st.st_mtime_ns, st.st_ino)
    return out


def _temporary_checkpoints(output_dir: Path) -> list[str]:
    try:
        return [n for n in os.listdir(output_dir) if n.startswith(".model_") and n.endswith(".tmp")]
    except FileNotFoundError:
        return []


def run_child(cmd: list[str], *, output_dir: Path, log_path: Path, kill: Kill | None = None,
              timing: Timing | None = None, rng: random.Random | None = None,
              timeout: float = 600.0) -> ChildResult:
    """Run ``cmd`` in its own session; with ``kill``, SIGKILL its group at that moment."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    last_iter, resumed_from, eof = 0, None, False
    iter_times: list[float] = []
    armed_at: float | None = None
    saving_seen = False
    snapshot: dict[str, tuple[int, int]] = {}
    delay = 0.0
    if kill is not None and timing is not None:
        delay = kill.fraction * (timing.startup_s if kill.kind == "startup" else timing.step_s)
    note = ""
    stale = set(_temporary_checkpoints(output_dir))  # left by an earlier kill: not a write of this process
    try:
        while True:
            while True:
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    eof = True
                    break
                log.write(line)
                if m := _ITER.search(line):
                    last_iter = int(m.group(1))
                    iter_times.append(time.monotonic() - start)
                elif m := _RESUMED.search(line):
                    resumed_from = os.path.basename(m.group(1))
                elif _SAVING.search(line) and armed_at is not None:
                    saving_seen = True
            now = time.monotonic()
            if kill is not None and armed_at is None and kill.kind != "startup" and last_iter >= kill.iteration:
                armed_at, snapshot = now, _checkpoint_files(output_dir)
            fire = False
            if kill is not None:
                if kill.kind == "startup":
                    fire = now - start >= delay
                elif armed_at is not None:
                    if kill.kind == "step":
                        fire = now - armed_at >= delay
                    elif kill.kind == "ckpt-log":
                        fire = saving_seen
                    elif kill.kind == "ckpt-tmp":
                        fire = bool(set(_temporary_checkpoints(output_dir)) - stale)
                    elif kill.kind == "ckpt-done":
                        fire = any(snapshot.get(n) != v for n, v in _checkpoint_files(output_dir).items())
            if fire:
                tmp = sorted(set(_temporary_checkpoints(output_dir)) - stale)
                stragglers = kill_group(proc)
                assert kill is not None
                note = f"{kill.kind} at iter {last_iter}" + (f" +{delay:.2f}s" if kill.kind in ("step", "startup")
                                                             else "")
                note += f" (writing {', '.join(tmp)})" if tmp else ""
                return ChildResult(proc.returncode, True, note, resumed_from, last_iter, time.monotonic() - start,
                                   stragglers, iter_times)
            if eof and proc.poll() is not None:
                return ChildResult(proc.returncode, False, "", resumed_from, last_iter, time.monotonic() - start, 0,
                                   iter_times)
            if now - start > timeout:
                kill_group(proc)
                raise TimeoutError(f"{' '.join(cmd)} ran over {timeout:.0f} s (log: {log_path})")
            fast = armed_at is not None and kill is not None and kill.kind in ("ckpt-tmp", "ckpt-done")
            time.sleep(0.0005 if fast else 0.005)
    finally:
        if proc.poll() is None:
            kill_group(proc)
        reader.join(timeout=5)
        log.close()


def plan_kills(n: int, *, seed: int, iters: int, kills_per_run: int) -> list[list[Kill]]:
    """``n`` kills in runs of at most ``kills_per_run``; in each run one armed iteration per
    equal stratum of ``[1, iters - 2]`` (spread over the run), kinds in the ``KINDS`` rotation."""
    rng = random.Random(seed)
    runs, done = [], 0
    while done < n:
        k = min(kills_per_run, n - done)
        lo, hi = 1, max(1, iters - 2)
        width = (hi - lo + 1) / k
        moments = [lo + int(rng.random() * width + i * width) for i in range(k)]
        runs.append([Kill(min(m, hi), KINDS[(done + i) % len(KINDS)], round(rng.random(), 3))
                     for i, m in enumerate(moments)])
        done += k
    return runs


# -- comparison ---------------------------------------------------------------------------
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.conv.weight": tensor, "optimizer.state.3.exp_avg": tensor, "iteration": 12, ...}``."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple, torch.Tensor)) for v in obj):
        out = {}
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}{i}."))
        return out or {prefix.rstrip("."): []}
    return {prefix.rstrip("."): obj}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def compare_files(path: str | os.PathLike, reference: str | os.PathLike) -> tuple[list[str], int]:
    """The entries of checkpoint ``path`` that differ from ``reference`` (missing on either
    side included) and the number of entries compared."""
    a = flatten(torch.load(path, map_location="cpu", weights_only=True))
    b = flatten(torch.load(reference, map_location="cpu", weights_only=True))
    differs = sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not _same(a[k], b[k]))
    return differs, len(a.keys() | b.keys())


def _named(entries: list[str]) -> str:
    more = f" and {len(entries) - _MAX_NAMED} more" if len(entries) > _MAX_NAMED else ""
    return ", ".join(entries[:_MAX_NAMED]) + more


def count_line(kills: int, identical: int, results: list[KillResult] = ()) -> str:
    """``"N kills, N resumed bit-identical"`` (``", K differ: <tensors>"`` when some differ)."""
    line = f"{kills} kills, {identical} resumed bit-identical"
    bad = [r for r in results if not r.identical]
    if bad:
        names = sorted({d for r in bad for d in r.differs})
        line += f", {len(bad)} differ" + (f" ({_named(names)})" if names else " (no checkpoint to compare)")
    return line


# -- cases --------------------------------------------------------------------------------
def reference_run(case: Case, *, work: Path, data_root: str) -> tuple[Path, Timing, float]:
    """The uninterrupted run (every checkpoint kept); returns its folder, timing and wall time."""
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    cmd = train_command(case, overrides(case, output_dir=out, data_root=data_root, keep=10_000), resume=False)
    log_path = work / "logs" / "reference.log"
    start = time.monotonic()
    result = run_child(cmd, output_dir=out, log_path=log_path)
    wall = time.monotonic() - start
    if result.rc != 0 or not (out / "model_final.pth").is_file():
        raise RuntimeError(f"reference run failed (rc {result.rc}); log: {log_path}")
    times = result.iter_times
    step = (times[-1] - times[0]) / max(1, len(times) - 1) if times else wall / case.iters
    timing = Timing(startup_s=max(0.1, times[0] - step) if times else wall / 2, step_s=step)
    return out, timing, wall


def faulted_run(case: Case, kills: list[Kill], *, run: int, work: Path, data_root: str, reference: Path,
                timing: Timing, log: Callable[[str], None]) -> RunResult:
    """One run with ``kills``, resumed until a process finishes by itself."""
    out = work / f"run{run}"
    shutil.rmtree(out, ignore_errors=True)
    args = overrides(case, output_dir=out, data_root=data_root)
    results: list[KillResult] = []
    pending: list[KillResult] = []  # kills whose resume has not written a checkpoint yet
    seen: dict[str, tuple[int, int]] = {}
    stragglers, proc_index = 0, 0
    while True:
        kill = kills[len(results)] if len(results) < len(kills) else None
        child = run_child(train_command(case, args, resume=proc_index > 0), output_dir=out,
                          log_path=work / "logs" / f"run{run}_proc{proc_index}.log", kill=kill, timing=timing)
        stragglers += child.stragglers
        for r in pending:
            if r.resumed_from is None and (child.resumed_from or child.last_iter):
                r.resumed_from = child.resumed_from or "scratch"
        written = {n: v for n, v in _checkpoint_files(out).items() if seen.get(n) != v}
        seen.update(written)
        if written and pending:
            checked, differs = [], []
            for name in sorted(written):
                d, _ = compare_files(out / name, reference / name)
                checked.append(name)
                differs += [f"{name}:{e}" if name != "model_final.pth" else e for e in d]
            for r in pending:
                r.checked, r.differs = checked, differs
                verdict = "identical" if r.identical else f"DIFFER: {_named(differs)}"
                log(f"{case.name} run {run} kill {r.note} -> resumed from {r.resumed_from}: {verdict} "
                    f"({', '.join(checked)})")
            pending = []
        proc_index += 1
        if child.killed:
            assert kill is not None
            r = KillResult(run=run, kill=kill, note=child.note)
            results.append(r)
            pending.append(r)
            continue
        if child.rc != 0:
            raise RuntimeError(f"{case.name} run {run}: a resumed process failed (rc {child.rc}); "
                               f"log: {work / 'logs' / f'run{run}_proc{proc_index - 1}.log'}")
        break
    for r in pending:  # cannot happen (the last process writes model_final.pth); kept honest
        log(f"{case.name} run {run} kill {r.note}: no checkpoint written after it")
    missed = len(kills) - len(results)
    if not (out / "model_final.pth").is_file():
        raise RuntimeError(f"{case.name} run {run}: finished without model_final.pth")
    final, entries = compare_files(out / "model_final.pth", reference / "model_final.pth")
    return RunResult(results, final, entries, missed, stragglers, len(_temporary_checkpoints(out)))


def run_case(case: Case, *, kills: int, seed: int, work: str | os.PathLike, data_root: str | None = None,
             kills_per_run: int = 5, log: Callable[[str], None] = print) -> CaseResult:
    """The reference run and ``kills`` kills of ``case`` under ``work`` (the videos in
    ``data_root``, default ``work/data``, written if absent); see the module doc."""
    start = time.monotonic()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data_root = make_dataset(data_root or work / "data")
    reference, timing, ref_wall = reference_run(case, work=work, data_root=data_root)
    log(f"{case.name}: reference run {ref_wall:.1f} s (start-up {timing.startup_s:.1f} s, "
        f"{timing.step_s:.3f} s/iter, {case.iters} iterations)")
    plan = plan_kills(kills, seed=seed + 1000 * case.workers + 100 * case.nproc, iters=case.iters,
                      kills_per_run=kills_per_run)
    runs = []
    for run, run_kills in enumerate(plan):
        r = faulted_run(case, run_kills, run=run, work=work, data_root=data_root, reference=reference, timing=timing,
                        log=log)
        runs.append(r)
        verdict = "identical" if not r.final else f"DIFFER: {_named(r.final)}"
        log(f"{case.name} run {run}: {len(r.kills)} kills, model_final.pth vs reference ({r.entries} entries: "
            f"weights, optimizer, scheduler, sampler, data position, RNG): {verdict}")
    result = CaseResult(case, [k for r in runs for k in r.kills], [r.final for r in runs],
                        sum(r.missed for r in runs), sum(r.stragglers for r in runs),
                        sum(r.leftover_tmp for r in runs), time.monotonic() - start)
    extra = f"; {result.missed} planned kills missed (the process finished first)" if result.missed else ""
    extra += f"; {result.stragglers} processes survived SIGKILL of their group" if result.stragglers else ""
    extra += (f"; {result.leftover_tmp} temporary files of killed checkpoint writes left in output_dir"
              if result.leftover_tmp else "")
    log(f"{case.name}: {result.summary()} (final weights {'identical' if not any(result.finals) else 'DIFFER'}) "
        f"in {result.wall_s:.1f} s{extra}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="kills per case (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2],
                        help="data.num_workers of the 1-process cases (none: only --ddp)")
    parser.add_argument("--ddp", action="store_true", help="add a 2-process gloo case (torchrun)")
    parser.add_argument("--ddp-workers", type=int, default=0, help="data.num_workers of the DDP case")
    parser.add_argument("--ddp-kills", type=int, default=None, help="kills of the DDP case (default --kills)")
    parser.add_argument("--iters", type=int, default=30, help="iterations of each run")
    parser.add_argument("--period", type=int, default=3, help="train.checkpoint_period")
    parser.add_argument("--kills-per-run", type=int, default=5, help="kill/resume cycles per faulted run")
    parser.add_argument("--output", default=None, help="work folder (kept); default a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.kills_per_run < 1 or args.iters < 4 or args.period < 1:
        parser.error("--kills, --kills-per-run and --period must be >= 1, --iters >= 4")
    work = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="fault_injection_"))
    cases = [Case(workers=w, iters=args.iters, period=args.period) for w in args.workers]
    if args.ddp:
        cases.append(Case(workers=args.ddp_workers, nproc=2, iters=args.iters, period=args.period))
    start = time.monotonic()
    print(f"fault injection: {len(cases)} cases, {args.kills} kills each, seed {args.seed}, work folder {work} "
          f"({os.cpu_count()} CPUs)", flush=True)
    results = []
    try:
        data_root = make_dataset(work / "data")
        for case in cases:
            n = args.ddp_kills if case.nproc > 1 and args.ddp_kills is not None else args.kills
            results.append(run_case(case, kills=n, seed=args.seed, work=work / case.name.replace(" ", "_"),
                                    data_root=data_root, kills_per_run=args.kills_per_run, log=lambda s: print(s, flush=True)))
        kills = [k for r in results for k in r.kills]
        summary = {
            "seed": args.seed, "wall_s": time.monotonic() - start,
            "cases": [{"case": r.case.name, "kills": len(r.kills), "identical": r.identical,
                       "final_identical": not any(r.finals), "missed": r.missed, "stragglers": r.stragglers,
                       "leftover_tmp": r.leftover_tmp,
                       "wall_s": r.wall_s,
                       "kill_moments": [{"run": k.run, "planned": dataclasses.asdict(k.kill), "note": k.note,
                                         "resumed_from": k.resumed_from, "checked": k.checked,
                                         "differs": k.differs} for k in r.kills]} for r in results],
        }
        (work / "results.json").write_text(json.dumps(summary, indent=1))
        print(f"total wall time {time.monotonic() - start:.1f} s", flush=True)
        print(count_line(len(kills), sum(k.identical for k in kills), kills), flush=True)
        ok = all(k.identical for k in kills) and not any(f for r in results for f in r.finals)
        return 0 if ok else 1
    finally:
        if not args.output and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
