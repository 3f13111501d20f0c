"""mutualnet_video.engine: mutual-learning training (sandwich rule + in-place distillation).

``mutual_step`` is one iteration; ``Trainer`` runs a YAML config (``config.load_config``)
on one process or under torchrun. Imports torch, fvcore, iopath, yaml; tqdm and
TensorBoard are imported lazily.
"""

from .checkpoint import MutualCheckpointer, load_pretrained
from .compare import METHODS, Comparison, compare_methods, plan_runs, write_comparison
from .config import ConfigError, build_model, instantiate, load_config
from .mutual import SandwichSampler, SingleSampler, mutual_step
from .optim import build_lr_scheduler, build_optimizer, lr_multiplier, param_groups
from .trainer import Trainer, final_evaluation

__all__ = [
    "mutual_step",
    "SandwichSampler",
    "SingleSampler",
    "Trainer",
    "final_evaluation",
    "ConfigError",
    "load_config",
    "build_model",
    "instantiate",
    "MutualCheckpointer",
    "load_pretrained",
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
