#!/usr/bin/env python
"""GPU check (issue 11, "GPU, ready to run"): one short run of everything that needs CUDA.

Sections, each guarded (an error is one FAIL line and the run goes on), each under its own
time limit (a subprocess per section, killed at its limit), all under one overall budget:

* ``tests``: the default tests that touch CUDA: tests naming CUDA / AMP / GradScaler /
  SyncBatchNorm, and those that build a Trainer (``train.device`` defaults to ``auto`` and
  ``train.amp`` to true, so on a GPU machine they train on CUDA with AMP); found by reading
  ``tests/`` (``select_cuda_tests``), run with pytest;
* ``eager:<model>``: the mutual step (``engine.mutual_step`` on a fixed
  ``SandwichSampler`` sandwich) with AMP in bf16, and in fp16 with ``torch.amp.GradScaler``,
  ``channels_last_3d``: step time (median, ``torch.cuda.synchronize``), clips/s, peak memory
  (``torch.cuda.max_memory_allocated``, reset before each measure) of the mutual and of the
  full-only step, mutual / sum of its parts (each sub-network's fwd+bwd alone), and
  slimmable / stock PyTorchVideo (same weights) forward+backward at full width; checks the
  AMP logits at the full configuration against fp32 (TF32 off) within ``AMP_TOLERANCE``;
* ``ddp``: nccl DDP with one process per GPU (``torch.multiprocessing`` spawn), a few mutual
  steps through DDP as the Trainer wraps it (``mutual_step`` on the DDP module: ``no_sync``
  and the synchronised last backward), with and without ``train.sync_bn``; checks that
  every rank ends with the same weights;
* ``compile:<model>:<dtype>``: the same step on ``torch.compile(model)``: compile time,
  step time, compiled / eager, graphs after the first step (no recompile afterwards), and
  the compiled step's losses against eager's. ``--no-compile`` skips these.

Models: X3D-M 16x224 and SlowFast R50 8x32 (slow 8, fast 32 frames, crop 224), batch 8.
Outputs under ``--out`` (default ``$OUT`` or ``./gpu_check_out``): ``gpu_check.json`` (every
figure and check) and ``gpu_check_driver.log``; ``gpu_check.sh`` also writes the whole log.

    bash benchmarks/gpu_check.sh                      # on the GPU machine (sets up python first)
    python benchmarks/gpu_check.py --no-compile       # the driver alone
    python benchmarks/gpu_check.py --dry-run          # CPU: tiny inputs, fp32, gloo, compile with aot_eager
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # slim_overhead.stock_model
    sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

NUM_CLASSES = 400
# relative error ||amp - fp32|| / ||fp32|| of the logits at the full configuration (train-mode BN,
# fp32 with TF32 off); also the bound for a compiled step's losses against eager's
AMP_TOLERANCE = {"bf16": 5e-2, "fp16": 1e-2, "fp32": 1e-3}
STOCK_TOLERANCE = 1e-3  # slimmable at full width vs stock PyTorchVideo, fp32 logits (eval)

MODELS = {
    # key: registry name, the dry run's space (the GPU run uses the registry's default space:
    # X3D-M frames {16, 12, 8}, SlowFast R50 slow frames {8, 6, 4}, crops {224, 192, 160, 128})
    "x3d_m": ("mutual_x3d_m", {"frames": (2, 1), "crops": (32,), "num_subnets": 2}),
    "slowfast_r50": ("mutual_slowfast_r50", {"frames": (2, 1), "crops": (32,), "num_subnets": 2}),
    "toy": (None, {"frames": (4, 2), "crops": (32, 24), "num_subnets": 3}),  # mutualnet_video.testing
}

# per-section limits in seconds (GPU run / dry run); a section also stops at the overall budget
BUDGETS = {
    "tests": (100, 240), "eager": (75, 300), "ddp": (60, 180), "compile": (100, 300),
}
MIN_SECTION_S = 20  # a section that would get less than this is skipped


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype | None  # autocast dtype (None: fp32, no autocast)
    scaler: bool  # torch.amp.GradScaler


PRECISIONS = {
    "bf16": Precision("bf16", torch.bfloat16, False),
    "fp16": Precision("fp16", torch.float16, True),
    "fp32": Precision("fp32", None, False),
    "fp32+scaler": Precision("fp32+scaler", None, True),  # dry run: the GradScaler code path on the CPU
}


@dataclass
class Ctx:
    device: torch.device
    dry_run: bool
    batch: int
    steps: int
    warmup: int
    precisions: list[Precision]
    amp_checks: list[tuple[str, torch.dtype]]
    channels_last: bool
    backend: str
    ddp_batch: int
    ddp_steps: int
    ddp_model: str
    out: Path


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    name: str
    path: Path | None = None
    status: str = "PASS"
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def row(self, **figures: Any) -> None:
        self.rows.append(figures)
        print(f"  [{self.name}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()), flush=True)
        self.save()

    def check(self, label: str, ok: bool, value: Any = None, tolerance: str | None = None) -> None:
        self.checks.append({"check": label, "ok": bool(ok), "value": value, "tolerance": tolerance})
        shown = "" if value is None else f": {_fmt(value)}"
        bound = "" if tolerance is None else f" (tolerance {tolerance})"
        print(f"{'PASS' if ok else 'FAIL'} {self.name}: {label}{shown}{bound}", flush=True)
        if not ok:
            self.status = "FAIL"
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  [{self.name}] {text}", flush=True)
        self.save()

    def fail(self, error: str) -> None:
        self.status, self.error = "FAIL", error if self.error is None else f"{self.error} || {error}"
        print(f"FAIL {self.name}: {error}", flush=True)
        self.save()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 1), "rows": self.rows,
                "checks": self.checks, "notes": self.notes, "error": self.error}

    def save(self) -> None:
        if self.path is not None:  # after every figure, so a section killed at its limit keeps what it had
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.to_json(), indent=1, default=str))
            tmp.replace(self.path)

    @classmethod
    def load(cls, name: str, path: Path) -> Result:
        data = json.loads(path.read_text())
        res = cls(name)
        res.status, res.rows, res.checks = data["status"], data["rows"], data["checks"]
        res.notes, res.error = data["notes"], data["error"]
        return res


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # CPU: see benchmarks/train_step.py for resident memory
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def fresh(x):
    """A new list for SlowFast's [slow, fast] (PyTorchVideo's multipathway block replaces the
    list's items in place); a tensor as is."""
    return list(x) if isinstance(x, list) else x


