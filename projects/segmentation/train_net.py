"""MutualNet semantic segmentation on an embedded toy dataset (a few CPU iterations).

    python projects/segmentation/train_net.py --config projects/segmentation/configs/deeplabv3_mobilenet_v2_shapes.yaml [key=value ...]

Builds a slimmable DeepLabV3 / FCN (torchvision heads on a slimmable backbone), generates
coloured shapes on noise with per-pixel masks (0 background, shape kind + 1), trains
``solver.iterations`` sandwich-rule iterations with
:func:`mutualnet_video.engine.tasks2d.segmentation_mutual_step` and prints the losses per
configuration, then calibrates BN per configuration and prints the pixel accuracy of
every evaluation configuration. The run itself is :mod:`mutualnet_video.engine.projects`.
"""

from __future__ import annotations

import sys

import torch.nn.functional as F

from mutualnet_video.core import resize_crop
from mutualnet_video.data.shapes import shapes_segmentation
from mutualnet_video.engine.projects import Project2D, run_project
from mutualnet_video.engine.projects import load_project_config as load_config  # noqa: F401  (CLI/test API)
from mutualnet_video.engine.tasks2d import segmentation_mutual_step


def _evaluate(model, cfg, images, masks):
    logits = model(resize_crop(images, cfg.crop))["out"]
    pred = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    accuracy = float((pred == masks).float().mean())
    return accuracy, f"pixel accuracy={accuracy:.3f}"


PROJECT = Project2D(
    make_data=lambda data, space, seed: shapes_segmentation(num_images=data["num_images"], size=space.full().crop,
                                                            max_objects=data["max_objects"], seed=seed),
    step=lambda model, images, masks, *, configs, optimizer, solver: segmentation_mutual_step(
        model, images, masks, configs=configs, optimizer=optimizer,
        task_weight=solver["task_weight"], distill_weight=solver["distill_weight"]),
    evaluate=_evaluate,
    result_key="accuracy",
)


def main(argv: list[str] | None = None) -> dict:
    return run_project(PROJECT, argv, description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
