"""The accuracy / cost query table of an adaptive model.

One :class:`BudgetRecord` per (width, frames, crop, views) configuration: its cost
(GFLOPs per view and per video, parameters, latency) and its accuracy. The Pareto
front (highest accuracy for the cost) is the deployment table: for a budget, run the
best configuration under it (:func:`select_config`). Tables are saved as
``budgets.json`` (the source of truth) and ``budgets.csv`` (for spreadsheets).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import SubnetConfig, dummy_input, get_space, slimmable_modules, use_config
from ..io import atomic_write_text

__all__ = [
    "BudgetRecord",
    "pareto_front",
    "mark_pareto",
    "select_config",
    "save_budgets",
    "write_report",
    "load_budgets",
    "plot_budgets",
    "save_figure",
    "format_table",
    "measure_latency",
]

_COSTS = ("gflops_per_video", "gflops_per_view", "latency_ms", "params")
_METRICS = ("top1", "top5")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BudgetRecord:
    """One evaluated configuration.

    ``gflops_per_video = gflops_per_view * views``; ``latency_ms`` is the median latency
    of one video (one view at batch 1, times the views), ``None`` if not measured;
    ``top1``/``top5`` are video-level accuracies in percent; ``pareto`` marks the
    accuracy/GFLOPs-per-video front; ``calibrated``: evaluated with BN statistics
    recomputed for this configuration (False: the shared training statistics, or a static
    network).
    """

    width: float
    frames: int | None
    crop: int
    views: str
    gflops_per_view: float
    gflops_per_video: float
    params: int
    top1: float
    top5: float
    latency_ms: float | None = None
    pareto: bool = False
    num_videos: int = 0
    calibrated: bool = True

    @property
    def config(self) -> SubnetConfig:
        return SubnetConfig(self.width, self.frames, self.crop)

    @property
    def name(self) -> str:
        return f"{self.config.tag}_v{self.views}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "record") -> BudgetRecord:
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"{source}: missing keys {missing}, unknown keys {unknown}")

        def num(key: str, kind: type, optional: bool = False) -> Any:
            value = data[key]
            if value in (None, "", "None") and optional:
                return None
            try:
                return kind(float(value)) if kind is int else kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: {key}={value!r} is not a {kind.__name__}") from None

        pareto = _flag(data.get("pareto", False))
        return cls(
            width=num("width", float), frames=num("frames", int, optional=True), crop=num("crop", int),
            views=str(data["views"]), gflops_per_view=num("gflops_per_view", float),
            gflops_per_video=num("gflops_per_video", float), params=num("params", int),
            top1=num("top1", float), top5=num("top5", float),
            latency_ms=num("latency_ms", float, optional=True) if "latency_ms" in data else None,
            pareto=bool(pareto), num_videos=num("num_videos", int) if "num_videos" in data else 0,
            calibrated=_flag(data.get("calibrated", True)),
        )


def _flag(value: Any) -> bool:
    """A boolean from JSON (a bool) or CSV (its text)."""
    return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)


def _cost(record: BudgetRecord, cost: str) -> float | None:
    if cost not in _COSTS:
        raise ValueError(f"cost must be one of {_COSTS}, got {cost!r}")
    value = getattr(record, cost)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def pareto_front(records: Iterable[BudgetRecord], *, cost: str = "gflops_per_video",
                 metric: str = "top1") -> list[BudgetRecord]:
    """The records no other record beats: none is at most as costly and strictly more
    accurate, or strictly cheaper and at least as accurate.

    Ties: of records with the same cost and accuracy, the first (in input order) is kept.
    Records without the cost (latency not measured) are left out. Sorted by cost.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    points = [(c, getattr(r, metric), i, r) for i, r in enumerate(records) if (c := _cost(r, cost)) is not None]
    # cheapest first; at equal cost the most accurate first; then input order
    points.sort(key=lambda p: (p[0], -p[1], p[2]))
    front: list[BudgetRecord] = []
    best = -math.inf
    for _, accuracy, _, record in points:
        if accuracy > best:
            front.append(record)
            best = accuracy
    return front


def mark_pareto(records: Sequence[BudgetRecord], *, cost: str = "gflops_per_video",
                metric: str = "top1") -> list[BudgetRecord]:
    """``records`` with ``pareto`` set for the members of the front (same order)."""
    front = {id(r) for r in pareto_front(records, cost=cost, metric=metric)}
    return [replace(r, pareto=id(r) in front) for r in records]