def fresh_inputs(sub_inputs):
    return [(cfg, fresh(x)) for cfg, x in sub_inputs]


def to_format(x, channels_last: bool):
    if isinstance(x, list):
        return [to_format(t, channels_last) for t in x]
    if channels_last and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def autocast(device: torch.device, prec: Precision):
    """The precision's autocast. ``mutual_step(amp=True)`` opens ``torch.autocast(device_type)``
    without a dtype, which takes the enclosing autocast's dtype: this sets bf16 or fp16."""
    if prec.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=prec.dtype)


@contextlib.contextmanager
def no_tf32():
    """A true fp32 reference on CUDA (cuDNN convolutions default to TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """SIGALRM-based limit for the in-process mode (subprocess sections are killed instead)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise TimeoutError(f"{what}: over its {seconds:.0f} s limit")

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)  # an enclosing alarm (pytest-timeout) is kept
    previous = signal.signal(signal.SIGALRM, handler)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_left) if outer_left else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 0.01))


def dropout_off(model):
    """Train mode but dropout off (X3D and SlowFast heads drop 50%): outputs that compare."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.eval()
    return model


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def slice_grads_ctx(enabled: bool = True):
    """``core.slice_grads`` as ``mutual_step`` runs it (a no-op where this checkout lacks it)."""
    try:
        from mutualnet_video.core import slice_grads
    except ImportError:
        return contextlib.nullcontext()
    return slice_grads(enabled)


def build_model(key: str, ctx_dry_run: bool):
    """The slimmable model ``key`` on the CPU, seeded, with its space (registry defaults on the GPU)."""
    name, dry_space = MODELS[key]
    torch.manual_seed(0)
    if name is None:
        from mutualnet_video.testing import create_toy_slimnet

        return create_toy_slimnet(channels=16, model_num_class=NUM_CLASSES, **dry_space)
    from mutualnet_video.models import create_model

    return create_model(name, model_num_class=NUM_CLASSES, **(dry_space if ctx_dry_run else {}))


def to_device(model, ctx: Ctx):
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last_3d) if ctx.channels_last else model


def sandwich(base, ctx: Ctx, batch: int, seed: int = 2):
    """A fixed sandwich (same configurations and inputs every step) on the device."""
    from mutualnet_video.core import get_space
    from mutualnet_video.engine import SandwichSampler

    space = get_space(base)
    frames, crop = space.full_clip_shape()
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, frames, crop, crop, generator=gen).to(ctx.device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(ctx.device)
    sub_inputs = SandwichSampler(space, generator=torch.Generator().manual_seed(1))(video)
    return [(cfg, to_format(x, ctx.channels_last)) for cfg, x in sub_inputs], labels


def shape_of(x) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(shape_of(t) for t in x) + "]"
    return "x".join(str(s) for s in x.shape)


def make_step(model, sub_inputs, labels, prec: Precision, ctx: Ctx, lr: float = 1e-3):
    """``mutual_step`` on ``model`` with its own optimizer (and GradScaler); returns a callable."""
    from mutualnet_video.engine import mutual_step

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler(ctx.device.type) if prec.scaler else None

    def step(inputs=sub_inputs, targets=labels):
        with autocast(ctx.device, prec):
            return mutual_step(model, fresh_inputs(inputs), targets, criterion=F.cross_entropy,
                               optimizer=optimizer, scaler=scaler, amp=prec.dtype is not None)
    return step


def record_dtype(model) -> tuple[dict[str, str], Any]:
    """Records the output dtype of the model's first convolution (the autocast dtype in use)."""
    seen: dict[str, str] = {}
    conv = next(m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
                and m.weight.dim() == 5)

    def hook(mod, args, out):
        seen.setdefault("dtype", str(out.dtype).replace("torch.", ""))
    return seen, conv.register_forward_hook(hook)


