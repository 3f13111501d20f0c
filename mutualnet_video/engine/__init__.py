"""mutualnet_video.engine: mutual-learning training (sandwich rule + in-place distillation).

``mutual_step`` is one iteration; ``TrainerBase`` is the loop with hooks
(:mod:`~mutualnet_video.engine.hooks`); ``Trainer`` runs a YAML config
(``config.load_config``) on one process or under torchrun, inside ``launch(cfg)``.
Imports torch, fvcore, iopath, yaml; tqdm and TensorBoard are imported lazily.
"""

from .compare import METHODS, Comparison, compare_methods, plan_runs, write_comparison
from .compile import GraphBudget, compile_slimmable, graph_budget
from .config import ConfigError, build_dataset, build_model, instantiate, load_config
from .hooks import (
    DataStats,
    FinalEvaluation,
    HookBase,
    MetricsLogger,
    NanGuard,
    PeriodicCheckpointer,
    PeriodicValidation,
    RankDump,
)
from .launch import launch, seed_everything
from .mutual import SandwichSampler, SingleSampler, mutual_step
from .optim import build_lr_scheduler, build_optimizer, lr_multiplier, param_groups
from .trainer import Trainer, TrainerBase, final_evaluation

__all__ = [
    "mutual_step",
    "compile_slimmable",
    "graph_budget",
    "GraphBudget",
    "SandwichSampler",
    "SingleSampler",
    "TrainerBase",
    "Trainer",
    "HookBase",
    "MetricsLogger",
    "DataStats",
    "PeriodicCheckpointer",
    "PeriodicValidation",
    "NanGuard",
    "FinalEvaluation",
    "RankDump",
    "final_evaluation",
    "launch",
    "seed_everything",
    "ConfigError",
    "load_config",
    "build_model",
    "build_dataset",
    "instantiate",
    "build_optimizer",
    "build_lr_scheduler",
    "lr_multiplier",
    "param_groups",
    "compare_methods",
    "plan_runs",
    "write_comparison",
    "Comparison",
    "METHODS",
]
