"""Evaluation of adaptive networks: FLOPs, BN calibration, multi-view testing, budget tables."""

from .budgets import (
    BudgetRecord,
    format_table,
    load_budgets,
    mark_pareto,
    measure_latency,
    pareto_front,
    plot_budgets,
    save_budgets,
    select_config,
)
from .calibration import NotCalibratedError, calibrate_bn, check_calibrated, missing_calibration
from .evaluator import evaluate_configs
from .flops import count_flops, count_params
from .multiview import MultiViewAccumulator, ViewSpec, aggregate_views, topk_correct, view_indices, view_mask
from .runner import CheckpointMismatchError, calibrated_path, load_weights, run_budgets, save_weights

evaluate = evaluate_configs  # the name the contract plans

__all__ = [
    "count_flops",
    "count_params",
    "BudgetRecord",
    "CheckpointMismatchError",
    "MultiViewAccumulator",
    "NotCalibratedError",
    "ViewSpec",
    "aggregate_views",
    "calibrate_bn",
    "calibrated_path",
    "check_calibrated",
    "evaluate",
    "evaluate_configs",
    "format_table",
    "load_budgets",
    "load_weights",
    "mark_pareto",
    "measure_latency",
    "missing_calibration",
    "pareto_front",
    "plot_budgets",
    "run_budgets",
    "save_weights",
    "save_budgets",
    "select_config",
    "topk_correct",
    "view_indices",
    "view_mask",
]