# ----------------------------------------------------------------------------- sections


def section_tests(res: Result, ctx: Ctx, limit: float) -> None:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        res.fail("pytest is not importable (pip install -e '.[test]')")
        return
    ids = select_cuda_tests(ROOT / "tests")
    res.note(f"{len(ids)} test functions touch CUDA (default marker selection, slow ones deselected); "
             f"torch.cuda.is_available()={torch.cuda.is_available()}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={int(max(30, limit - 10))}")
    log_path = ctx.out / "tests.log"
    rc, tail = run_logged(cmd + ids, log_path, timeout=max(10.0, limit - 5), cwd=ROOT, echo=False)
    summary = next((line for line in reversed(tail) if re.search(r"\d+ (passed|failed|error)", line)), "")
    print("\n".join(tail[-15:]), flush=True)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", summary)}
    res.row(label="tests touching CUDA", selected=len(ids), **counts, log=str(log_path))
    if rc is None:
        res.check("default tests touching CUDA finished within the limit", False, f"killed after {limit - 5:.0f} s")
    else:
        res.check("default tests touching CUDA pass", rc == 0, summary.strip("= ") or f"pytest exit {rc}")


CUDA_WORDS = re.compile(r"cuda|autocast|GradScaler|SyncBatchNorm|sync_bn|nccl|\bamp\b", re.IGNORECASE)
TRAINS = re.compile(r"\bTrainer\(|train_net")
CPU_PINNED = re.compile(r"""["']device["']\s*:\s*["']cpu|train\.device=cpu""")


def select_cuda_tests(tests_dir: Path) -> list[str]:
    """Node ids of the test functions that touch CUDA on a GPU machine: those whose source
    names CUDA / AMP / GradScaler / SyncBatchNorm / nccl, and those that reach a Trainer or
    ``tools/train_net.py`` (through the module's helpers) in a file that does not pin
    ``train.device`` to cpu (the default ``auto`` is CUDA there, with ``train.amp``)."""
    ids = []
    for path in sorted(tests_dir.glob("test_*.py")):
        if path.name == "test_gpu_check.py":
            continue
        src = path.read_text(encoding="utf-8")
        tree = ast.parse(src)
        funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        pinned = bool(CPU_PINNED.search(src))

        def text(node, src=src):
            return "\n".join([*(ast.get_source_segment(src, d) or "" for d in node.decorator_list),
                              ast.get_source_segment(src, node) or ""])

        def reach(node, funcs=funcs, text=text):
            seen, todo, parts = set(), [node], []
            while todo:
                n = todo.pop()
                if n.name in seen:
                    continue
                seen.add(n.name)
                parts.append(text(n))
                names = {x.id for x in ast.walk(n) if isinstance(x, ast.Name)} | {a.arg for a in n.args.args}
                todo += [funcs[k] for k in names if k in funcs]
            return "\n".join(parts)

        for name, node in funcs.items():
            if name.startswith("test") and (CUDA_WORDS.search(text(node))
                                            or (not pinned and TRAINS.search(reach(node)))):
                ids.append(f"{path.relative_to(ROOT)}::{name}")
    return ids


def section_eager(res: Result, ctx: Ctx, key: str) -> None:
    from mutualnet_video.core import distillation_loss, use_config

    base = build_model(key, ctx.dry_run)
    sub_inputs, labels = sandwich(base, ctx, ctx.batch)
    full_cfg, full_x = sub_inputs[0]
    res.note(f"{key}: sandwich {[cfg.tag for cfg, _ in sub_inputs]}, full input {shape_of(full_x)}, batch {ctx.batch}, "
             f"{'channels_last_3d' if ctx.channels_last else 'contiguous'}, {ctx.steps} steps (+{ctx.warmup} warm-up)")

    # AMP logits against fp32 at the full configuration (train-mode BN: batch statistics; dropout off)
    try:
        model = dropout_off(to_device(copy.deepcopy(base), ctx).train())
        with torch.no_grad(), use_config(model, full_cfg):
            with no_tf32():
                ref = model(fresh(full_x)).float()
            for name, dtype in ctx.amp_checks:
                with torch.autocast(ctx.device.type, dtype=dtype):
                    out = model(fresh(full_x))
                tol = AMP_TOLERANCE["bf16" if dtype == torch.bfloat16 else "fp16"]
                res.check(f"{key} {name} logits vs fp32 (rel. error, {str(out.dtype).replace('torch.', '')} out)",
                          rel_err(out, ref) < tol, rel_err(out, ref), f"< {tol:g}")
        del model, ref
    except Exception as exc:  # noqa: BLE001 - one FAIL line, the section goes on
        res.fail(f"AMP check: {_one_line(exc)}")

    for prec in ctx.precisions:
        try:
            measure_mutual(res, ctx, key, base, sub_inputs, labels, prec, distillation_loss, use_config)
        except Exception as exc:  # noqa: BLE001
            res.fail(f"{key} {prec.name} mutual step: {_one_line(exc)}")
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()

    try:
        slim_vs_stock(res, ctx, key, base, full_cfg, full_x, use_config)
    except Exception as exc:  # noqa: BLE001
        res.fail(f"{key} slimmable/stock: {_one_line(exc)}")


