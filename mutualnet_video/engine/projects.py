"""The shared driver of the 2D projects' ``train_net.py`` (detectron2's ``engine/defaults``).

Each project (``projects/<task>/train_net.py``) only says what is task-specific, as a
:class:`Project2D`: how to make its toy data, which sandwich-rule step trains it
(:mod:`mutualnet_video.engine.tasks2d`) and how one configuration is scored. The run is
the same for all: read the YAML config (``key=value`` overrides), build the registered
model, ``solver.iterations`` sandwich-rule iterations on random batches (printing the
losses of every configuration), post-statistics BN calibration of every evaluation
configuration (:func:`mutualnet_video.evaluation.calibrate_bn` on the training images,
at most 9 batches as in the paper), then the score of every evaluation configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..core import ConfigSpace, SubnetConfig, get_space, use_config
from ..models.registry import create_model

__all__ = ["Project2D", "load_project_config", "run_project"]

Report = list[tuple[SubnetConfig, dict[str, float]]]
CALIBRATION_BATCHES = 9


def load_project_config(path: str, overrides: Sequence[str] = ()) -> dict:
    """YAML config with ``a.b=value`` overrides (values parsed as YAML); only existing keys."""
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"override {item!r}: {part!r} is not a section of {path}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {item!r}: unknown key {key!r} in {path}")
        node[leaf] = yaml.safe_load(value)
    return cfg


@dataclass(frozen=True)
class Project2D:
    """What a 2D project adds to the shared run.

    Attributes:
        make_data: ``(data_cfg, space, seed) -> (inputs, targets)``, each a tensor or a
            list indexed by image.
        step: ``(model, inputs, targets, *, configs, optimizer, solver) -> [(cfg, losses)]``,
            one sandwich-rule iteration (a :mod:`~mutualnet_video.engine.tasks2d` step).
        evaluate: ``(model, cfg, inputs, targets) -> (value, text)``, run at ``cfg`` (already
            switched), eval mode, no grad, calibrated BN statistics.
        result_key: the key of the per-configuration values in :func:`run_project`'s result.
        calibration_view: the model BN calibration runs (e.g. ``DetectorBackboneView``).
        calibration_input: ``(batch, cfg) -> model input`` for ``calibrate_bn``
            (default: ``clip_for_config`` of the batch).
    """

    make_data: Callable[[dict, ConfigSpace, int], tuple[Any, Any]]
    step: Callable[..., Report]
    evaluate: Callable[[nn.Module, SubnetConfig, Any, Any], tuple[Any, str]]
    result_key: str
    calibration_view: Callable[[nn.Module], nn.Module] = lambda model: model
    calibration_input: Callable[[Any, SubnetConfig], Any] | None = None


def _take(data: Any, index: list[int]) -> Any:
    return data[torch.tensor(index)] if isinstance(data, torch.Tensor) else [data[i] for i in index]


def run_project(project: Project2D, argv: Sequence[str] | None = None, *, description: str = "") -> dict:
    """Parse ``--config FILE [key=value ...]``, train, calibrate and evaluate; see the module doc.

    Returns ``{"history": [report per iteration], project.result_key: {cfg: value}}``.
    """
    from ..evaluation import calibrate_bn  # evaluation sits beside engine; imported at the edge

    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0] if description else None)
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. solver.iterations=2")
    args = parser.parse_args(argv)
    cfg = load_project_config(args.config, args.overrides)
    torch.manual_seed(cfg["seed"])
    model = create_model(cfg["model"]["name"], **cfg["model"].get("kwargs", {}))
    space = get_space(model)
    inputs, targets = project.make_data(cfg["data"], space, cfg["seed"])
    s = cfg["solver"]
    optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"],
                                nesterov=s.get("nesterov", False), weight_decay=s["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    batch = cfg["data"]["batch_size"]
    history = []
    for it in range(s["iterations"]):
        index = torch.randperm(len(inputs), generator=gen)[:batch].tolist()
        report = project.step(model, _take(inputs, index), _take(targets, index), configs=space.sandwich(gen),
                              optimizer=optimizer, solver=s)
        for sub_cfg, losses in report:
            print(f"iter {it} {sub_cfg}: " + " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        history.append(report)

    configs = space.grid()
    starts = range(0, len(inputs), batch)
    batches = [_take(inputs, list(range(i, min(i + batch, len(inputs))))) for i in starts][:CALIBRATION_BATCHES]
    used = calibrate_bn(project.calibration_view(model), batches, configs, num_batches=len(batches),
                        input_fn=project.calibration_input)
    print(f"calibrated BN statistics of {len(configs)} configurations on {used} batches")
    model.eval()
    results = {}
    with torch.no_grad():
        for sub_cfg in configs:
            with use_config(model, sub_cfg):
                results[sub_cfg], text = project.evaluate(model, sub_cfg, inputs, targets)
            print(f"eval {sub_cfg}: {text}")
    return {"history": history, project.result_key: results}
