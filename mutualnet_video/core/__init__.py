"""The slimmable core of MutualNet. Imports only torch."""

from .config import ConfigSpace, SubnetConfig
from .inputs import clip_for_config, dummy_input, resize_crop, subsample_frames
from .layers import (
    SlimBatchNorm,
    SlimBatchNorm2d,
    SlimBatchNorm3d,
    SlimConv2d,
    SlimConv3d,
    SlimLinear,
    SlimmableModule,
    hint_dynamic_sizes,
    slice_grads,
    slice_grads_enabled,
)
from .losses import DistillationLoss, distillation_loss
from .switch import (
    attach_space,
    current_config,
    detach_space,
    get_space,
    set_config,
    slimmable_modules,
    use_config,
)
from .sync_bn import SlimSyncBatchNorm, SlimSyncBatchNorm2d, SlimSyncBatchNorm3d, convert_slim_sync_batchnorm
from .width import make_divisible, scale_channels

__all__ = [
    "hint_dynamic_sizes",
    "slice_grads",
    "slice_grads_enabled",
    "ConfigSpace",
    "SubnetConfig",
    "SlimBatchNorm",
    "SlimBatchNorm2d",
    "SlimBatchNorm3d",
    "SlimConv2d",
    "SlimConv3d",
    "SlimLinear",
    "SlimmableModule",
    "SlimSyncBatchNorm",
    "SlimSyncBatchNorm2d",
    "SlimSyncBatchNorm3d",
    "convert_slim_sync_batchnorm",
    "DistillationLoss",
    "distillation_loss",
    "attach_space",
    "current_config",
    "detach_space",
    "get_space",
    "set_config",
    "slimmable_modules",
    "use_config",
    "clip_for_config",
    "dummy_input",
    "resize_crop",
    "subsample_frames",
    "make_divisible",
    "scale_channels",
]