def measure_mutual(res, ctx, key, base, sub_inputs, labels, prec, distillation_loss, use_config) -> None:
    device = ctx.device
    model = to_device(copy.deepcopy(base), ctx).train()
    step = make_step(model, sub_inputs, labels, prec, ctx)
    full_only = make_step(model, sub_inputs, labels, prec, ctx)  # its own optimizer: same model
    seen, hook = record_dtype(model)
    step()
    hook.remove()

    # the parts: each sub-network's forward + loss + backward alone, as inside mutual_step
    ref = to_device(copy.deepcopy(base), ctx).train()
    with torch.no_grad(), use_config(ref, sub_inputs[0][0]), autocast(device, prec):
        teacher = ref(fresh(sub_inputs[0][1])).detach()

    def part(i):
        cfg, x = sub_inputs[i]

        def run():
            with use_config(ref, cfg), slice_grads_ctx(True):
                with autocast(device, prec):
                    out = ref(fresh(x))
                    loss = F.cross_entropy(out, labels) if i == 0 else distillation_loss(out, teacher)
                loss.backward()
        return run

    parts = [part(i) for i in range(len(sub_inputs))]
    for _ in range(ctx.warmup):
        step()
        full_only(sub_inputs[:1])
        for p in parts:
            p()
    t_mutual, t_full, t_parts = [], [], [[] for _ in parts]
    for _ in range(ctx.steps):
        t_mutual.append(timed(step, device))
        for i, p in enumerate(parts):
            t_parts[i].append(timed(p, device))
        t_full.append(timed(lambda: full_only(sub_inputs[:1]), device))
    ref = parts = teacher = None  # free the copy before the peak-memory measures
    reset_peak(device)
    step()
    peak = peak_mib(device)
    reset_peak(device)
    full_only(sub_inputs[:1])
    peak_full = peak_mib(device)
    mutual_ms, sum_parts = median_ms(t_mutual), sum(median_ms(t) for t in t_parts)
    res.row(label=f"{key} {prec.name} eager", step_ms=mutual_ms, clips_s=ctx.batch / (mutual_ms / 1e3),
            peak_mib=peak, full_only_peak_mib=peak_full, mutual_over_parts=mutual_ms / sum_parts,
            mutual_over_full_only=mutual_ms / median_ms(t_full), parts_ms=[round(median_ms(t), 2) for t in t_parts],
            full_only_ms=median_ms(t_full), autocast_dtype=seen.get("dtype"))
    if prec.dtype is not None:
        want = str(prec.dtype).replace("torch.", "")
        res.check(f"{key} {prec.name} mutual step runs its convolutions in {want}", seen.get("dtype") == want,
                  seen.get("dtype"))


def slim_vs_stock(res, ctx, key, base, full_cfg, full_x, use_config) -> None:
    name = MODELS[key][0]
    if name is None:
        res.note(f"{key}: no stock PyTorchVideo counterpart, slimmable/stock skipped")
        return
    from slim_overhead import stock_model

    device = ctx.device
    stock = stock_model(name, full_cfg.frames, full_cfg.crop, NUM_CLASSES)
    slim = copy.deepcopy(base)
    slim.load_state_dict(stock.state_dict(), strict=True)
    stock, slim = to_device(stock, ctx), to_device(slim, ctx)
    with torch.no_grad(), no_tf32(), use_config(slim, full_cfg):
        err = rel_err(slim.eval()(fresh(full_x)), stock.eval()(fresh(full_x)))
    res.check(f"{key} slimmable at full width equals stock (fp32 logits, eval)", err < STOCK_TOLERANCE, err,
              f"< {STOCK_TOLERANCE:g}")
    slim.train()
    stock.train()
    for prec in [PRECISIONS["fp32"], *[p for p in ctx.precisions if p.dtype is not None][:1]]:
        def fwd_bwd(model, prec=prec):
            def run():
                with autocast(device, prec):
                    out = model(fresh(full_x))
                out.float().sum().backward()
            return run

        a, b = fwd_bwd(stock), fwd_bwd(slim)
        t_stock, t_slim = [], []
        with use_config(slim, full_cfg):
            for _ in range(ctx.warmup):
                a()
                b()
            for i in range(ctx.steps):
                for fn, out in ((a, t_stock), (b, t_slim)) if i % 2 == 0 else ((b, t_slim), (a, t_stock)):
                    out.append(timed(fn, device))
        res.row(label=f"{key} {prec.name} slim/stock fwd+bwd", stock_ms=median_ms(t_stock), slim_ms=median_ms(t_slim),
                slim_over_stock=median_ms(t_slim) / median_ms(t_stock))