def select_config(table: Sequence[BudgetRecord] | str | os.PathLike, *, max_gflops: float | None = None,
                  max_latency_ms: float | None = None, metric: str = "top1") -> BudgetRecord:
    """The most accurate record within the budget (GFLOPs per video and/or latency).

    Ties on accuracy go to the cheaper record (GFLOPs, then latency). ``table`` is a list
    of records or the path of a ``budgets.json``/``budgets.csv``. A budget below every
    configuration raises ``ValueError`` naming the cheapest configuration and its cost.
    """
    records = load_budgets(table) if isinstance(table, str | os.PathLike) else list(table)
    if not records:
        raise ValueError("the budget table is empty")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    candidates = records
    for limit, cost, unit in ((max_gflops, "gflops_per_video", "GFLOPs per video"),
                              (max_latency_ms, "latency_ms", "ms per video")):
        if limit is None:
            continue
        measured = [r for r in records if _cost(r, cost) is not None]
        if not measured:
            raise ValueError(f"the table has no {cost} values: measure them first (e.g. test_net.py --latency)")
        fits = [r for r in candidates if _cost(r, cost) is not None and _cost(r, cost) <= limit]
        if not fits:
            cheapest = min(measured, key=lambda r: _cost(r, cost))
            raise ValueError(
                f"no configuration fits {cost} <= {limit:g}: the cheapest is {cheapest.config} with "
                f"{cheapest.views} views at {_cost(cheapest, cost):.4g} {unit}"
            )
        candidates = fits

    def key(r: BudgetRecord) -> tuple:
        latency = r.latency_ms if r.latency_ms is not None else math.inf
        return (-getattr(r, metric), r.gflops_per_video, latency)

    return min(candidates, key=key)


