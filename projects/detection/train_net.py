"""MutualNet object detection on an embedded toy dataset (a few CPU iterations).

    python projects/detection/train_net.py --config projects/detection/configs/fasterrcnn_mobilenet_v2_shapes.yaml [key=value ...]

Builds a slimmable Faster R-CNN (torchvision, FPN on a slimmable backbone), generates
coloured shapes on noise with their boxes (class = shape kind + 1), trains
``solver.iterations`` sandwich-rule iterations with
:func:`mutualnet_video.engine.tasks2d.detection_mutual_step` and prints the losses per
configuration, then calibrates the backbone's BN per configuration
(``DetectorBackboneView``) and prints the number of detections of every evaluation
configuration. The run itself is :mod:`mutualnet_video.engine.projects`.
"""

from __future__ import annotations

import sys

from mutualnet_video.data.shapes import shapes_detection
from mutualnet_video.engine.projects import Project2D, run_project
from mutualnet_video.engine.projects import load_project_config as load_config  # noqa: F401  (CLI/test API)
from mutualnet_video.engine.tasks2d import detection_mutual_step
from mutualnet_video.models.detection import DetectorBackboneView


def _evaluate(model, cfg, images, targets):
    detections = [len(o["boxes"]) for o in model(images[:2])]
    return detections, f"min_size={model.transform.min_size[0]} detections per image={detections}"


PROJECT = Project2D(
    make_data=lambda data, space, seed: shapes_detection(num_images=data["num_images"], height=data["height"],
                                                         width=data["width"], max_objects=data["max_objects"],
                                                         seed=seed),
    step=lambda model, images, targets, *, configs, optimizer, solver: detection_mutual_step(
        model, images, targets, configs=configs, optimizer=optimizer,
        task_weight=solver["task_weight"], distill_weight=solver["distill_weight"]),
    evaluate=_evaluate,
    result_key="detections",
    calibration_view=DetectorBackboneView,
    calibration_input=lambda images, cfg: list(images),  # the detector's transform resizes per config
)


def main(argv: list[str] | None = None) -> dict:
    return run_project(PROJECT, argv, description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