def section_compile(res: Result, ctx: Ctx, key: str, prec_name: str) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    prec = PRECISIONS[prec_name]
    device = ctx.device
    torch._dynamo.reset()
    base = build_model(key, ctx.dry_run)
    sub_inputs, labels = sandwich(base, ctx, ctx.batch)
    # dropout off in both, so that their losses compare (inductor draws its own random masks)
    eager_model = dropout_off(to_device(copy.deepcopy(base), ctx).train())
    model = dropout_off(to_device(copy.deepcopy(base), ctx).train())
    import importlib
    import inspect

    own, how = None, "torch.compile"
    for where in ("mutualnet_video.engine", "mutualnet_video.core"):  # the project's entry point, where there is one
        with contextlib.suppress(ImportError):
            own = getattr(importlib.import_module(where), "compile_slimmable", None)
        if own is not None:
            how = f"{where}.compile_slimmable"
            break
    params = inspect.signature(own).parameters if own is not None else {}
    if own is not None and ("backend" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())):
        compiled = own(model, backend=ctx.backend)
    else:
        compiled, how = torch.compile(model, backend=ctx.backend), "torch.compile"
    budget = None
    with contextlib.suppress(Exception):  # engine.graph_budget: the most graphs the space needs, where there is one
        from mutualnet_video.engine import graph_budget

        budget = graph_budget(model).train
    res.note(f"{key} {prec.name}: {how}(backend={ctx.backend!r}), sandwich {[c.tag for c, _ in sub_inputs]}, "
             "dropout off")
    step_c = make_step(compiled, sub_inputs, labels, prec, ctx)
    step_e = make_step(eager_model, sub_inputs, labels, prec, ctx)

    start = time.perf_counter()
    losses_c = step_c()
    sync(device)
    compile_s = time.perf_counter() - start
    graphs_first = counters["stats"]["unique_graphs"]
    res.note(f"first compiled step {compile_s:.1f} s, {graphs_first} graphs")
    losses_e = step_e()
    tol = AMP_TOLERANCE[prec.name.split("+")[0]]
    worst = max(abs(losses_c[k] - losses_e[k]) / max(abs(losses_e[k]), 1e-6) for k in losses_e)
    res.check(f"{key} {prec.name} compiled step's losses vs eager (max rel. diff over {len(losses_e)} sub-networks)",
              worst < tol, worst, f"< {tol:g}")
    step_c()
    graphs_second = counters["stats"]["unique_graphs"]
    res.check(f"{key} {prec.name} no recompile after the first step (graphs after step 1 / 2)",
              graphs_second == graphs_first, f"{graphs_first} / {graphs_second}")
    for _ in range(max(0, ctx.warmup - 1)):
        step_c()
        step_e()
    t_c, t_e = [], []
    for i in range(ctx.steps):
        for fn, out in ((step_c, t_c), (step_e, t_e)) if i % 2 == 0 else ((step_e, t_e), (step_c, t_c)):
            out.append(timed(fn, device))
    del eager_model, step_e
    reset_peak(device)
    step_c()
    ms_c = median_ms(t_c)
    res.row(label=f"{key} {prec.name} compiled", step_ms=ms_c, clips_s=ctx.batch / (ms_c / 1e3), peak_mib=peak_mib(device),
            eager_ms=median_ms(t_e), compiled_over_eager=ms_c / median_ms(t_e), compile_s=compile_s,
            graphs=graphs_second, graph_budget_train=budget, recompile_limit_hits=counters["stats"].get("recompile_limit_hit", 0)
            + counters["stats"].get("cache_size_limit_hit", 0))


def section_ddp(res: Result, ctx: Ctx) -> None:
    import torch.multiprocessing as mp

    cuda = ctx.device.type == "cuda"
    world = torch.cuda.device_count() if cuda else 1
    backend = "nccl" if cuda else "gloo"
    prec = next((p for p in ctx.precisions if p.dtype is not None), ctx.precisions[0])
    spec = {"model": ctx.ddp_model, "dry_run": ctx.dry_run, "batch": ctx.ddp_batch, "steps": ctx.ddp_steps,
            "precision": prec.name, "channels_last": ctx.channels_last, "out": str(ctx.out)}
    res.note(f"{backend}, world size {world} ({'one process per GPU' if cuda else 'CPU'}), {ctx.ddp_model} "
             f"batch {ctx.ddp_batch}/rank, {ctx.ddp_steps} mutual steps, {prec.name}")
    results = ctx.out / "ddp_rank0.json"
    results.unlink(missing_ok=True)
    procs = mp.start_processes(_ddp_worker, args=(world, _free_port(), backend, spec), nprocs=world, join=False,
                               start_method="spawn")
    try:
        while not procs.join(timeout=1):
            pass
    finally:  # a limit (SIGALRM in-process) or a failed rank: leave no rank behind
        for proc in procs.processes:
            if proc.is_alive():
                proc.kill()
    for variant in json.loads(results.read_text()):
        if "error" in variant:
            res.fail(f"ddp sync_bn={variant['sync_bn']}: {variant['error']}")
            continue
        tag = f"sync_bn={variant['sync_bn']}"
        res.row(label=f"ddp {ctx.ddp_model} {prec.name} {tag}", world_size=world, step_ms=variant["step_ms"],
                clips_s=world * ctx.ddp_batch / (variant["step_ms"] / 1e3), peak_mib=variant["peak_mib"])
        res.check(f"ddp {tag}: every rank has the same weights (max abs diff over ranks)",
                  variant["max_diff"] == 0.0, variant["max_diff"], "== 0")
        res.check(f"ddp {tag}: weights moved and are finite", variant["changed"] and variant["finite"],
                  f"changed={variant['changed']}, finite={variant['finite']}")


