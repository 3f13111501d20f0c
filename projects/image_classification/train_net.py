"""MutualNet image classification on an embedded toy dataset (a few CPU iterations).

    python projects/image_classification/train_net.py --config projects/image_classification/configs/mobilenet_v2_shapes.yaml [key=value ...]

Builds a registered slimmable 2D classifier, generates coloured shapes on noise (label =
shape kind), trains ``solver.iterations`` sandwich-rule iterations
(:func:`mutualnet_video.engine.tasks2d.classification_mutual_step`: full config on the
labels, sub-networks on the full network's soft labels, one optimizer step) and prints the
losses per configuration, then calibrates BN per configuration and prints the accuracy of
every evaluation configuration. The run itself is :mod:`mutualnet_video.engine.projects`.
"""

from __future__ import annotations

import sys

from mutualnet_video.core import clip_for_config
from mutualnet_video.data.shapes import shapes_classification
from mutualnet_video.engine.projects import Project2D, run_project
from mutualnet_video.engine.projects import load_project_config as load_config  # noqa: F401  (CLI/test API)
from mutualnet_video.engine.tasks2d import classification_mutual_step
from mutualnet_video.models import mobilenet, resnet2d  # noqa: F401  (registers the 2D entrypoints)


def _evaluate(model, cfg, images, labels):
    accuracy = float((model(clip_for_config(images, cfg)).argmax(1) == labels).float().mean())
    return accuracy, f"top1={accuracy:.3f}"


PROJECT = Project2D(
    make_data=lambda data, space, seed: shapes_classification(num_images=data["num_images"],
                                                              size=space.full().crop, seed=seed),
    step=lambda model, images, labels, *, configs, optimizer, solver: classification_mutual_step(
        model, images, labels, configs=configs, optimizer=optimizer),
    evaluate=_evaluate,
    result_key="accuracy",
)


def main(argv: list[str] | None = None) -> dict:
    return run_project(PROJECT, argv, description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
