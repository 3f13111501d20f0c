"""Slimmable PyTorchVideo models, the model registry and the conversion of stock models."""

from .. import compat as _compat

_compat.apply()  # before any pytorchvideo import (idempotent)

from .convert import UnsupportedModuleError, slimmable
from .detection import (
    create_slimmable_faster_rcnn,
    mutual_fasterrcnn_mobilenet_v2_fpn,
    mutual_fasterrcnn_resnet50_fpn,
)
from .mobilenet import MobileNetV1, create_slimmable_mobilenet_v2, mutual_mobilenet_v1, mutual_mobilenet_v2
from .registry import (
    DefaultCfg,
    UnknownModelError,
    create_model,
    get_default_cfg,
    get_model_cfg,
    get_model_entrypoint,
    list_models,
    register_model,
)
from .resnet import create_slimmable_resnet, mutual_slow_r50
from .resnet2d import create_slimmable_resnet50, mutual_resnet50
from .segmentation import (
    create_slimmable_segmenter,
    mutual_deeplabv3_mobilenet_v2,
    mutual_deeplabv3_resnet50,
    mutual_fcn_resnet50,
)
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
    "get_model_cfg",
    "get_default_cfg",
    "DefaultCfg",
    "create_slimmable_x3d",
    "create_slimmable_slowfast",
    "create_slimmable_resnet",
    "mutual_x3d_xs",
    "mutual_x3d_s",
    "mutual_x3d_m",
    "mutual_x3d_l",
    "mutual_slowfast_r50",
    "mutual_slow_r50",
    # 2D networks
    "MobileNetV1",
    "create_slimmable_mobilenet_v2",
    "create_slimmable_resnet50",
    "create_slimmable_faster_rcnn",
    "create_slimmable_segmenter",
    "mutual_mobilenet_v1",
    "mutual_mobilenet_v2",
    "mutual_resnet50",
    "mutual_fasterrcnn_mobilenet_v2_fpn",
    "mutual_fasterrcnn_resnet50_fpn",
    "mutual_deeplabv3_mobilenet_v2",
    "mutual_deeplabv3_resnet50",
    "mutual_fcn_resnet50",
]