def _ddp_worker(rank: int, world: int, port: int, backend: str, spec: dict) -> None:
    import torch.distributed as dist
    from torch import nn

    from mutualnet_video.engine.distributed import convert_sync_bn, init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    cuda = backend == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)
    if not init_distributed(device):  # the project's torchrun path joins only for WORLD_SIZE > 1
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    prec = PRECISIONS[spec["precision"]]
    ctx = Ctx(device=device, dry_run=spec["dry_run"], batch=spec["batch"], steps=spec["steps"], warmup=1,
              precisions=[prec], amp_checks=[], channels_last=spec["channels_last"], backend="", ddp_batch=0,
              ddp_steps=0, ddp_model="", out=Path(spec["out"]))
    variants = []
    try:
        for sync_bn in (False, True):
            try:
                variants.append(_ddp_variant(rank, world, ctx, spec["model"], prec, sync_bn, convert_sync_bn, nn, dist))
            except Exception as exc:  # noqa: BLE001 - reported by rank 0; the other variant still runs
                variants.append({"sync_bn": sync_bn, "error": _one_line(exc)})
                if world > 1:
                    raise  # a collective may be half done: do not run on
    finally:
        if rank == 0:
            (Path(spec["out"]) / "ddp_rank0.json").write_text(json.dumps(variants))
        dist.destroy_process_group()


def _ddp_variant(rank, world, ctx, key, prec, sync_bn, convert_sync_bn, nn, dist) -> dict:
    from mutualnet_video.core import get_space
    from mutualnet_video.engine import SandwichSampler

    device = ctx.device
    model = build_model(key, ctx.dry_run)  # seeded: the same on every rank (DDP broadcasts rank 0's anyway)
    space = get_space(model)
    model = model.to(device)
    if sync_bn:
        model = convert_sync_bn(model, device)
    model = to_device(model, ctx).train()
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=False)  # as the Trainer wraps it
    initial = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).clone()
    sampler = SandwichSampler(space, generator=torch.Generator().manual_seed(1))  # same configs on every rank
    frames, crop = space.full_clip_shape()
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    step = make_step(ddp, None, None, prec, ctx, lr=1e-2)  # mutual_step on the DDP module, as the Trainer runs it
    times = []
    for i in range(ctx.steps + 1):
        video = torch.randn(ctx.batch, 3, frames, crop, crop, generator=gen).to(device)
        labels = torch.randint(0, NUM_CLASSES, (ctx.batch,), generator=gen).to(device)
        inputs = [(cfg, to_format(x, ctx.channels_last)) for cfg, x in sampler(video)]
        if i == 1:
            reset_peak(device)
        t = timed(lambda inputs=inputs, labels=labels: step(inputs, labels), device)
        if i > 0:  # the first step is the warm-up
            times.append(t)
    params = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    # with sync_bn the BN statistics are synchronised too; without, each rank keeps its own
    stats = [b.detach().float().reshape(-1) for n, b in model.named_buffers()
             if sync_bn and n.endswith(("running_mean", "running_var"))]
    flat = torch.cat([params, *stats])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    max_diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    return {"sync_bn": sync_bn, "step_ms": median_ms(times), "peak_mib": peak_mib(device), "max_diff": max_diff,
            "changed": bool((params - initial).abs().max() > 0), "finite": bool(torch.isfinite(flat).all())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " | ")
    return text if len(text) < 600 else text[:600] + " ..."


# ----------------------------------------------------------------------------- orchestration


def plan(args) -> list[tuple[str, float]]:
    gpu = 0 if args.dry_run else 1
    wanted = set(args.sections)
    out = []
    if "tests" in wanted:
        out.append(("tests", BUDGETS["tests"][1 - gpu]))
    if "eager" in wanted:
        out += [(f"eager:{m}", BUDGETS["eager"][1 - gpu]) for m in args.models]
    if "ddp" in wanted:
        out.append(("ddp", BUDGETS["ddp"][1 - gpu]))
    if "compile" in wanted and not args.no_compile:
        out += [(f"compile:{m}:{d}", BUDGETS["compile"][1 - gpu]) for d in args.compile_dtypes for m in args.models]
    return out


