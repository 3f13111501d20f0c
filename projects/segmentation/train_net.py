"""MutualNet semantic segmentation on an embedded toy dataset (a few CPU iterations).

    python projects/segmentation/train_net.py --config projects/segmentation/configs/deeplabv3_mobilenet_v2_shapes.yaml [--resume] [key=value ...]

Builds a slimmable DeepLabV3 on MobileNetV2, draws coloured shapes on noise with their masks,
trains ``optim.max_iters`` sandwich-rule iterations with
:class:`mutualnet_video.tasks.SegmentationTask` (per-pixel cross-entropy for the full
configuration, per-pixel KL to its logits for the others) printing the losses per
configuration, then calibrates BN per configuration and prints the pixel accuracy of every
evaluation configuration on ``data.val``.
The run is :func:`mutualnet_video.tasks.projects.run_project`: the video runs' config schema,
Trainer, checkpoints and resume.
"""

import sys

from mutualnet_video.console import quiet_imports

with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
    from mutualnet_video.tasks.projects import run_project

if __name__ == "__main__":
    run_project(sys.argv[1:], description=__doc__)
