"""Slimmable PyTorchVideo models, the model registry and the conversion of stock models."""

from .convert import UnsupportedModuleError, slimmable
from .registry import UnknownModelError, create_model, get_model_entrypoint, list_models, register_model
from .resnet import create_slimmable_resnet, mutual_slow_r50
from .slowfast import create_slimmable_slowfast, mutual_slowfast_r50
from .x3d import create_slimmable_x3d, mutual_x3d_l, mutual_x3d_m, mutual_x3d_s, mutual_x3d_xs

__all__ = [
    "slimmable",
    "UnsupportedModuleError",
    "register_model",
    "UnknownModelError",
    "list_models",
    "create_model",
    "get_model_entrypoint",
    "create_slimmable_x3d",
    "create_slimmable_slowfast",
    "create_slimmable_resnet",
    "mutual_x3d_xs",
    "mutual_x3d_s",
    "mutual_x3d_m",
    "mutual_x3d_l",
    "mutual_slowfast_r50",
    "mutual_slow_r50",
]