def make_ctx(args) -> Ctx:
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    if args.dry_run:
        precisions = [PRECISIONS[p] for p in args.precisions or ["fp32", "fp32+scaler"]]
        amp_checks = [("cpu-bf16 (dry run)", torch.bfloat16)]
    else:
        precisions = [PRECISIONS[p] for p in args.precisions or ["bf16", "fp16"]]
        amp_checks = [("bf16", torch.bfloat16), ("fp16", torch.float16)]
    return Ctx(device=device, dry_run=args.dry_run, batch=args.batch, steps=args.steps, warmup=args.warmup,
               precisions=precisions, amp_checks=amp_checks, channels_last=not args.contiguous,
               backend=args.compile_backend, ddp_batch=args.ddp_batch, ddp_steps=args.ddp_steps,
               ddp_model=args.ddp_model or args.models[0], out=Path(args.out))


def run_section(name: str, ctx: Ctx, limit: float, result_path: Path | None = None) -> Result:
    """Run one section here, guarded: an exception is the section's FAIL line."""
    res = Result(name, result_path)
    res.save()
    start = time.perf_counter()
    try:
        with time_limit(limit if result_path is None else None, name):
            kind, *rest = name.split(":")
            if kind == "tests":
                section_tests(res, ctx, limit)
            elif kind == "eager":
                section_eager(res, ctx, rest[0])
            elif kind == "ddp":
                section_ddp(res, ctx)
            elif kind == "compile":
                section_compile(res, ctx, rest[0], rest[1])
            else:
                raise ValueError(f"unknown section {name!r}")
    except Exception as exc:  # noqa: BLE001 - one FAIL line, the run goes on
        res.fail(_one_line(exc))
        (ctx.out / f"{name.replace(':', '_')}.traceback.txt").write_text(traceback.format_exc())
    res.seconds = time.perf_counter() - start
    res.save()
    return res


def run_logged(cmd, log_path: Path, *, timeout: float, cwd=None, echo=True) -> tuple[int | None, list[str]]:
    """Run ``cmd`` in its own process group, its output to ``log_path`` (and stdout if
    ``echo``); kill the group at ``timeout``. Returns (exit code or None if killed, last lines)."""
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                del tail[:-200]
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
    return rc, tail


def run_section_subprocess(name: str, limit: float, out: Path, argv: list[str]) -> Result:
    path = out / f"section_{name.replace(':', '_')}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--run-section", name, "--result", str(path),
           "--section-limit", str(limit)]
    start = time.perf_counter()
    rc, _ = run_logged(cmd, out / f"section_{name.replace(':', '_')}.log", timeout=limit)
    res = Result.load(name, path) if path.is_file() else Result(name)
    res.seconds = time.perf_counter() - start
    if rc is None:
        res.fail(f"killed at its {limit:.0f} s limit (figures above, if any, were kept)")
    elif rc != 0 and res.status == "PASS":
        res.fail(f"section process exited {rc}")
    elif not path.is_file():
        res.fail("section wrote no result")
    return res


def environment() -> dict[str, Any]:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "cuda": torch.version.cuda, "machine": f"{platform.machine()} {platform.node()}", "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        try:
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            env["cudnn"] = torch.backends.cudnn.version()
            env["bf16_supported"] = torch.cuda.is_bf16_supported()
        except Exception as exc:  # noqa: BLE001 - reported, the sections say the rest
            env["gpu_query_error"] = _one_line(exc)
    with contextlib.suppress(Exception):
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["tracked_changes"] = bool(dirty)
    return env


SUMMARY_COLUMNS = [("step_ms", "step ms"), ("clips_s", "clips/s"), ("peak_mib", "peak MiB"),
                   ("full_only_peak_mib", "full-only MiB"), ("mutual_over_parts", "mutual/parts"),
                   ("mutual_over_full_only", "mutual/full"), ("slim_over_stock", "slim/stock"),
                   ("compiled_over_eager", "compiled/eager"), ("compile_s", "compile s")]


