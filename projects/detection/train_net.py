"""MutualNet object detection on an embedded toy dataset (a few CPU iterations).

    python projects/detection/train_net.py --config projects/detection/configs/fasterrcnn_mobilenet_v2_shapes.yaml [--resume] [key=value ...]

Builds a slimmable Faster R-CNN (torchvision, FPN on a slimmable backbone), draws coloured
shapes on noise with their boxes (class = shape kind + 1), trains ``optim.max_iters``
sandwich-rule iterations with :class:`mutualnet_video.tasks.DetectionTask` printing the losses
per configuration, then calibrates the backbone's BN per configuration
(``DetectorBackboneView``) and prints the number of detections of every evaluation
configuration.
The run is :func:`mutualnet_video.tasks.projects.run_project`: the video runs' config schema,
Trainer, checkpoints and resume.
"""

import sys

from mutualnet_video.console import quiet_imports

with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
    from mutualnet_video.tasks.projects import run_project

if __name__ == "__main__":
    run_project(sys.argv[1:], description=__doc__)