# -- files -----------------------------------------------------------------------------
def save_budgets(records: Sequence[BudgetRecord], directory: str | os.PathLike, *,
                 meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``budgets.json`` and ``budgets.csv`` into ``directory`` (atomically); returns both paths."""
    directory = Path(directory)
    fieldnames = [f.name for f in fields(BudgetRecord)]
    payload = {"version": _FORMAT_VERSION, "meta": meta or {}, "records": [r.to_dict() for r in records]}
    json_path, csv_path = directory / "budgets.json", directory / "budgets.csv"
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
    atomic_write_text(csv_path, "".join(lines))
    return json_path, csv_path


def load_budgets(path: str | os.PathLike) -> list[BudgetRecord]:
    """Read a table written by :func:`save_budgets` (``.json`` or ``.csv``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"budget table not found: {path}")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [BudgetRecord.from_dict(row, source=f"{path}: row {i + 2}")
                    for i, row in enumerate(csv.DictReader(f))]
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(payload, dict) or "records" not in payload:
        raise ValueError(f"{path}: expected an object with a 'records' list")
    if payload.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format version {payload.get('version')!r} (expected {_FORMAT_VERSION})")
    return [BudgetRecord.from_dict(r, source=f"{path}: records[{i}]") for i, r in enumerate(payload["records"])]


def format_table(records: Sequence[BudgetRecord], *, num_classes: int | None = None, sort: bool = True) -> str:
    """The one text table of evaluated configurations (test_net's budget table, the final
    evaluation after training).

    Columns: width, frames, crop, views, BN statistics (``calibrated`` per configuration or
    ``shared``), GFLOPs per view and per video, ``cost`` (GFLOPs per video relative to the
    most expensive row), parameters, top-1 and top-5 (%), videos, latency, Pareto star.
    Top-5 is left out when ``num_classes <= 5`` (every prediction is then in the top 5).
    ``sort``: cheapest first (else in the given order).
    """
    show_top5 = num_classes is None or num_classes > 5
    costs = [r.gflops_per_video for r in records if not math.isnan(r.gflops_per_video)]
    most = max(costs) if costs else None
    head = (f"{'width':>6} {'frames':>6} {'crop':>5} {'views':>6} {'BN':<10} {'GFLOPs/view':>12} {'GFLOPs/video':>13} "
            f"{'cost':>6} {'params(M)':>10} {'top1':>6}" + (f" {'top5':>6}" if show_top5 else "")
            + f" {'videos':>7} {'ms/video':>9}  P")
    rows = [head, "-" * len(head)]
    ordered = sorted(records, key=lambda r: (r.gflops_per_video, -r.top1)) if sort else list(records)
    for r in ordered:
        latency = "-" if r.latency_ms is None else f"{r.latency_ms:.2f}"
        cost = f"{r.gflops_per_video / most:.2f}x" if most and not math.isnan(r.gflops_per_video) else "-"
        rows.append(
            f"{r.width:>6.3g} {r.frames if r.frames is not None else '-':>6} {r.crop:>5} {r.views:>6} "
            f"{'calibrated' if r.calibrated else 'shared':<10} {r.gflops_per_view:>12.4f} {r.gflops_per_video:>13.4f} "
            f"{cost:>6} {r.params / 1e6:>10.3f} {r.top1:>6.2f}" + (f" {r.top5:>6.2f}" if show_top5 else "")
            + f" {r.num_videos:>7d} {latency:>9}  {'*' if r.pareto else ''}"
        )
    return "\n".join(rows)


def write_report(records: Sequence[BudgetRecord], output_dir: str | os.PathLike, *,
                 meta: dict[str, Any] | None = None) -> Path:
    """The budget table of an evaluation: ``budgets.json`` / ``budgets.csv``
    (:func:`save_budgets`), ``budgets.txt`` (:func:`format_table`), ``top1_vs_gflops.png``
    and, when latency was measured, ``top1_vs_latency.png``. Returns ``output_dir``."""
    output_dir = Path(output_dir)
    save_budgets(records, output_dir, meta=meta)
    plot_budgets(records, output_dir / "top1_vs_gflops.png", cost="gflops_per_video")
    if any(r.latency_ms is not None for r in records):
        plot_budgets(records, output_dir / "top1_vs_latency.png", cost="latency_ms")
    atomic_write_text(output_dir / "budgets.txt", format_table(records) + "\n")
    return output_dir


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out a matplotlib ``Figure`` and write it as a PNG to ``path`` (folders created)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_budgets(records: Sequence[BudgetRecord], path: str | os.PathLike, *, cost: str = "gflops_per_video",
                 metric: str = "top1", title: str | None = None) -> Path:
    """Accuracy vs cost, one marker per views spec, the Pareto front drawn as a line (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure or backend state

    usable = [r for r in records if _cost(r, cost) is not None]
    if not usable:
        raise ValueError(f"no record has a {cost} value to plot")
    labels = {"gflops_per_video": "GFLOPs per video", "gflops_per_view": "GFLOPs per view",
              "latency_ms": "latency per video (ms)", "params": "parameters"}
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = "osD^v<>pPX*h"
    for i, views in enumerate(sorted({r.views for r in usable}, key=lambda v: (len(v), v))):
        group = [r for r in usable if r.views == views]
        ax.scatter([_cost(r, cost) for r in group], [getattr(r, metric) for r in group], marker=markers[i % 12],
                   s=28, alpha=0.55, label=f"{views} views")
    front = pareto_front(usable, cost=cost, metric=metric)
    ax.plot([_cost(r, cost) for r in front], [getattr(r, metric) for r in front], "-o", color="crimson",
            linewidth=2, markersize=6, label="Pareto front", zorder=3)
    for r in front:
        ax.annotate(f"{r.width:g}-{r.frames}x{r.crop}", (_cost(r, cost), getattr(r, metric)), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel(labels[cost])
    ax.set_ylabel(f"{metric} accuracy (%)")
    ax.set_title(title or f"{metric} vs {labels[cost]}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# -- latency ---------------------------------------------------------------------------
@torch.inference_mode()
def measure_latency(model: nn.Module, cfg: SubnetConfig | None = None, *, repeats: int = 20, warmup: int = 3,
                    threads: int | None = None, batch: int = 1, inputs: Any = None) -> float:
    """Median wall time of one forward pass in milliseconds (eval mode, no grad).

    ``model`` runs at ``cfg`` (slimmable model) or as it is (a static/exported model,
    ``cfg`` may be None if ``inputs`` is given). ``inputs`` default to
    ``dummy_input(space, cfg, batch=batch)``. ``threads`` pins
    ``torch.set_num_threads`` for the measurement and restores it after. The training
    flag and configuration of ``model`` are restored.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    slimmable = next(slimmable_modules(model), None) is not None
    if inputs is None:
        space = get_space(model)
        if cfg is None or space is None:
            raise ValueError("measure_latency needs `inputs` when the model has no attached space or cfg is None")
        inputs = dummy_input(space, cfg, batch=batch, device=next(model.parameters()).device)
    was_training = model.training
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.eval()
        times = []
        context = use_config(model, cfg) if (slimmable and cfg is not None) else nullcontext()
        sync = torch.cuda.synchronize if _on_cuda(inputs) else (lambda: None)
        with context:
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                model(list(inputs) if isinstance(inputs, list) else inputs)  # PyTorchVideo overwrites lists
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)


def _on_cuda(inputs: Any) -> bool:
    first = inputs[0] if isinstance(inputs, list | tuple) else inputs
    return isinstance(first, torch.Tensor) and first.is_cuda