def summary_table(results: list[Result]) -> str:
    lines = [f"{'section':<28}{'status':<7}{'s':>6}  {'row':<44}" + "".join(f"{h:>15}" for _, h in SUMMARY_COLUMNS)]
    for res in results:
        rows = res.rows or [{}]
        for i, row in enumerate(rows):
            head = f"{res.name if i == 0 else '':<28}{res.status if i == 0 else '':<7}"
            head += f"{res.seconds:>6.0f}" if i == 0 else " " * 6
            cells = "".join(f"{_fmt(row[k]) if row.get(k) is not None else '-':>15}" for k, _ in SUMMARY_COLUMNS)
            label = str(row.get("label", (res.error or "")[:44]))
            lines.append(f"{head}  {label:<44}{cells}")
    lines.append("")
    for res in results:
        for c in res.checks:
            bound = f" (tolerance {c['tolerance']})" if c["tolerance"] else ""
            lines.append(f"{'PASS' if c['ok'] else 'FAIL'} {res.name}: {c['check']}: {_fmt(c['value'])}{bound}")
        if res.error:
            lines.append(f"FAIL {res.name}: {res.error}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dry-run", action="store_true", help="CPU: tiny inputs, fp32 (+GradScaler), gloo, aot_eager")
    p.add_argument("--out", default=os.environ.get("OUT") or "./gpu_check_out")
    p.add_argument("--sections", nargs="+", default=["tests", "eager", "ddp", "compile"],
                   choices=["tests", "eager", "ddp", "compile"])
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                   help="default: x3d_m slowfast_r50")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile sections")
    p.add_argument("--compile-backend", default=None, help="default: inductor (GPU), aot_eager (dry run)")
    p.add_argument("--compile-dtypes", nargs="+", default=None, choices=list(PRECISIONS),
                   help="default: bf16 fp16 (GPU), fp32 (dry run)")
    p.add_argument("--precisions", nargs="+", default=None, choices=list(PRECISIONS),
                   help="eager mutual step; default: bf16 fp16 (GPU), fp32 fp32+scaler (dry run)")
    p.add_argument("--batch", type=int, default=None, help="default 8 (GPU), 2 (dry run)")
    p.add_argument("--steps", type=int, default=None, help="timed steps, median; default 10 (GPU), 2 (dry run)")
    p.add_argument("--warmup", type=int, default=None, help="default 3 (GPU), 1 (dry run)")
    p.add_argument("--contiguous", action="store_true", help="not channels_last_3d")
    p.add_argument("--ddp-model", default=None, choices=list(MODELS), help="default: the first of --models")
    p.add_argument("--ddp-batch", type=int, default=None, help="per rank; default 4 (GPU), 2 (dry run)")
    p.add_argument("--ddp-steps", type=int, default=3)
    p.add_argument("--budget", type=float, default=None,
                   help="overall seconds for all sections; default 420 (GPU), 1500 (dry run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads; default 1 in a dry run")
    p.add_argument("--in-process", action="store_true",
                   help="run the sections in this process (SIGALRM limits) instead of one subprocess each")
    p.add_argument("--run-section", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--section-limit", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dry = args.dry_run
    args.models = args.models or ["x3d_m", "slowfast_r50"]
    args.compile_backend = args.compile_backend or ("aot_eager" if dry else "inductor")
    args.compile_dtypes = args.compile_dtypes or (["fp32"] if dry else ["bf16", "fp16"])
    args.batch = args.batch or (2 if dry else 8)
    args.steps = args.steps or (2 if dry else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    args.ddp_batch = args.ddp_batch or (2 if dry else 4)
    args.budget = args.budget or (1500.0 if dry else 420.0)
    if args.threads is None and dry:
        args.threads = 1
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.dry_run:
        torch.backends.cudnn.benchmark = True
    if args.run_section:  # a child: one section, its result to --result
        ctx = make_ctx(args)
        run_section(args.run_section, ctx, args.section_limit or 0, Path(args.result))
        return 0

    log_path = out / "gpu_check_driver.log"
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed at exit

    def say(text: str = "") -> None:
        print(text, flush=True)
        log.write(text + "\n")
        log.flush()

    env = environment()
    say(f"gpu_check: {'DRY RUN (CPU) ' if args.dry_run else ''}{json.dumps(env)}")
    say(f"tolerances: AMP logits vs fp32 (rel. error) {AMP_TOLERANCE}; slimmable vs stock {STOCK_TOLERANCE}")
    if not args.dry_run and not torch.cuda.is_available():
        say("FAIL setup: CUDA is not available to this python (torch " + torch.__version__ + "); "
            "use --dry-run on a CPU machine")
        (out / "gpu_check.json").write_text(json.dumps({"environment": env, "error": "CUDA not available"}, indent=1))
        return 2
    ctx = make_ctx(args)
    deadline = time.perf_counter() + args.budget
    results: list[Result] = []
    for name, budget in plan(args):
        remaining = deadline - time.perf_counter()
        limit = min(budget, remaining)
        if limit < MIN_SECTION_S:
            res = Result(name, status="SKIP", error=f"overall budget of {args.budget:.0f} s spent")
            say(f"SKIP {name}: {res.error}")
            results.append(res)
            continue
        say(f"\n=== {name} (limit {limit:.0f} s)")
        res = (run_section(name, ctx, limit) if args.in_process else run_section_subprocess(name, limit, out, argv))
        say(f"=== {name}: {res.status} in {res.seconds:.1f} s")
        results.append(res)
        (out / "gpu_check.json").write_text(json.dumps(
            {"environment": env, "args": vars(args), "tolerances": {"amp": AMP_TOLERANCE, "stock": STOCK_TOLERANCE},
             "sections": [r.to_json() for r in results]}, indent=1, default=str))
    table = summary_table(results)
    say("\n=== summary " + ("(DRY RUN on the CPU: figures are not GPU figures)" if args.dry_run else
                             f"({', '.join(env.get('gpus', []))})"))
    say(table)
    failed = [r.name for r in results if r.status == "FAIL"]
    say(f"\n{'FAIL' if failed else 'PASS'}: {len(results) - len(failed)} of {len(results)} sections without a failure"
        + (f"; failed: {', '.join(failed)}" if failed else "") + f"; outputs in {out}")
    log.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
