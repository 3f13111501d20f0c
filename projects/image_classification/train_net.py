"""MutualNet image classification on an embedded toy dataset (a few CPU iterations).

    python projects/image_classification/train_net.py --config projects/image_classification/configs/mobilenet_v2_shapes.yaml [--resume] [key=value ...]

Builds a registered slimmable 2D classifier, draws coloured shapes on noise (label = shape kind),
trains ``optim.max_iters`` sandwich-rule iterations (the engine's Trainer with the default
classification task: full configuration on the labels, sub-networks on its soft labels, one
optimizer step) printing the loss of every configuration, then calibrates BN per configuration
and prints the accuracy of every evaluation configuration on ``data.val``.
The run is :func:`mutualnet_video.tasks.projects.run_project`: the video runs' config schema,
Trainer, checkpoints and resume.
"""

import sys

from mutualnet_video.console import quiet_imports

with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
    from mutualnet_video.tasks.projects import run_project

if __name__ == "__main__":
    run_project(sys.argv[1:], description=__doc__)
