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
    write_report,
)
from .calibration import NotCalibratedError, calibrate_bn, check_calibrated, missing_calibration
from .evaluator import evaluate_configs
from .flops import count_flops, count_params
from .multiview import MultiViewAccumulator, ViewSpec, aggregate_views, topk_correct, view_indices, view_mask

__all__ = [
    "count_flops",
    "count_params",
    "BudgetRecord",
    "MultiViewAccumulator",
    "NotCalibratedError",
    "ViewSpec",
    "aggregate_views",
    "calibrate_bn",
    "check_calibrated",
    "evaluate_configs",
    "format_table",
    "load_budgets",
    "mark_pareto",
    "measure_latency",
    "missing_calibration",
    "pareto_front",
    "plot_budgets",
    "save_budgets",
    "select_config",
    "write_report",
    "topk_correct",
    "view_indices",
    "view_mask",
]
